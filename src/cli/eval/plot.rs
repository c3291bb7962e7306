//! `accuracy.png`: accuracy against gamma, a line per capacity policy, `none` dashed.

use super::report::EvalReport;
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

/// Draws the figure into `path` (a `.png`).
pub fn accuracy(path: &Path, r: &EvalReport) -> Result<(), Box<dyn Error>> {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font; a failure only loses text.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR);
    });
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for x in &r.results {
        let Some(g) = x.gamma else { continue };
        let pt = (g, 100.0 * x.accuracy);
        match series.iter_mut().find(|(p, _)| *p == x.policy) {
            Some((_, v)) => v.push(pt),
            None => series.push((x.policy.clone(), vec![pt])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let none = r
        .results
        .iter()
        .find(|x| x.gamma.is_none())
        .map(|x| 100.0 * x.accuracy);
    let xs = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.0));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !x0.is_finite() {
        (x0, x1) = (1.0, 2.0);
    }
    if x1 - x0 < 0.2 {
        (x0, x1) = (x0 - 0.25, x1 + 0.25);
    }
    let ys = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
    let lo = ys.chain(none).fold(100.0f64, f64::min);
    let y0 = (lo - 5.0).max(0.0);
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Accuracy vs capacity factor ({} scored, T = {})",
        r.scored, r.tokens_per_forward
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..100.5)?;
    chart
        .configure_mesh()
        .x_desc("capacity factor gamma")
        .y_desc("exact-answer accuracy (%)")
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
    root.present()?;
    Ok(())
}
