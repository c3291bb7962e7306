//! The people-facing `--format table` report.

use capmoe::routing::{CapacityScope, RouterConfig, RoutingPlan};
use std::io::{self, Write};
use std::path::Path;

const BAR: usize = 40;

/// A bar of `value / full * BAR` cells, in eighths.
fn bar(value: u64, full: u64) -> String {
    if full == 0 {
        return String::new();
    }
    let eighths = (value as u128 * (BAR as u128) * 8 / full as u128) as usize;
    let mut s = "█".repeat(eighths / 8);
    const PART: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    s.push_str(PART[eighths % 8]);
    s
}

pub fn write(
    out: &mut dyn Write,
    plan: &RoutingPlan,
    cfg: &RouterConfig,
    source: &Path,
) -> io::Result<()> {
    let s = plan.stats();
    writeln!(
        out,
        "{}: {} tokens x {} experts, top-{}, policy {}",
        source.display(),
        plan.tokens(),
        plan.experts(),
        plan.top_k(),
        plan.policy()
    )?;
    let cap = plan.capacity();
    match (cap, cfg.capacity_factor) {
        (Some(c), Some(g)) => {
            let scope = match c.scope {
                CapacityScope::Expert => "per expert".to_string(),
                CapacityScope::Rank => format!(
                    "per expert, shared by each rank's {} experts",
                    plan.experts() / c.ranks
                ),
            };
            writeln!(
                out,
                "capacity C = ceil({g} * {} * {} / {}) = {} {scope}",
                plan.tokens(),
                plan.top_k(),
                plan.experts(),
                c.per_expert
            )?;
        }
        _ => writeln!(out, "capacity: none (dropless)")?,
    }
    let full = s.max_load.max(cap.map_or(0, |c| c.per_expert)).max(1);
    writeln!(out, "\nexpert      load")?;
    for (e, &l) in s.load.iter().enumerate() {
        let mark = match cap {
            Some(c) if c.scope == CapacityScope::Expert && l == c.per_expert => "  (full)",
            _ => "",
        };
        writeln!(out, "{e:>6}  {l:>8}  {}{mark}", bar(l, full))?;
    }
    let slots = (plan.tokens() * plan.top_k()) as f64;
    let pct = |n: u64| {
        if slots > 0.0 {
            100.0 * n as f64 / slots
        } else {
            0.0
        }
    };
    writeln!(out)?;
    writeln!(
        out,
        "max/mean load     {:.3}  ({} / {:.1})",
        s.imbalance(),
        s.max_load,
        s.mean_load
    )?;
    writeln!(
        out,
        "dropped           {} of {} slots ({:.2}%)",
        s.dropped,
        slots as u64,
        pct(s.dropped)
    )?;
    writeln!(
        out,
        "rerouted          {} ({:.2}%)",
        s.rerouted,
        pct(s.rerouted)
    )?;
    writeln!(out, "gate mass kept    {:.4}%", 100.0 * s.gate_mass_kept)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn bars_scale_in_eighths() {
        assert_eq!(bar(0, 10), "");
        assert_eq!(bar(10, 10).chars().count(), 40);
        assert_eq!(bar(1, 320), "▏"); // 1/320 of 40 cells = one eighth
        assert_eq!(bar(7, 320), "▉");
        assert_eq!(bar(1, 0), "");
    }
}
