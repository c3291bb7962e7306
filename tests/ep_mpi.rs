//! The MPI communicator across real processes: this test binary starts itself under
//! `mpirun -n R` (R = 2, 4), and each rank runs the collectives of the in-process tests.
//! Without `mpirun` the test skips with a message; in CI (`CI` set) it fails instead.
#![cfg(feature = "mpi")]

use capmoe::ep::comm::{all_gather, all_to_all_v, gather_to_root, Communicator, MpiComm};
use std::process::Command;
use std::time::{Duration, Instant};

fn payload(from: usize, to: usize) -> Vec<u32> {
    let n = (from + 2 * to) % 3 + usize::from(from == to);
    (0..n)
        .map(|i| (from * 10_000 + to * 100 + i) as u32)
        .collect()
}

fn mpirun() -> Option<&'static str> {
    let found = Command::new("mpirun").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "mpirun not found, and CI must run the MPI tests: install openmpi-bin libopenmpi-dev"
        );
        eprintln!("ep_mpi: skipped: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    Some("mpirun")
}

/// Runs this binary's ignored test `body` on `ranks` MPI processes.
fn launch(ranks: usize, body: &str, mode: &str) -> (std::process::Output, Duration) {
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let out = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &ranks.to_string(),
        ])
        .arg(exe)
        .args([
            "--exact",
            body,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CAPMOE_MPI_TEST_MODE", mode)
        .output()
        .expect("start mpirun");
    (out, start.elapsed())
}

#[test]
fn collectives_across_processes() {
    if mpirun().is_none() {
        return;
    }
    for ranks in [2, 4] {
        let (out, _) = launch(ranks, "rank_body", "collectives");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "mpirun -n {ranks} failed:\n{text}");
        for r in 0..ranks {
            assert!(
                text.contains(&format!("capmoe-mpi rank {r}/{ranks} ok")),
                "rank {r} of {ranks} did not finish:\n{text}"
            );
        }
    }
}

#[test]
fn a_failed_rank_ends_every_rank() {
    if mpirun().is_none() {
        return;
    }
    let (out, took) = launch(2, "rank_body", "fail");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{text}");
    assert!(text.contains("rank 1 fails on purpose"), "{text}");
}

/// One rank's work; run only under mpirun by the tests above.
#[test]
#[ignore = "runs under mpirun, started by the tests above"]
fn rank_body() {
    let mode = std::env::var("CAPMOE_MPI_TEST_MODE").unwrap_or_default();
    let c = MpiComm::init().expect("MPI init");
    let (me, size) = (c.rank(), c.size());
    if mode == "fail" {
        if me == 1 {
            eprintln!("capmoe-mpi: rank 1 fails on purpose");
            c.abort("rank 1 fails on purpose");
        }
        // The others wait in a collective rank 1 never enters.
        c.barrier().unwrap();
        c.barrier().unwrap();
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let segs: Vec<Vec<u32>> = (0..size).map(|to| payload(me, to)).collect();
    let counts: Vec<usize> = segs.iter().map(Vec::len).collect();
    let recv_counts: Vec<usize> = (0..size).map(|from| payload(from, me).len()).collect();
    let mut recv = vec![u32::MAX; recv_counts.iter().sum()];
    all_to_all_v(&c, &segs.concat(), &counts, &mut recv, &recv_counts).unwrap();
    let want: Vec<u32> = (0..size).flat_map(|from| payload(from, me)).collect();
    assert_eq!(recv, want, "rank {me}");
    let all = all_gather(&c, &[me as u64 * 3]).unwrap();
    assert_eq!(all, (0..size as u64).map(|r| r * 3).collect::<Vec<_>>());
    c.barrier().unwrap();
    let root = gather_to_root(&c, &[me as f64]).unwrap();
    assert_eq!(
        root,
        (me == 0).then(|| (0..size).map(|r| r as f64).collect())
    );
    println!("capmoe-mpi rank {me}/{size} ok");
}
