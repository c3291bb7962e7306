//! `accuracy.png`: accuracy and answer perplexity against gamma, a line per capacity policy,
//! `none` dashed; drawn with the shared chart setup of [`capmoe::chart`].

use super::report::{EvalReport, EvalResult};
use capmoe::chart::{
    by_policy, save_png, Area, DrawResult, GammaPanel, Series, SeriesLabelPosition,
};
use capmoe::chart::{BLACK, LARGE};
use std::path::Path;

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
) -> DrawResult {
    let series: Vec<Series> = by_policy(&r.results, |x| &x.policy, |x| x.gamma)
        .into_iter()
        .map(|(p, xs)| Series {
            label: p,
            points: xs
                .iter()
                .map(|x| (x.gamma.unwrap_or(0.0), metric(x)))
                .collect(),
            dashed: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    let none = r.results.iter().find(|x| x.gamma.is_none()).map(metric);
    let x = span(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        0.5,
    );
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y0, y1) = span(ys.chain(none), min_height);
    let y = if y0 < 0.0 { (0.0, y1 - y0) } else { (y0, y1) };
    let refs: Vec<_> = none
        .map(|v| ("none (dropless)".to_string(), v, BLACK))
        .into_iter()
        .collect();
    GammaPanel {
        style: &LARGE,
        title,
        y_desc,
        x,
        y,
        refs: &refs,
        series: &series,
        dashed_label: None,
        legend: SeriesLabelPosition::LowerRight,
    }
    .draw(area)
}

/// Draws the figure into `path` (a `.png`, replaced atomically): accuracy and answer
/// perplexity against gamma.
pub fn accuracy(path: &Path, r: &EvalReport) -> DrawResult {
    save_png(path, (1400, 560), |root| {
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
        )
    })
}
