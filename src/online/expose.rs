//! Renderings of a monitor snapshot: the Prometheus text exposition format and JSON lines.
//! Strings only; the CLI decides where they go (`--metrics-out`).

use super::LayerSnapshot;
use std::fmt::Write;

/// A metric: name, help text, and how to read it from a layer's snapshot.
type Metric<T> = (&'static str, &'static str, fn(&LayerSnapshot) -> T);
/// Reads a per-expert series from a layer's snapshot.
type PerExpert = for<'a> fn(&'a LayerSnapshot) -> &'a [f64];

/// The Prometheus text exposition format (version 0.0.4) of a snapshot: per-layer gauges
/// `capmoe_moe_balancedness`, `capmoe_moe_imbalance`, `capmoe_moe_gate_mass_kept`, counters over
/// the window `capmoe_moe_dropped_window`, `capmoe_moe_rerouted_window`, and per-expert
/// `capmoe_moe_expert_demand` / `capmoe_moe_expert_served` (window means).
pub fn prometheus(snapshot: &[LayerSnapshot]) -> String {
    let mut s = String::new();
    let gauges: [Metric<f64>; 5] = [
        (
            "capmoe_moe_balancedness",
            "mean over max served load per expert (1 = balanced)",
            |l| l.balancedness,
        ),
        (
            "capmoe_moe_imbalance",
            "max over mean demand per expert, minus 1",
            |l| l.imbalance,
        ),
        (
            "capmoe_moe_gate_mass_kept",
            "served over top-k gate mass, window mean",
            |l| l.gate_mass_kept,
        ),
        (
            "capmoe_moe_dropped_window",
            "token slots dropped over the window",
            |l| l.dropped as f64,
        ),
        (
            "capmoe_moe_rerouted_window",
            "assignments rerouted over the window",
            |l| l.rerouted as f64,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for l in snapshot {
            let _ = writeln!(s, "{name}{{layer=\"{}\"}} {}", l.layer, num(get(l)));
        }
    }
    let per_expert: [(&str, &str, PerExpert); 2] = [
        (
            "capmoe_moe_expert_demand",
            "top-k assignments asked of the expert, window mean",
            |l| &l.mean_demand,
        ),
        (
            "capmoe_moe_expert_served",
            "assignments the expert served, window mean",
            |l| &l.mean_served,
        ),
    ];
    for (name, help, get) in per_expert {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
        for l in snapshot {
            for (e, v) in get(l).iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{name}{{layer=\"{}\",expert=\"{e}\"}} {}",
                    l.layer,
                    num(*v)
                );
            }
        }
    }
    s
}

/// Prometheus spells non-finite values `NaN`, `+Inf`, `-Inf`.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// One JSON object per layer, one per line, each with `forward` (the caller's forward count).
pub fn json_lines(forward: u64, snapshot: &[LayerSnapshot]) -> String {
    let mut s = String::new();
    for l in snapshot {
        let mut v = serde_json::to_value(l).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("forward".into(), forward.into());
        }
        let _ = writeln!(s, "{v}");
    }
    s
}
