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

#[test]
fn ep_forward_across_processes_equals_one_process() {
    if mpirun().is_none() {
        return;
    }
    for ranks in [2, 4] {
        let (out, _) = launch(ranks, "rank_body", "ep");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "mpirun -n {ranks} failed:\n{text}");
        for r in 0..ranks {
            assert!(
                text.contains(&format!("capmoe-mpi ep rank {r}/{ranks} equal")),
                "rank {r} of {ranks} did not finish:\n{text}"
            );
        }
    }
}

/// The command line: `mpirun -n R capmoe logits --ep mpi` prints (on rank 0
/// only) what `capmoe logits` prints in one process.
#[test]
fn cli_logits_under_mpirun_equal_one_process() {
    if mpirun().is_none() {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_capmoe");
    let args = [
        "logits",
        "--model",
        "tiny",
        "--ids",
        "3,1,4,1,5,9,2,6",
        "--skew",
        "1.6",
        "--policy",
        "drop:score",
        "--capacity-factor",
        "1.0",
        "--json",
    ];
    let one = Command::new(exe).args(args).output().unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    for ranks in [2, 4] {
        let ep = Command::new("mpirun")
            .args([
                "--allow-run-as-root",
                "--oversubscribe",
                "-n",
                &ranks.to_string(),
                exe,
            ])
            .args(args)
            .args(["--ep", "mpi"])
            .output()
            .unwrap();
        assert!(
            ep.status.success(),
            "{}",
            String::from_utf8_lossy(&ep.stderr)
        );
        assert!(
            ep.stdout == one.stdout,
            "mpirun -n {ranks}: the logits differ (or a rank besides 0 printed)"
        );
    }
}

/// Ranks started with different models refuse at start, naming what differs (MPMD: each rank
/// gets its own command line).
#[test]
fn ranks_with_different_models_refuse() {
    if mpirun().is_none() {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_capmoe");
    let args = |seed: &'static str| {
        [
            "-n", "1", exe, "logits", "--model", "tiny", "--ids", "1,2,3", "--ep", "mpi", "--seed",
            seed,
        ]
    };
    let start = Instant::now();
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(args("0"))
        .arg(":")
        .args(args("1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("ranks disagree on --model, --seed and --skew"),
        "{text}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_killed_rank_ends_every_rank() {
    if mpirun().is_none() {
        return;
    }
    let (out, took) = launch(2, "rank_body", "killed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{text}");
    assert!(text.contains("rank 1 dies"), "{text}");
}

/// Each rank checks the EP forward's logits against the whole model's, for
/// the four policies of the bar; with `die`, rank 1 exits mid-run instead.
fn ep_body(c: &MpiComm, die: bool) {
    use capmoe::backend::CpuBackend;
    use capmoe::ep::dist::{ep_logits, EpMoe};
    use capmoe::model::{InitOptions, MixtralConfig, Model};
    use capmoe::routing::{Policy, RouterConfig};
    let (me, size) = (c.rank(), c.size());
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let opts = InitOptions::new(5).with_skew(capmoe::trace::Skew::Ratio(1.6));
    let whole = Model::random(CpuBackend, cfg.clone(), &opts).unwrap();
    let ids: Vec<u32> = (0..11u32).map(|i| (i * 29 + 3) % 128).collect();
    let cap = |p: &str| {
        RouterConfig::new(2, p.parse::<Policy>().unwrap())
            .with_capacity_factor(1.0)
            .with_ranks(size)
    };
    let routers = [
        RouterConfig::new(2, Policy::None).with_ranks(size),
        cap("drop:score"),
        cap("reroute:next-best"),
        cap("expand:local"),
    ];
    for (i, router) in routers.iter().enumerate() {
        if die && i == 1 && me == 1 {
            eprintln!("capmoe-mpi: rank 1 dies");
            std::process::exit(9);
        }
        let ep = EpMoe::new(c, 4, cfg.hidden_size, router, ids.len()).unwrap();
        let mine = Model::random_group(
            CpuBackend,
            cfg.clone(),
            &opts,
            ep.group(),
            &capmoe::progress::NoProgress,
        )
        .unwrap();
        let got = ep_logits(&ep, &mine, &ids, router).unwrap();
        assert!(
            got == whole.logits(&ids, router).unwrap(),
            "rank {me}: {:?}",
            router.policy
        );
    }
    println!("capmoe-mpi ep rank {me}/{size} equal");
}

/// One rank's work; run only under mpirun by the tests above.
#[test]
#[ignore = "runs under mpirun, started by the tests above"]
fn rank_body() {
    let mode = std::env::var("CAPMOE_MPI_TEST_MODE").unwrap_or_default();
    let c = MpiComm::init().expect("MPI init");
    let (me, size) = (c.rank(), c.size());
    if mode == "ep" || mode == "killed" {
        ep_body(&c, mode == "killed");
        return;
    }
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
