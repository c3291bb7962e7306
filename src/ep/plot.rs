//! PNG figures of a benchmark report, drawn with `plotters`' bitmap backend.
//!
//! Text is rendered with `ab_glyph` from the Hack font that the
//! `epaint_default_fonts` crate ships, so no system font or fontconfig is
//! needed.

use super::{BenchReport, CaseReport, EpError};
use plotters::prelude::*;
use plotters::style::register_font;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub(crate) const FONT: &str = "sans-serif";
static REGISTER: Once = Once::new();

pub(crate) fn fonts() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font; a failure only loses text.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR);
    });
}

pub(crate) type Res = Result<(), Box<dyn Error>>;

/// Draws a figure atomically: `draw` renders into a hidden temporary PNG in
/// `path`'s directory (plotters picks the format from the extension, so it
/// ends in `.png`), which is then renamed over `path`. An interrupted run
/// leaves the old figure or the new one, never a torn file.
pub(crate) fn render_atomic(path: &Path, draw: &dyn Fn(&Path) -> Res) -> Res {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}.{n}.png",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = draw(&tmp).and_then(|()| Ok(std::fs::rename(&tmp, path)?));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

pub(crate) fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// Capacity policies in report order, each with its cases sorted by gamma.
fn by_policy(r: &BenchReport) -> Vec<(String, Vec<&CaseReport>)> {
    let mut out: Vec<(String, Vec<&CaseReport>)> = Vec::new();
    for c in r.cases.iter().filter(|c| c.capacity_factor.is_some()) {
        match out.iter_mut().find(|(p, _)| *p == c.policy) {
            Some((_, v)) => v.push(c),
            None => out.push((c.policy.clone(), vec![c])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.capacity_factor.partial_cmp(&b.capacity_factor).unwrap());
    }
    out
}

pub(crate) fn range(vals: impl Iterator<Item = f64>, floor: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if let Some(f) = floor {
        lo = lo.min(f);
        hi = hi.max(f);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9 + hi.abs() * 0.02);
    (lo - pad, hi + pad)
}

fn gamma_range(r: &BenchReport) -> (f64, f64) {
    let (lo, hi) = range(r.setup.capacity_factors.iter().copied(), None);
    if hi - lo < 0.2 {
        (lo - 0.25, hi + 0.25)
    } else {
        (lo, hi)
    }
}

/// One panel: a metric against gamma, a line per capacity policy, and an
/// optional dashed reference (the `none` value).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    r: &BenchReport,
    title: &str,
    y_desc: &str,
    metric: &dyn Fn(&CaseReport) -> f64,
    reference: Option<f64>,
) -> Res {
    let series = by_policy(r);
    let (x0, x1) = gamma_range(r);
    let (y0, y1) = range(
        series.iter().flat_map(|(_, v)| v.iter().map(|c| metric(c))),
        reference,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("capacity factor gamma")
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    if let Some(v) = reference {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, v), (x1, v)],
                6,
                4,
                BLACK.stroke_width(1),
            ))?
            .label("none (dropless)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    for (i, (p, cases)) in series.iter().enumerate() {
        let col = color(i);
        let pts: Vec<(f64, f64)> = cases
            .iter()
            .map(|c| (c.capacity_factor.unwrap_or(0.0), metric(c)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(p.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&pt| Circle::new(pt, 4, col.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn speedup(path: &Path, r: &BenchReport) -> Res {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (a, b) = root.split_horizontally(700);
    panel(
        &a,
        r,
        "MoE-layer EP speedup vs none",
        "speedup (x)",
        &|c| c.summary.speedup_moe,
        Some(1.0),
    )?;
    panel(
        &b,
        r,
        "End-to-end EP prefill speedup vs none",
        "speedup (x)",
        &|c| c.summary.speedup_e2e,
        Some(1.0),
    )?;
    root.present()?;
    Ok(())
}

fn fidelity(path: &Path, r: &BenchReport) -> Res {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (a, b) = root.split_horizontally(700);
    panel(
        &a,
        r,
        "KL(none || policy), mean over positions",
        "KL (nats)",
        &|c| c.summary.fidelity.kl,
        Some(0.0),
    )?;
    panel(
        &b,
        r,
        "Top-1 agreement with none",
        "agreement (%)",
        &|c| 100.0 * c.summary.fidelity.top1,
        Some(100.0),
    )?;
    root.present()?;
    Ok(())
}

/// The gamma the load figure shows: the one closest to 1.5 (the paper's).
pub fn load_gamma(r: &BenchReport) -> Option<f64> {
    r.setup
        .capacity_factors
        .iter()
        .copied()
        .min_by(|a, b| (a - 1.5).abs().total_cmp(&(b - 1.5).abs()))
}

fn load(path: &Path, r: &BenchReport, layer: usize) -> Res {
    let g = load_gamma(r);
    let cases: Vec<&CaseReport> = r
        .cases
        .iter()
        .filter(|c| c.capacity_factor.is_none() || c.capacity_factor == g)
        .collect();
    let experts = r.model.experts;
    let cap = cases.iter().find_map(|c| c.capacity);
    let ymax = cases
        .iter()
        .filter_map(|c| c.layers.get(layer))
        .flat_map(|l| l.load.iter().copied())
        .chain(cap)
        .max()
        .unwrap_or(1) as f64
        * 1.45;
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match g {
        Some(g) => format!(
            "Layer {layer}: assignments per expert, none vs capacity policies at gamma = {g}"
        ),
        None => format!("Layer {layer}: assignments per expert (dropless)"),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..experts as f64 - 0.5, 0f64..ymax.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("expert")
        .y_desc("assignments served")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(experts.min(32))
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .disable_x_mesh()
        .draw()?;
    let n = cases.len().max(1) as f64;
    let w = 0.84 / n;
    for (i, c) in cases.iter().enumerate() {
        let Some(l) = c.layers.get(layer) else {
            continue;
        };
        let col = if c.capacity_factor.is_none() {
            RGBColor(90, 90, 90)
        } else {
            color(i - 1)
        };
        let bars = l.load.iter().enumerate().map(move |(e, &v)| {
            let x0 = e as f64 - 0.42 + i as f64 * w;
            Rectangle::new([(x0, 0.0), (x0 + w * 0.92, v as f64)], col.filled())
        });
        chart
            .draw_series(bars)?
            .label(c.policy.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.filled()));
    }
    if let Some(cv) = cap {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(-0.5, cv as f64), (experts as f64 - 0.5, cv as f64)],
                8,
                5,
                BLACK.stroke_width(2),
            ))?
            .label(format!("capacity C = {cv}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `load.png` (per-expert load of `layer` before and after capacity),
/// `speedup.png` (MoE-layer and end-to-end speedup vs gamma per policy) and
/// `fidelity.png` (KL and top-1 vs gamma) into `dir`; returns their paths.
/// Speedup and fidelity figures need at least one capacity policy.
pub fn write_figures(dir: &Path, r: &BenchReport, layer: usize) -> Result<Vec<PathBuf>, EpError> {
    fonts();
    let mut out = Vec::new();
    let draw = |name: &str, f: &dyn Fn(&Path) -> Res, out: &mut Vec<PathBuf>| {
        let p = dir.join(name);
        render_atomic(&p, f).map_err(|e| EpError::Plot {
            path: p.display().to_string(),
            message: e.to_string(),
        })?;
        out.push(p);
        Ok::<(), EpError>(())
    };
    draw("load.png", &|p| load(p, r, layer), &mut out)?;
    if r.cases.iter().any(|c| c.capacity_factor.is_some()) {
        draw("speedup.png", &|p| speedup(p, r), &mut out)?;
        draw("fidelity.png", &|p| fidelity(p, r), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A draw that writes half a file and then fails leaves the old figure
    /// in place and no temporary file; one that succeeds replaces it whole.
    #[test]
    fn render_atomic_keeps_the_old_figure_on_failure() {
        let dir = std::env::temp_dir().join(format!("capmoe-plot-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("load.png");
        std::fs::write(&path, "old").unwrap();
        let torn = |p: &Path| -> Res {
            std::fs::write(p, "half")?;
            Err("interrupted".into())
        };
        assert!(render_atomic(&path, &torn).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no debris");
        let whole = |p: &Path| -> Res { Ok(std::fs::write(p, "new")?) };
        render_atomic(&path, &whole).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no debris");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
