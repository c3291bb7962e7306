//! The simulation's text table and Markdown report.

use super::run::{SimCase, SimReport};
use std::io::{self, Write};

fn label(c: &SimCase) -> String {
    match c.gamma {
        Some(g) => format!("{} @ {g}", c.policy),
        None => c.policy.clone(),
    }
}

/// The table: per topology and case, latency, speedup, ideal, the
/// straggler's split and rows.
pub fn write_table(out: &mut dyn Write, r: &SimReport) -> io::Result<()> {
    writeln!(
        out,
        "Simulated EP, E = {}, k = {}, {} (predicted, not measured)",
        r.experts, r.top_k, r.traces
    )?;
    for t in &r.topologies {
        writeln!(
            out,
            "\n{} = {} GPUs: {} EP group(s) of {} ranks, {} tokens per group per layer, plain top-k max/mean load {:.2}",
            t.spec, t.gpus, t.layout.groups, t.layout.ranks_per_group, t.tokens_per_group, t.imbalance
        )?;
        writeln!(
            out,
            "{:<26} {:>10} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>8}",
            "case",
            "layer µs",
            "speedup",
            "ideal",
            "compute",
            "NVLink",
            "network",
            "rows",
            "dropped"
        )?;
        for c in &t.cases {
            writeln!(
                out,
                "{:<26} {:>10.1} {:>7.2}x {:>7.2}x {:>10.1} {:>9.1} {:>9.1} {:>9.0} {:>7.1}%",
                label(c),
                c.latency_us,
                c.speedup,
                c.ideal_speedup,
                c.compute_us,
                c.intra_us,
                c.inter_us,
                c.busiest_rows,
                c.dropped * 100.0
            )?;
        }
    }
    Ok(())
}

/// `report.md`: the assumptions, the calibration and its check, and the
/// table per topology.
pub fn write_markdown(out: &mut Vec<u8>, r: &SimReport) -> io::Result<()> {
    writeln!(out, "# Simulated expert parallelism beyond one machine\n")?;
    writeln!(
        out,
        "Predicted by a model, not measured. E = {}, k = {}; traces: {}.\n",
        r.experts, r.top_k, r.traces
    )?;
    writeln!(out, "## Assumptions\n")?;
    for a in &r.assumptions {
        writeln!(out, "- {a}")?;
    }
    if let Some(c) = &r.calibration {
        writeln!(
            out,
            "\n## Calibration (measured run: {} ranks, {} tokens)\n",
            c.measured_ranks, c.measured_tokens
        )?;
        writeln!(
            out,
            "- expert time = {:.4} ms + {:.5} ms x rows (least squares over {} rank-layer points, R² {:.3}): the fixed part is {:.1} rows' worth",
            c.fixed_ms, c.per_row_ms, c.points, c.r2, c.fixed_rows
        )?;
        writeln!(
            out,
            "- effective all-to-all rate {:.2} GB/s (busiest rank's bytes over the least-waiting rank's dispatch + combine)",
            c.transfer_gbps
        )?;
        writeln!(out, "\nThe model on the measured run's own rows and bytes (one node, links at the effective rate):\n")?;
        writeln!(out, "| case | measured speedup | model speedup |")?;
        writeln!(out, "| --- | ---: | ---: |")?;
        for k in &c.checks {
            writeln!(
                out,
                "| {} | {:.2}x | {:.2}x |",
                k.case, k.measured_speedup, k.model_speedup
            )?;
        }
    }
    writeln!(out, "\n## Predictions\n")?;
    writeln!(out, "Per case: the MoE layer latency (mean over layers), the speedup over `none`, the ideal from the busiest rank's rows, and the straggler rank's split (µs, mean over layers).\n")?;
    for t in &r.topologies {
        writeln!(
            out,
            "### {} ({} GPUs; {} EP group(s) of {} ranks; {} tokens per group per layer; plain top-k max/mean load {:.2})\n",
            t.spec, t.gpus, t.layout.groups, t.layout.ranks_per_group, t.tokens_per_group, t.imbalance
        )?;
        writeln!(out, "| case | layer µs | speedup | ideal | compute µs | NVLink µs | network µs | busiest rows | dropped | gate mass kept |")?;
        writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for c in &t.cases {
            writeln!(
                out,
                "| {} | {:.1} | {:.2}x | {:.2}x | {:.1} | {:.1} | {:.1} | {:.0} | {:.1}% | {:.3} |",
                label(c),
                c.latency_us,
                c.speedup,
                c.ideal_speedup,
                c.compute_us,
                c.intra_us,
                c.inter_us,
                c.busiest_rows,
                c.dropped * 100.0,
                c.gate_mass_kept
            )?;
        }
        writeln!(out)?;
    }
    Ok(())
}
