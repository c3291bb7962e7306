use super::*;
use crate::routing::{Policy, RouterConfig};
use crate::trace::Skew;

fn links(nodes: usize, gpus: usize, nvlink: f64, nic: f64, nics: usize) -> Topology {
    Topology {
        nvlink_gbps: nvlink,
        nic_gbps: nic,
        nics_per_node: nics,
        intra_latency_us: 0.0,
        inter_latency_us: 0.0,
        ..Topology::new(nodes, gpus).unwrap()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

#[test]
fn one_node_is_pure_nvlink() {
    // 10 rows of 1000 bytes at 1 GB/s: 10 µs, none of it on the network.
    let topo = links(1, 2, 1.0, 1.0, 1);
    let mut t = Traffic::new(&topo);
    for _ in 0..10 {
        t.add(&topo, 0, 1);
    }
    t.add(&topo, 1, 1); // to itself: never leaves the GPU
    for r in 0..2 {
        let p = phase_time(&topo, &t, r, 1000.0);
        assert!(close(p.intra_us, 10.0), "{p:?}");
        assert_eq!(p.inter_us, 0.0);
    }
}

#[test]
fn one_gpu_per_node_is_pure_network() {
    let topo = links(2, 1, 1.0, 2.0, 1);
    let mut t = Traffic::new(&topo);
    for _ in 0..10 {
        t.add(&topo, 0, 1);
    }
    for _ in 0..4 {
        t.add(&topo, 1, 0);
    }
    // Node 0 sends 10 and receives 4: its busier direction is 10 rows.
    let p0 = phase_time(&topo, &t, 0, 1000.0);
    assert_eq!(p0.intra_us, 0.0);
    assert!(close(p0.inter_us, 5.0), "{p0:?}");
    let p1 = phase_time(&topo, &t, 1, 1000.0);
    assert!(close(p1.inter_us, 5.0), "{p1:?}");
}

#[test]
fn a_nodes_gpus_share_its_nics() {
    // Both GPUs of node 0 send 10 rows to node 1: node 0 moves 20 rows.
    let one = links(2, 2, 100.0, 1.0, 1);
    let mut t = Traffic::new(&one);
    for _ in 0..10 {
        t.add(&one, 0, 2);
        t.add(&one, 1, 3);
    }
    assert_eq!(t.node_out, vec![20, 0]);
    assert_eq!(t.node_in, vec![0, 20]);
    for r in 0..4 {
        assert!(close(phase_time(&one, &t, r, 1000.0).inter_us, 20.0));
    }
    // Two NICs halve it; the NVLink part stays zero.
    let two = links(2, 2, 100.0, 1.0, 2);
    let p = phase_time(&two, &t, 0, 1000.0);
    assert!(close(p.inter_us, 10.0), "{p:?}");
    assert_eq!(p.intra_us, 0.0);
}

#[test]
fn latency_is_paid_only_on_a_link_used() {
    let mut topo = links(2, 2, 1.0, 1.0, 1);
    topo.intra_latency_us = 3.0;
    topo.inter_latency_us = 7.0;
    let mut t = Traffic::new(&topo);
    t.add(&topo, 0, 1);
    let p = phase_time(&topo, &t, 0, 1000.0);
    assert!(close(p.intra_us, 1.0 + 3.0));
    assert_eq!(p.inter_us, 0.0);
    assert_eq!(phase_time(&topo, &t, 2, 1000.0).total_us(), 0.0);
}

#[test]
fn layer_latency_is_the_slowest_ranks_compute_and_both_phases() {
    let topo = links(1, 2, 1.0, 1.0, 1);
    let mut t = Traffic::new(&topo);
    for _ in 0..10 {
        t.add(&topo, 0, 1);
    }
    let compute = ComputeModel {
        fixed_us: 5.0,
        per_row_us: 1.0,
    };
    // Rank 1: 5 + 100 + 2 * 10; rank 0: 5 + 20 + 2 * 10.
    let c = layer_cost(&topo, &compute, &[20, 100], &t, 1000.0);
    assert!(close(c.latency_us, 125.0), "{c:?}");
    assert!(close(c.compute_us, 105.0));
    assert!(close(c.intra_us, 20.0));
    assert_eq!(c.busiest_rows, 100);
}

#[test]
fn the_fit_recovers_fixed_and_per_row_time() {
    let pts: Vec<(f64, f64)> = [10.0, 50.0, 120.0, 300.0]
        .iter()
        .map(|&x| (x, 0.25 + 0.0075 * x))
        .collect();
    let (a, b, r2) = fit_line(&pts).unwrap();
    assert!(
        close(a, 0.25) && close(b, 0.0075) && close(r2, 1.0),
        "{a} {b} {r2}"
    );
    assert!(fit_line(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
    assert!(fit_line(&[(1.0, 2.0)]).is_none());
}

fn rank(rows: f64, expert_ms: f64, wait_ms: f64, bytes: f64) -> MeasuredRankLayer {
    MeasuredRankLayer {
        expert_ms,
        dispatch_ms: wait_ms,
        combine_ms: wait_ms,
        rows,
        sent_bytes: bytes,
        recv_bytes: bytes,
    }
}

#[test]
fn calibration_recovers_a_synthetic_run() {
    let t = |rows: f64| 0.1 + 0.01 * rows;
    let case = |policy: &str, rows: [f64; 2], speedup: f64| MeasuredCase {
        policy: policy.into(),
        gamma: None,
        speedup: MeasuredSpeedup { p50: speedup },
        // 2e6 bytes in 2 x 0.5 ms at the least-waiting rank: 2 GB/s.
        layers: vec![vec![
            rank(rows[0], t(rows[0]), 0.5, 2e6),
            rank(rows[1], t(rows[1]), 3.0, 1e6),
        ]],
    };
    let run = MeasuredRun {
        ranks: 2,
        tokens: 64,
        cases: vec![
            case("none", [300.0, 100.0], 1.0),
            case("drop:score", [200.0, 150.0], 1.3),
        ],
    };
    let c = calibrate(&run).unwrap();
    assert!(close(c.fixed_ms, 0.1) && close(c.per_row_ms, 0.01), "{c:?}");
    assert!(close(c.fixed_rows, 10.0));
    assert!(close(c.transfer_gbps, 2.0), "{}", c.transfer_gbps);
    assert_eq!(c.checks[0].model_speedup, 1.0);
    // none: 0.1 + 3 + 1 ms; drop: 0.1 + 2 + 1 ms.
    assert!(close(c.checks[1].model_speedup, 4.1 / 3.1));
    let flat = MeasuredRun {
        cases: vec![case("none", [100.0, 100.0], 1.0)],
        ..run
    };
    assert!(matches!(calibrate(&flat), Err(SimError::Calibration(_))));
    assert!(matches!(
        MeasuredRun::from_json(b"{\"ranks\": 2}"),
        Err(SimError::Calibration(_))
    ));
}

#[test]
fn the_committed_measured_run_calibrates() {
    let json = include_bytes!("../../../bench/results/ep-mpi-cpu/report.json");
    let c = calibrate(&MeasuredRun::from_json(json).unwrap()).unwrap();
    assert!(c.per_row_ms > 0.0 && c.transfer_gbps > 0.0 && c.fixed_rows >= 0.0);
    assert_eq!(c.checks.len(), 25);
    assert_eq!(c.checks[0].model_speedup, 1.0);
}

#[test]
fn bad_topology_strings_are_typed_errors() {
    for s in [
        "",
        "8",
        "x8",
        "8x",
        "0x8",
        "8x0",
        "8x8x8",
        "-1x8",
        "+1x8",
        "8 x 8 x",
        "a x b",
        "99999999999999999999999x8",
        "65536x2",
        "4294967296x4294967296",
    ] {
        assert!(
            matches!(Topology::parse(s), Err(SimError::BadTopology { .. })),
            "{s:?}: {:?}",
            Topology::parse(s)
        );
    }
    let t = Topology::parse("128x8").unwrap();
    assert_eq!((t.nodes, t.gpus_per_node, t.gpus()), (128, 8, 1024));
    assert_eq!(t.to_string(), "128x8");
    let mut bad = t;
    bad.nic_gbps = f64::NAN;
    assert!(matches!(bad.check(), Err(SimError::BadParameter { .. })));
}

#[test]
fn more_gpus_than_experts_are_ep_groups_and_others_are_refused() {
    let l = EpLayout::new(1024, 256).unwrap();
    assert_eq!((l.groups, l.ranks_per_group), (4, 256));
    let l = EpLayout::new(64, 256).unwrap();
    assert_eq!((l.groups, l.ranks_per_group), (1, 64));
    for gpus in [48, 384, 257] {
        assert_eq!(
            EpLayout::new(gpus, 256),
            Err(SimError::RanksVsExperts { gpus, experts: 256 })
        );
    }
}

fn cases() -> Vec<RouterConfig> {
    let mut v = vec![RouterConfig::new(2, Policy::None)];
    for p in ["drop:score", "reroute:next-best", "expand:local"] {
        for g in [1.0, 1.5] {
            v.push(RouterConfig::new(2, p.parse().unwrap()).with_capacity_factor(g));
        }
    }
    v
}

fn setup(topos: &[&str]) -> SimSetup {
    SimSetup {
        topologies: topos.iter().map(|s| Topology::parse(s).unwrap()).collect(),
        experts: 16,
        top_k: 2,
        tokens_per_gpu: 32,
        layers: 2,
        row_bytes: 1024,
        compute: ComputeModel {
            fixed_us: 10.0,
            per_row_us: 0.5,
        },
        cases: cases(),
        traces: SimTraces::Synthetic {
            skew: Skew::Ratio(3.0),
            seed: 1,
        },
    }
}

#[test]
fn none_is_1x_and_dropping_never_adds_rows() {
    let r = simulate(&setup(&["1x4", "2x4", "4x8"]), |_| {}).unwrap();
    assert_eq!(r.topologies.len(), 3);
    // 32 GPUs over 16 experts: two EP groups.
    assert_eq!(r.topologies[2].layout.groups, 2);
    for t in &r.topologies {
        let none = &t.cases[0];
        assert_eq!((none.speedup, none.ideal_speedup), (1.0, 1.0));
        assert_eq!(none.dropped, 0.0);
        assert!(t.imbalance > 1.5, "skew 3 should show: {}", t.imbalance);
        for c in &t.cases {
            for v in [
                c.latency_us,
                c.speedup,
                c.compute_us,
                c.intra_us,
                c.inter_us,
            ] {
                assert!(v.is_finite() && v >= 0.0, "{c:?}");
            }
            if c.policy.starts_with("drop") {
                assert!(c.busiest_rows <= none.busiest_rows, "{c:?}");
                assert!(c.speedup >= 1.0, "{c:?}");
            }
        }
        // One node: nothing on the network.
        if t.topology.nodes == 1 {
            assert!(t.cases.iter().all(|c| c.inter_us == 0.0));
        } else {
            assert!(none.inter_us > 0.0);
        }
    }
}

#[test]
fn ranks_that_do_not_fit_the_experts_are_refused() {
    let e = simulate(&setup(&["3x1"]), |_| {}).unwrap_err();
    assert_eq!(
        e,
        SimError::RanksVsExperts {
            gpus: 3,
            experts: 16
        }
    );
    let mut s = setup(&["1x4"]);
    s.cases.clear();
    assert!(matches!(simulate(&s, |_| {}), Err(SimError::Empty(_))));
    let mut s = setup(&["1x4"]);
    s.tokens_per_gpu = usize::MAX;
    assert!(matches!(simulate(&s, |_| {}), Err(SimError::Overflow(_))));
    let mut s = setup(&["1x4"]);
    s.compute.per_row_us = f64::INFINITY;
    assert!(matches!(
        simulate(&s, |_| {}),
        Err(SimError::BadParameter { .. })
    ));
}

#[test]
fn recorded_traces_are_routed_and_checked() {
    let logits = crate::trace::synthetic_logits(2 * 64, 16, 2, Skew::Ratio(3.0), 5).unwrap();
    let fwd = RecordedForward {
        name: "a.npy".into(),
        layers: 2,
        tokens: 64,
        experts: 16,
        logits,
    };
    let mut s = setup(&["1x4", "4x8"]);
    s.traces = SimTraces::Recorded(vec![fwd.clone()]);
    let r = simulate(&s, |_| {}).unwrap();
    assert_eq!(r.topologies[0].tokens_per_group, 64);
    assert_eq!(r.topologies[0].layers, 2);
    assert_eq!(r.topologies[0].cases[0].speedup, 1.0);
    let mut other = fwd.clone();
    other.tokens = 32;
    other.name = "b.npy".into();
    s.traces = SimTraces::Recorded(vec![fwd.clone(), other]);
    assert!(matches!(
        simulate(&s, |_| {}),
        Err(SimError::TraceShape { .. })
    ));
    let mut wide = fwd;
    wide.experts = 8;
    s.traces = SimTraces::Recorded(vec![wide]);
    assert!(matches!(
        simulate(&s, |_| {}),
        Err(SimError::TraceShape { .. })
    ));
}
