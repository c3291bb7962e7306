use super::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// What rank `from` sends rank `to` in the test exchange: (from + 2 * to) % 3 + (from == to)
/// elements, each encoding (from, to, index), so a misplaced segment shows.
fn payload(from: usize, to: usize) -> Vec<u32> {
    let n = (from + 2 * to) % 3 + usize::from(from == to);
    (0..n)
        .map(|i| (from * 10_000 + to * 100 + i) as u32)
        .collect()
}

#[test]
fn all_to_all_v_delivers_every_segment_in_rank_order() {
    for size in [1, 2, 3, 4] {
        let out = run_local(size, T, |c| {
            let me = c.rank();
            let segs: Vec<Vec<u32>> = (0..size).map(|to| payload(me, to)).collect();
            let send: Vec<u32> = segs.concat();
            let send_counts: Vec<usize> = segs.iter().map(Vec::len).collect();
            let recv_counts: Vec<usize> = (0..size).map(|from| payload(from, me).len()).collect();
            let mut recv = vec![u32::MAX; recv_counts.iter().sum()];
            all_to_all_v(c, &send, &send_counts, &mut recv, &recv_counts)?;
            Ok::<_, CommError>(recv)
        });
        for (me, got) in out.into_iter().enumerate() {
            let want: Vec<u32> = (0..size).flat_map(|from| payload(from, me)).collect();
            assert_eq!(got.unwrap(), want, "size {size} rank {me}");
        }
    }
}

#[test]
fn all_gather_gather_and_barrier() {
    let out = run_local(3, T, |c| {
        let mine = [c.rank() as f64 * 1.5, -(c.rank() as f64)];
        let all = all_gather(c, &mine)?;
        c.barrier()?;
        let root = gather_to_root(c, &mine)?;
        Ok::<_, CommError>((all, root))
    });
    let want = vec![0.0, -0.0, 1.5, -1.0, 3.0, -2.0];
    for (r, o) in out.into_iter().enumerate() {
        let (all, root) = o.unwrap();
        assert_eq!(all, want);
        assert_eq!(root, (r == 0).then(|| want.clone()), "rank {r}");
    }
}

#[test]
fn a_failed_rank_stops_every_other_rank_quickly_and_is_named() {
    let start = Instant::now();
    let out = run_local(4, Duration::from_secs(30), |c| {
        if c.rank() == 2 {
            return Err(CommError::Transport {
                transport: "test",
                message: "expert weights missing".into(),
            });
        }
        // The others wait in two collectives the failed rank never enters.
        c.barrier()?;
        c.barrier()
    });
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    for (r, o) in out.iter().enumerate() {
        let msg = o.as_ref().unwrap_err().to_string();
        if r == 2 {
            assert!(msg.contains("expert weights missing"), "{msg}");
        } else {
            assert!(msg.contains("rank 2"), "rank {r}: {msg}");
        }
    }
}

#[test]
fn a_panicking_rank_stops_the_others() {
    let out = run_local(2, Duration::from_secs(30), |c| {
        if c.rank() == 1 {
            panic!("boom");
        }
        c.barrier()
    });
    assert!(matches!(&out[1], Err(RankFailure::Panicked(m)) if m == "boom"));
    let msg = out[0].as_ref().unwrap_err().to_string();
    assert!(msg.contains("rank 1"), "{msg}");
}

#[test]
fn a_silent_peer_times_out() {
    let out = run_local(2, Duration::from_millis(100), |c| {
        if c.rank() == 1 {
            std::thread::sleep(Duration::from_millis(600));
            return Ok(());
        }
        c.barrier()
    });
    assert!(
        matches!(
            out[0],
            Err(RankFailure::Failed(CommError::Timeout { peer: 1, .. }))
        ),
        "{:?}",
        out[0]
    );
}

#[test]
fn different_collectives_are_a_mismatch_not_wrong_data() {
    let out = run_local(2, T, |c| {
        if c.rank() == 0 {
            c.barrier()
        } else {
            all_gather(c, &[1u8]).map(|_| ())
        }
    });
    for o in &out {
        let msg = o.as_ref().unwrap_err().to_string();
        assert!(
            msg.contains("barrier") || msg.contains("all_gather"),
            "{msg}"
        );
    }
    assert!(out
        .iter()
        .any(|o| matches!(o, Err(RankFailure::Failed(CommError::Mismatch { .. })))));
}

#[test]
fn counts_that_do_not_fit_are_shape_errors() {
    let c = LocalComm::group(1, T).pop().unwrap();
    let mut recv = [0u32; 2];
    let e = all_to_all_v(&c, &[1u32, 2], &[1, 1], &mut recv, &[2]).unwrap_err();
    assert!(matches!(e, CommError::Shape { .. }), "{e}");
    let e = all_to_all_v(&c, &[1u32, 2], &[3], &mut recv, &[2]).unwrap_err();
    assert!(e.to_string().contains("summing to 3"), "{e}");
    let mut out = [0u8; 3];
    assert!(c.all_gather_bytes(&[1, 2], &mut out).is_err());
}

#[test]
fn disagreeing_ranks_refuse_at_start() {
    let out = run_local(3, T, |c| {
        let hash = if c.rank() == 1 { 7 } else { 5 };
        check_agreement(c, "model and flags", hash)
    });
    for (r, o) in out.iter().enumerate() {
        let msg = o.as_ref().unwrap_err().to_string();
        assert!(
            msg.contains("disagree on model and flags"),
            "rank {r}: {msg}"
        );
    }
    let ok = run_local(3, T, |c| check_agreement(c, "x", 9));
    assert!(ok.iter().all(Result::is_ok));
}
