//! The people-facing reports of `capmoe bench`: a plain-text table for the
//! terminal and the same tables in Markdown.

use super::{BenchReport, CaseReport};
use std::io::{self, Write};

fn gamma(c: &CaseReport) -> String {
    c.capacity_factor.map_or("-".into(), |g| format!("{g:?}"))
}

fn cap(c: &CaseReport) -> String {
    c.capacity.map_or("-".into(), |v| v.to_string())
}

const SUMMARY_HEAD: [&str; 17] = [
    "policy",
    "gamma",
    "C",
    "max/mean",
    "rank max/mean",
    "dropped %",
    "rerouted %",
    "mass kept",
    "slowest rank ms",
    "a2a ms",
    "MoE ms",
    "MoE speedup",
    "rounds min-max",
    "e2e speedup",
    "ideal",
    "KL(none||p)",
    "top-1",
];

fn summary_row(c: &CaseReport) -> Vec<String> {
    let s = &c.summary;
    vec![
        c.policy.clone(),
        gamma(c),
        cap(c),
        format!("{:.2}", s.imbalance),
        format!("{:.2}", s.rank_imbalance),
        format!("{:.2}", s.dropped_pct),
        format!("{:.2}", s.rerouted_pct),
        format!("{:.4}", s.gate_mass_kept),
        format!("{:.1}", s.expert_ms),
        format!("{:.3}", s.a2a_ms),
        format!("{:.1}", s.moe_ms),
        format!(
            "{:.2}x{}",
            s.speedup_moe,
            if s.above_ideal { " (!)" } else { "" }
        ),
        format!(
            "{:.2}-{:.2}",
            s.speedup_moe_spread[0], s.speedup_moe_spread[2]
        ),
        format!("{:.2}x", s.speedup_e2e),
        format!("{:.2}x", s.ideal_speedup),
        format!("{:.2e}", s.fidelity.kl),
        format!("{:.1}%", 100.0 * s.fidelity.top1),
    ]
}

const LAYER_HEAD: [&str; 11] = [
    "policy",
    "gamma",
    "layer",
    "max load",
    "max/mean",
    "dropped %",
    "rerouted %",
    "mass kept",
    "slowest rank",
    "rank ms (max)",
    "a2a ms",
];

fn layer_rows(c: &CaseReport) -> Vec<Vec<String>> {
    c.layers
        .iter()
        .map(|l| {
            vec![
                c.policy.clone(),
                gamma(c),
                l.layer.to_string(),
                l.max_load.to_string(),
                format!("{:.2}", l.imbalance),
                format!("{:.2}", l.dropped_pct),
                format!("{:.2}", l.rerouted_pct),
                format!("{:.4}", l.gate_mass_kept),
                l.slowest_rank.to_string(),
                format!("{:.2}", l.rank_ms[l.slowest_rank]),
                format!("{:.3}", l.a2a_ms),
            ]
        })
        .collect()
}

const THROUGHPUT_HEAD: [&str; 8] = [
    "policy",
    "gamma",
    "prefill ms",
    "prefill tok/s",
    "decode ms/step",
    "decode tok/s",
    "EP prefill ms",
    "EP prefill tok/s",
];

/// The measured speed on the one device (cases with throughput only).
fn throughput_rows(r: &BenchReport) -> Vec<Vec<String>> {
    r.cases
        .iter()
        .filter_map(|c| {
            let t = c.summary.throughput.as_ref()?;
            Some(vec![
                c.policy.clone(),
                gamma(c),
                format!("{:.1}", t.prefill_ms),
                format!("{:.0}", t.prefill_tok_s),
                t.decode_step_ms.map_or("-".into(), |v| format!("{v:.2}")),
                t.decode_tok_s.map_or("-".into(), |v| format!("{v:.1}")),
                format!("{:.1}", c.summary.ep_prefill_ms),
                format!("{:.0}", t.ep_prefill_tok_s),
            ])
        })
        .collect()
}

const THROUGHPUT_NOTE: &str = "throughput: measured on the one device, whole model (prefill of the batch, logits at the last positions; decode: one token per sequence per step, greedy); EP prefill: the modelled EP-R time above";

fn header_lines(r: &BenchReport) -> Vec<String> {
    let m = &r.model;
    let s = &r.setup;
    let b = &r.baseline;
    vec![
        format!(
            "model {}: hidden {}, intermediate {}, {} layers, {} experts top-{}, vocab {} ({:.0} M params)",
            m.name, m.hidden, m.intermediate, m.layers, m.experts, m.top_k, m.vocab, m.params as f64 / 1e6
        ),
        format!(
            "batch {} x {} tokens = T {}; EP {} ranks x {} experts; skew {}; device {} ({} threads); median of {} iters; seed {}",
            s.batch, s.seq_len, s.tokens, s.ranks, s.experts_per_rank, s.skew, s.device, s.threads, s.iters, s.seed
        ),
        format!(
            "all-to-all model: {} GB/s per rank and direction, {} bytes/element, 2 x busiest link",
            s.a2a_gbps, s.elem_bytes
        ),
        format!(
            "baseline (none): prefill {:.1} ms, of which expert FFN {:.1} ms, non-MoE {:.1} ms (per rank {:.1} ms)",
            b.prefill_ms, b.expert_ms, b.non_moe_ms, b.non_moe_per_rank_ms
        ),
    ]
}

pub(crate) fn text_table(
    out: &mut dyn Write,
    head: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<width$}", width = w[i])
                } else {
                    format!("{c:>width$}", width = w[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(head.iter().map(|s| s.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

pub(crate) fn md_table(out: &mut dyn Write, head: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    writeln!(out, "| {} |", head.join(" | "))?;
    writeln!(
        out,
        "|{}",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- |" } else { " ---: |" })
            .collect::<String>()
    )?;
    for r in rows {
        writeln!(out, "| {} |", r.join(" | "))?;
    }
    Ok(())
}

/// What a `(!)` in the summary means, when a case has one.
fn above_ideal_note(out: &mut dyn Write, r: &BenchReport) -> io::Result<()> {
    if r.cases.iter().any(|c| c.summary.above_ideal) {
        writeln!(
            out,
            "(!) measured MoE speedup more than 2% above the ideal from the busiest rank's rows: timing noise (a loaded machine, a slow baseline round; see `rounds min-max`), not capacity"
        )?;
    }
    Ok(())
}

/// The terminal report: setup, the per-case summary, then every layer.
pub fn write_table(out: &mut dyn Write, r: &BenchReport) -> io::Result<()> {
    write_report(out, r, true)
}

/// [`write_table`] without the per-layer table (it stays in the Markdown report).
pub fn write_summary(out: &mut dyn Write, r: &BenchReport) -> io::Result<()> {
    write_report(out, r, false)
}

fn write_report(out: &mut dyn Write, r: &BenchReport, layers: bool) -> io::Result<()> {
    for l in header_lines(r) {
        writeln!(out, "{l}")?;
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = r.cases.iter().map(summary_row).collect();
    text_table(out, &SUMMARY_HEAD, &rows)?;
    above_ideal_note(out, r)?;
    let rows = throughput_rows(r);
    if !rows.is_empty() {
        writeln!(out)?;
        writeln!(out, "{THROUGHPUT_NOTE}:")?;
        text_table(out, &THROUGHPUT_HEAD, &rows)?;
    }
    writeln!(out)?;
    if layers {
        writeln!(out, "per layer:")?;
        let rows: Vec<Vec<String>> = r.cases.iter().flat_map(layer_rows).collect();
        text_table(out, &LAYER_HEAD, &rows)?;
    } else {
        writeln!(out, "per layer: in report.md (or add --verbose)")?;
    }
    writeln!(out)?;
    writeln!(out, "method:")?;
    for m in &r.method {
        writeln!(out, "  - {m}")?;
    }
    if !r.figures.is_empty() {
        writeln!(out, "figures: {}", r.figures.join(", "))?;
    }
    Ok(())
}

/// The same report in Markdown.
pub fn write_markdown(out: &mut dyn Write, r: &BenchReport) -> io::Result<()> {
    writeln!(out, "# capmoe bench: expert-parallel straggler benchmark\n")?;
    for l in header_lines(r) {
        writeln!(out, "- {l}")?;
    }
    writeln!(
        out,
        "\n## Summary (sums over layers; speedups against `none`)\n"
    )?;
    let rows: Vec<Vec<String>> = r.cases.iter().map(summary_row).collect();
    md_table(out, &SUMMARY_HEAD, &rows)?;
    above_ideal_note(out, r)?;
    let rows = throughput_rows(r);
    if !rows.is_empty() {
        writeln!(out, "\n## Throughput\n\n{THROUGHPUT_NOTE}.\n")?;
        md_table(out, &THROUGHPUT_HEAD, &rows)?;
    }
    writeln!(out, "\n## Per layer\n")?;
    let rows: Vec<Vec<String>> = r.cases.iter().flat_map(layer_rows).collect();
    md_table(out, &LAYER_HEAD, &rows)?;
    method_and_figures(out, &r.method, &r.figures)
}

/// The Markdown tail both benchmark reports share: the method notes and the
/// figures (linked by file name, next to the report).
pub(crate) fn method_and_figures(
    out: &mut dyn std::io::Write,
    method: &[String],
    figures: &[String],
) -> std::io::Result<()> {
    writeln!(out, "\n## Method\n")?;
    for m in method {
        writeln!(out, "- {m}")?;
    }
    if !figures.is_empty() {
        writeln!(out, "\n## Figures\n")?;
        for f in figures {
            let name = std::path::Path::new(f)
                .file_name()
                .map_or(f.clone(), |n| n.to_string_lossy().into_owned());
            writeln!(out, "![{name}]({name})")?;
        }
    }
    Ok(())
}
