//! The people-facing reports of the GPU benchmark: a terminal table and
//! Markdown (`report.md`).

use super::{GpuBenchReport, GpuCaseReport, GroupReport, BAR};
use crate::ep::report::{md_table, text_table};
use std::io::{self, Write};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}x"))
}

fn gamma(c: &GpuCaseReport) -> String {
    c.capacity_factor.map_or("-".into(), |g| format!("{g:?}"))
}

const HEAD: [&str; 17] = [
    "policy",
    "gamma",
    "C",
    "max rank rows",
    "dropped %",
    "rerouted %",
    "mass kept",
    "slowest rank P50 ms",
    "a2a ms",
    "latency P50 ms",
    "latency P99 ms",
    "speedup P50",
    "speedup P99",
    "ideal",
    "speedup/ideal",
    "ranks/full",
    "J/token",
];

fn row(c: &GpuCaseReport) -> Vec<String> {
    vec![
        c.policy.clone(),
        gamma(c),
        c.capacity.map_or("-".into(), |v| v.to_string()),
        c.max_rank_load.to_string(),
        format!("{:.2}", c.dropped_pct),
        format!("{:.2}", c.rerouted_pct),
        format!("{:.4}", c.gate_mass_kept),
        format!("{:.3}", c.expert_ms.p50),
        format!("{:.3}", c.a2a_ms),
        format!("{:.3}", c.latency_ms.p50),
        format!("{:.3}", c.latency_ms.p99),
        times(c.speedup_p50),
        times(c.speedup_p99),
        times(c.ideal),
        match (c.efficiency, c.meets_bar) {
            (Some(e), Some(true)) => format!("{:.1}%", 100.0 * e),
            (Some(e), _) => format!("{:.1}% (<{:.0}%)", 100.0 * e, 100.0 * BAR),
            _ => "-".into(),
        },
        opt(c.split_overhead, 3),
        c.energy_j_per_token
            .map_or("-".into(), |j| format!("{:.3e}", j)),
    ]
}

const GPU_HEAD: [&str; 10] = [
    "policy",
    "gamma",
    "full layer P50 ms",
    "TFLOP/s",
    "weights GB/s",
    "routing P50 ms",
    "GPU util %",
    "SM MHz (min)",
    "power W (max)",
    "throttle",
];

fn gpu_row(c: &GpuCaseReport) -> Vec<String> {
    let t = c.telemetry.as_ref();
    vec![
        c.policy.clone(),
        gamma(c),
        format!("{:.3}", c.full_layer_ms.p50),
        opt(c.full_tflops, 1),
        opt(c.full_weight_gbps, 0),
        format!("{:.3}", c.routing_ms.p50),
        opt(t.and_then(|t| t.gpu_util_mean_pct), 0),
        match t {
            Some(t) => format!(
                "{} ({})",
                opt(t.sm_clock_mean_mhz, 0),
                opt(t.sm_clock_min_mhz, 0)
            ),
            None => "-".into(),
        },
        match t {
            Some(t) => format!("{} ({})", opt(t.power_mean_w, 0), opt(t.power_max_w, 0)),
            None => "-".into(),
        },
        t.map_or("-".into(), |t| {
            if t.throttle.is_empty() {
                "-".into()
            } else {
                t.throttle.join(", ")
            }
        }),
    ]
}

fn group_title(g: &GroupReport) -> String {
    format!(
        "T = {} tokens, skew {}, EP {} ranks x {} experts (GEMM variants {} / {})",
        g.tokens, g.skew, g.ranks, g.experts_per_rank, g.gemm1, g.gemm2
    )
}

fn header_lines(r: &GpuBenchReport) -> Vec<String> {
    let s = &r.setup;
    let sh = &r.shape;
    let t = &r.telemetry;
    vec![
        format!(
            "layer {}: {} experts top-{}, hidden {}, intermediate {} (bf16 weights {:.2} GB)",
            r.label,
            sh.experts,
            sh.top_k,
            sh.hidden,
            sh.intermediate,
            sh.weight_bytes(sh.experts) / 1e9
        ),
        format!(
            "device {} (sm_{}, {} SMs); compiled GEMM variants: {}",
            r.device.name,
            r.device.compute_capability,
            r.device.sm_count,
            r.device.variants.join(", ")
        ),
        format!(
            "iterations >= {} per case (and >= {} ms of rank work), {} warm-up; launch gate {}; seed {}{}",
            s.iters,
            s.min_case_ms,
            s.warmup,
            if s.gated { "on".to_string() } else { format!("off ({})", s.gate_note.clone().unwrap_or_default()) },
            s.seed,
            if s.tuned { "; autotuned" } else { "" }
        ),
        format!(
            "all-to-all model: {} GB/s per rank and direction, {} bytes/element, 2 x busiest link",
            s.a2a_gbps, s.elem_bytes
        ),
        if t.available {
            format!(
                "telemetry: NVML every {} ms on {}, power limit {} W, idle {} W, energy {}",
                t.period_ms,
                t.device.clone().unwrap_or_default(),
                opt(t.power_limit_w, 0),
                opt(t.idle_power_w, 0),
                if t.energy_counter { "from the total-energy counter" } else { "from integrated power" }
            )
        } else {
            format!(
                "telemetry: unavailable ({})",
                t.reason.clone().unwrap_or_default()
            )
        },
        format!("fidelity: {}", r.fidelity_note),
    ]
}

fn bar_rows(r: &GpuBenchReport) -> Vec<Vec<String>> {
    r.bar
        .iter()
        .map(|b| {
            vec![
                b.policy.clone(),
                b.tokens.to_string(),
                b.skew.clone(),
                b.ranks.to_string(),
                format!("{:?}", b.capacity_factor),
                times(b.speedup_p50),
                times(b.ideal),
                opt(b.efficiency.map(|e| 100.0 * e), 1),
                match b.meets_bar {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect()
}

const BAR_HEAD: [&str; 9] = [
    "policy",
    "T",
    "skew",
    "EP",
    "gamma",
    "speedup P50",
    "ideal",
    "% of ideal",
    ">= 95%",
];

fn skipped_lines(r: &GpuBenchReport) -> Vec<String> {
    r.skipped
        .iter()
        .map(|s| {
            let mut what = Vec::new();
            if let Some(t) = s.tokens {
                what.push(format!("T {t}"));
            }
            if let Some(k) = &s.skew {
                what.push(format!("skew {k}"));
            }
            if let Some(e) = s.ranks {
                what.push(format!("EP {e}"));
            }
            if let Some(p) = &s.policy {
                what.push(p.clone());
            }
            if let Some(g) = s.capacity_factor {
                what.push(format!("gamma {g}"));
            }
            format!("{}: {}", what.join(", "), s.reason)
        })
        .collect()
}

/// The terminal report.
pub fn write_table(out: &mut dyn Write, r: &GpuBenchReport) -> io::Result<()> {
    for l in header_lines(r) {
        writeln!(out, "{l}")?;
    }
    for g in &r.groups {
        writeln!(out, "\n{}", group_title(g))?;
        let rows: Vec<Vec<String>> = g.cases.iter().map(row).collect();
        text_table(out, &HEAD, &rows)?;
    }
    if !r.bar.is_empty() {
        writeln!(out, "\nbar: speedup P50 >= {:.0}% of ideal", 100.0 * BAR)?;
        text_table(out, &BAR_HEAD, &bar_rows(r))?;
    }
    let skipped = skipped_lines(r);
    if !skipped.is_empty() {
        writeln!(out, "\nskipped:")?;
        for s in skipped {
            writeln!(out, "  - {s}")?;
        }
    }
    if !r.figures.is_empty() {
        writeln!(out, "\nfigures: {}", r.figures.join(", "))?;
    }
    Ok(())
}

/// The same report in Markdown, with the device-side columns too.
pub fn write_markdown(out: &mut dyn Write, r: &GpuBenchReport) -> io::Result<()> {
    writeln!(
        out,
        "# capmoe bench --device cuda: MoE-layer EP benchmark\n"
    )?;
    for l in header_lines(r) {
        writeln!(out, "- {l}")?;
    }
    if !r.bar.is_empty() {
        writeln!(
            out,
            "\n## Bar: layer speedup P50 >= {:.0}% of the ideal ratio\n",
            100.0 * BAR
        )?;
        md_table(out, &BAR_HEAD, &bar_rows(r))?;
    }
    for g in &r.groups {
        writeln!(out, "\n## {}\n", group_title(g))?;
        let rows: Vec<Vec<String>> = g.cases.iter().map(row).collect();
        md_table(out, &HEAD, &rows)?;
        writeln!(out)?;
        let rows: Vec<Vec<String>> = g.cases.iter().map(gpu_row).collect();
        md_table(out, &GPU_HEAD, &rows)?;
    }
    let skipped = skipped_lines(r);
    if !skipped.is_empty() {
        writeln!(out, "\n## Skipped\n")?;
        for s in skipped {
            writeln!(out, "- {s}")?;
        }
    }
    crate::ep::report::method_and_figures(out, &r.method, &r.figures)
}
