//! Unit tests of the pure parts: percentiles, arrivals, traces, requests, the EP cost model.

use super::timing::{forward_cost, LayerCostInput};
use super::*;

#[test]
fn percentiles_are_nearest_rank_on_known_inputs() {
    let v: Vec<f64> = (1..=10).map(f64::from).collect();
    let p = Percentiles::of(&v);
    // ceil(0.5 * 10) = 5th, ceil(0.9 * 10) = 9th, ceil(0.99 * 10) = 10th.
    assert_eq!(
        (p.count, p.p50, p.p90, p.p99, p.mean),
        (10, 5.0, 9.0, 10.0, 5.5)
    );
    // Unsorted input, 3 values: 2nd, 3rd, 3rd.
    let p = Percentiles::of(&[3.0, 1.0, 2.0]);
    assert_eq!((p.p50, p.p90, p.p99), (2.0, 3.0, 3.0));
    // 200 values 0..199: 100th -> 99, 180th -> 179, 198th -> 197.
    let v: Vec<f64> = (0..200).rev().map(f64::from).collect();
    let p = Percentiles::of(&v);
    assert_eq!((p.p50, p.p90, p.p99), (99.0, 179.0, 197.0));
    let p = Percentiles::of(&[7.0]);
    assert_eq!((p.p50, p.p90, p.p99), (7.0, 7.0, 7.0));
    // Empty: zeros, never NaN; non-finite values are left out.
    let p = Percentiles::of(&[]);
    assert_eq!((p.count, p.p50, p.p99, p.mean), (0, 0.0, 0.0, 0.0));
    let p = Percentiles::of(&[f64::NAN, 4.0, f64::INFINITY]);
    assert_eq!((p.count, p.p50, p.p99), (1, 4.0, 4.0));
    assert_eq!(percentile(&[], 50.0), None);
    assert_eq!(Percentiles::of(&[1.0, 2.0]).scaled(1e3).p99, 2000.0);
}

#[test]
fn percentiles_are_ordered_on_any_sample() {
    let mut rng = Rng::new(3);
    for n in 1..200 {
        let v: Vec<f64> = (0..n).map(|_| rng.uniform() * 100.0).collect();
        let p = Percentiles::of(&v);
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99, "{p:?}");
    }
}

fn mean_and_cv(t: &[f64]) -> (f64, f64) {
    let gaps: Vec<f64> = std::iter::once(t[0])
        .chain(t.windows(2).map(|w| w[1] - w[0]))
        .collect();
    let n = gaps.len() as f64;
    let m = gaps.iter().sum::<f64>() / n;
    let var = gaps.iter().map(|g| (g - m) * (g - m)).sum::<f64>() / n;
    (m, var.sqrt() / m)
}

#[test]
fn arrivals_are_deterministic_with_the_stated_mean_rate() {
    for process in [
        ArrivalProcess::Poisson,
        ArrivalProcess::Gamma(0.5),
        ArrivalProcess::Gamma(4.0),
    ] {
        let a = arrival_times(20_000, 5.0, process, 11).unwrap();
        assert_eq!(a, arrival_times(20_000, 5.0, process, 11).unwrap());
        assert_ne!(a, arrival_times(20_000, 5.0, process, 12).unwrap());
        assert!(a.windows(2).all(|w| w[0] <= w[1]) && a[0] > 0.0);
        let (mean, cv) = mean_and_cv(&a);
        assert!(
            (mean * 5.0 - 1.0).abs() < 0.03,
            "{process}: mean gap {mean}"
        );
        let want_cv = match process {
            ArrivalProcess::Poisson => 1.0,
            ArrivalProcess::Gamma(k) => 1.0 / k.sqrt(),
        };
        assert!((cv / want_cv - 1.0).abs() < 0.06, "{process}: cv {cv}");
    }
}

#[test]
fn arrival_processes_parse_and_print() {
    assert_eq!(
        "poisson".parse::<ArrivalProcess>().unwrap(),
        ArrivalProcess::Poisson
    );
    assert_eq!(
        "gamma:2.5".parse::<ArrivalProcess>().unwrap(),
        ArrivalProcess::Gamma(2.5)
    );
    assert_eq!(ArrivalProcess::Gamma(2.5).to_string(), "gamma:2.5");
    for bad in [
        "",
        "gamma",
        "gamma:",
        "gamma:0",
        "gamma:-1",
        "gamma:nan",
        "gamma:1e9",
        "erlang:2",
    ] {
        assert!(
            matches!(
                bad.parse::<ArrivalProcess>(),
                Err(ServeError::OutOfRange { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn hostile_rates_and_counts_are_typed_errors() {
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
        assert!(matches!(
            arrival_times(4, rate, ArrivalProcess::Poisson, 0),
            Err(ServeError::OutOfRange { .. })
        ));
    }
    for n in [0, MAX_REQUESTS + 1, usize::MAX] {
        assert!(matches!(
            arrival_times(n, 1.0, ArrivalProcess::Poisson, 0),
            Err(ServeError::OutOfRange { .. })
        ));
    }
    assert!(matches!(
        arrival_times(4, 1.0, ArrivalProcess::Gamma(0.0), 0),
        Err(ServeError::OutOfRange { .. })
    ));
}

#[test]
fn traces_parse_as_json_lines_or_csv() {
    let json = "{\"arrival_s\": 0.5, \"request\": 2}\n\n{\"arrival_s\": 0.5, \"request\": 0}\n";
    let csv = "arrival_s,request\n0.5,2\n 0.5 , 0 \n";
    let want = vec![
        TraceEntry {
            arrival_s: 0.5,
            request: 2,
        },
        TraceEntry {
            arrival_s: 0.5,
            request: 0,
        },
    ];
    assert_eq!(parse_trace(json).unwrap(), want);
    assert_eq!(parse_trace(csv).unwrap(), want);
    assert_eq!(parse_trace("0,1").unwrap().len(), 1);
}

#[test]
fn hostile_traces_are_typed_errors() {
    for (text, line) in [
        ("1.0,0\n0.5,1\n", 2),             // out of order
        ("-1,0\n", 1),                     // negative
        ("NaN,0\n", 1),                    // not finite
        ("inf,0\n", 1),                    // not finite
        ("1e10,0\n", 1),                   // too late
        ("0.1\n", 1),                      // one cell
        ("0.1,2,3\n", 1),                  // three cells
        ("0.1,-2\n", 1),                   // negative index
        ("0.1,x\n", 1),                    // not a number
        ("arrival_s,request\nfoo,1\n", 2), // bad time
        (
            "{\"arrival_s\": 1, \"request\": 0}\n{\"arrival_s\": 2}\n",
            2,
        ), // missing field
        ("{\"arrival_s\": 1, \"request\": 0, \"x\": 1}\n", 1), // unknown field
        ("{\"arrival_s\": 1, \"request\": 0}\n0.5,1\n", 2), // mixed formats
    ] {
        match parse_trace(text) {
            Err(ServeError::Trace { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
    for empty in ["", "\n\n", "arrival_s,request\n"] {
        assert!(
            matches!(parse_trace(empty), Err(ServeError::Empty(_))),
            "{empty:?}"
        );
    }
    let long: String = (0..=MAX_REQUESTS).map(|i| format!("{i},0\n")).collect();
    assert!(matches!(parse_trace(&long), Err(ServeError::Trace { .. })));
}

#[test]
fn requests_take_their_pool_entries_and_check_them() {
    let pool = vec![
        Workload {
            prompt: vec![1, 2],
            expected: vec![3],
        },
        Workload {
            prompt: vec![4],
            expected: vec![5, 6],
        },
    ];
    let r = requests(&[(0.0, 1), (0.5, 0), (0.5, 1)], &pool).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].source, r[0].prompt.clone()), (1, vec![4]));
    assert_eq!(r[1].expected, vec![3]);
    let bad = |a: &[(f64, usize)], p: &[Workload]| requests(a, p).is_err();
    assert!(bad(&[(0.0, 2)], &pool)); // index past the pool
    assert!(bad(&[], &pool));
    assert!(bad(&[(0.0, 0)], &[]));
    assert!(bad(&[(1.0, 0), (0.5, 0)], &pool)); // out of order
    assert!(bad(&[(f64::NAN, 0)], &pool));
    let empty_prompt = [Workload {
        prompt: vec![],
        expected: vec![1],
    }];
    assert!(bad(&[(0.0, 0)], &empty_prompt));
    let no_output = [Workload {
        prompt: vec![1],
        expected: vec![],
    }];
    assert!(bad(&[(0.0, 0)], &no_output));
    let too_long = [Workload {
        prompt: vec![1],
        expected: vec![0; MAX_NEW_TOKENS + 1],
    }];
    assert!(bad(&[(0.0, 0)], &too_long));
}

#[test]
fn the_ep_cost_replaces_measured_moe_by_the_busiest_rank_share() {
    // Two layers, 2 ranks. Layer 0: 1 s of MoE, rows 3 and 1 -> busiest share 0.75.
    // Layer 1: 0.4 s, no rows (all dropped) -> each rank 1/2; plus 0.1 s of all-to-all.
    let layers = [
        LayerCostInput {
            moe_s: 1.0,
            rank_rows: vec![3, 1],
            a2a_s: 0.0,
        },
        LayerCostInput {
            moe_s: 0.4,
            rank_rows: vec![0, 0],
            a2a_s: 0.1,
        },
    ];
    let c = forward_cost(2.0, &layers, 2);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(close(c.moe_s, 1.4));
    assert!(close(c.ep_moe_s, 0.75 + 0.2 + 0.1));
    assert!(close(c.duration_s, (2.0 - 1.4) + 1.05));
    assert!(close(c.rank_busy_s[0], 0.75 + 0.2) && close(c.rank_busy_s[1], 0.25 + 0.2));
    // Measured MoE time above the wall time (clock jitter) never makes a negative rest.
    let c = forward_cost(0.5, &layers[..1], 2);
    assert!(close(c.duration_s, 0.75));
}
