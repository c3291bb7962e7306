//! `accuracy.png`: accuracy and answer perplexity against gamma, a line per capacity policy,
//! `none` dashed.

use super::report::{EvalReport, EvalResult};
use plotters::prelude::*;
use plotters::style::register_font;
use std::error::Error;
use std::path::Path;
use std::sync::Once;

const FONT: &str = "sans-serif";
static REGISTER: Once = Once::new();

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type Res = Result<(), Box<dyn Error>>;
/// Per capacity policy, its (gamma, value) points.
type Series = Vec<(String, Vec<(f64, f64)>)>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Capacity policies in report order, each with its (gamma, metric) points sorted by gamma,
/// and the `none` value.
fn series(r: &EvalReport, metric: &dyn Fn(&EvalResult) -> f64) -> (Series, Option<f64>) {
    let mut out: Series = Vec::new();
    for x in &r.results {
        let Some(g) = x.gamma else { continue };
        let pt = (g, metric(x));
        match out.iter_mut().find(|(p, _)| *p == x.policy) {
            Some((_, v)) => v.push(pt),
            None => out.push((x.policy.clone(), vec![pt])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let none = r.results.iter().find(|x| x.gamma.is_none()).map(metric);
    (out, none)
}

fn span(vals: impl Iterator<Item = f64>, min_width: f64) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(min_width / 2.0);
    (lo - pad, hi + pad)
}

/// One panel: a metric against gamma, a line per capacity policy, `none` dashed; the y axis
/// spans at least `min_height` and starts at 0 or above.
fn panel(
    area: &Area<'_>,
    r: &EvalReport,
    title: &str,
    y_desc: &str,
    metric: &dyn Fn(&EvalResult) -> f64,
    min_height: f64,
) -> Res {
    let (series, none) = series(r, metric);
    let (x0, x1) = span(series.iter().flat_map(|(_, v)| v.iter().map(|p| p.0)), 0.5);
    let ys = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
    let (y0, y1) = span(ys.chain(none), min_height);
    let (y0, y1) = if y0 < 0.0 { (0.0, y1 - y0) } else { (y0, y1) };
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
    if let Some(v) = none {
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
    for (i, (p, pts)) in series.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(p.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&pt| Circle::new(pt, 4, col.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws the figure into `path` (a `.png`): accuracy and answer perplexity against gamma.
pub fn accuracy(path: &Path, r: &EvalReport) -> Res {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font; a failure only loses text.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR);
    });
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (a, b) = root.split_horizontally(700);
    let title = format!(
        "Exact-answer accuracy ({} scored, T = {})",
        r.scored, r.tokens_per_forward
    );
    panel(&a, r, &title, "accuracy (%)", &|x| 100.0 * x.accuracy, 10.0)?;
    panel(
        &b,
        r,
        "Answer-token perplexity",
        "perplexity",
        &|x| x.answer_ppl,
        1e-3,
    )?;
    root.present()?;
    Ok(())
}
