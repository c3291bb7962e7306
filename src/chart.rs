//! The chart setup that every PNG figure of capmoe shares (feature `bench`):
//! a white bitmap canvas written atomically, text from a shipped font, one
//! palette, axes and legends in one style, and line, reference and bar
//! series.
//!
//! Text is rendered with `ab_glyph` from the Hack font that the
//! `epaint_default_fonts` crate ships, so no system font or fontconfig is
//! needed. Figures are drawn with `plotters`' bitmap backend into a hidden
//! temporary PNG beside the target and renamed over it
//! ([`crate::io::atomic::replace_with`]): an interrupted run leaves the old
//! figure or the new one, never a torn file.

use crate::io::atomic::replace_with;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;
use std::error::Error;
use std::path::Path;
use std::sync::Once;

pub use plotters::chart::SeriesLabelPosition;
pub use plotters::style::colors::{BLACK, WHITE};
pub use plotters::style::RGBColor;

/// The family name the shipped font is registered under.
pub const FONT: &str = "sans-serif";

/// What drawing a figure returns: plotters' errors, boxed.
pub type DrawResult = Result<(), Box<dyn Error>>;

/// A region of a figure's canvas.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart with two `f64` axes, built on an [`Area`].
pub type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The mesh (axes, grid, labels) of a [`Chart`], for further settings.
pub type Mesh<'a, 'b, 'c> =
    plotters::chart::MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, BitMapBackend<'c>>;

/// Text sizes and spacing of a chart.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Caption font size.
    pub caption: u32,
    /// Tick label font size.
    pub label: u32,
    /// Axis description font size.
    pub axis_desc: u32,
    /// Legend font size.
    pub legend: u32,
    /// Margin around the chart.
    pub margin: u32,
    /// Height of the x label area.
    pub x_label_area: u32,
    /// Width of the y label area.
    pub y_label_area: u32,
    /// Radius of a line's point markers.
    pub marker: u32,
}

/// A chart that has a canvas half (or all) to itself.
pub const LARGE: Style = Style {
    caption: 20,
    label: 14,
    axis_desc: 15,
    legend: 13,
    margin: 12,
    x_label_area: 40,
    y_label_area: 70,
    marker: 4,
};

/// A chart that is one panel of a grid.
pub const SMALL: Style = Style {
    caption: 17,
    label: 12,
    axis_desc: 13,
    legend: 11,
    margin: 10,
    x_label_area: 36,
    y_label_area: 60,
    marker: 3,
};

/// Registers the shipped font as [`FONT`] (once per process).
pub fn register_fonts() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font; a failure only loses text.
        let _ = register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR);
    });
}

/// The `i`-th colour of the palette (matplotlib's tab10, eight of them,
/// repeating).
pub fn color(i: usize) -> RGBColor {
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

/// Draws a `size` (width, height) PNG at `path` atomically: registers the
/// font, fills a white canvas, lets `draw` paint it, and renames the
/// finished file over `path` (see the module docs).
pub fn save_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> DrawResult,
) -> DrawResult {
    register_fonts();
    replace_with(path, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })
}

/// The padded span of the finite `vals` (and of `floor`, if given) for an
/// axis; `(0, 1)` when there is none.
pub fn range(vals: impl Iterator<Item = f64>, floor: Option<f64>) -> (f64, f64) {
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

/// The x span of a chart against the capacity factors `gammas`: their
/// padded [`range`], at least 0.5 wide.
pub fn gamma_range(gammas: &[f64]) -> (f64, f64) {
    let (lo, hi) = range(gammas.iter().copied(), None);
    if hi - lo < 0.2 {
        (lo - 0.25, hi + 0.25)
    } else {
        (lo, hi)
    }
}

/// Groups `items` by policy, in order of first appearance, keeping only
/// those with a capacity factor, each group sorted by it (stably).
pub fn by_policy<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    policy: impl Fn(&T) -> &str,
    gamma: impl Fn(&T) -> Option<f64>,
) -> Vec<(String, Vec<&'a T>)> {
    let mut out: Vec<(String, Vec<&'a T>)> = Vec::new();
    for c in items.into_iter().filter(|c| gamma(c).is_some()) {
        match out.iter_mut().find(|(p, _)| p.as_str() == policy(c)) {
            Some((_, v)) => v.push(c),
            None => out.push((policy(c).to_string(), vec![c])),
        }
    }
    for (_, v) in &mut out {
        v.sort_by(|a, b| gamma(a).unwrap_or(0.0).total_cmp(&gamma(b).unwrap_or(0.0)));
    }
    out
}

/// A captioned chart on `area` with `x` and `y` spans, laid out by `style`.
pub fn cartesian<'a, 'b>(
    area: &'a Area<'b>,
    style: &Style,
    title: &str,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, 'b>, Box<dyn Error>> {
    Ok(ChartBuilder::on(area)
        .caption(title, (FONT, style.caption))
        .margin(style.margin)
        .x_label_area_size(style.x_label_area)
        .y_label_area_size(style.y_label_area)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?)
}

/// Draws `chart`'s axes and grid with the axis descriptions and `style`'s
/// text; `more` adds settings (formatters, label counts) first.
pub fn mesh(
    chart: &mut Chart<'_, '_>,
    style: &Style,
    x_desc: &str,
    y_desc: &str,
    more: impl FnOnce(&mut Mesh<'_, '_, '_>),
) -> DrawResult {
    let mut m = chart.configure_mesh();
    m.x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, style.label))
        .axis_desc_style((FONT, style.axis_desc));
    more(&mut m);
    m.draw()?;
    Ok(())
}

/// A solid line through `pts` with a filled circle at each, labelled in the
/// legend.
pub fn line(
    chart: &mut Chart<'_, '_>,
    style: &Style,
    pts: &[(f64, f64)],
    col: RGBColor,
    label: &str,
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(pts.to_vec(), col.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    let r = style.marker;
    chart.draw_series(pts.iter().map(|&pt| Circle::new(pt, r, col.filled())))?;
    Ok(())
}

/// Vertical error bars `(x, low, high)` with short caps, in `col`.
pub fn error_bars(
    chart: &mut Chart<'_, '_>,
    bars: &[(f64, f64, f64)],
    col: RGBColor,
) -> DrawResult {
    let stroke = col.stroke_width(1);
    chart.draw_series(
        bars.iter()
            .map(|&(x, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], stroke)),
    )?;
    let cap =
        |x: f64, y: f64| EmptyElement::at((x, y)) + PathElement::new(vec![(-5, 0), (5, 0)], stroke);
    chart.draw_series(
        bars.iter()
            .flat_map(|&(x, lo, hi)| [cap(x, lo), cap(x, hi)]),
    )?;
    Ok(())
}

/// A dashed line through `pts` (`dash` drawn, `gap` blank, in pixels),
/// labelled in the legend if `label` is given.
pub fn dashed(
    chart: &mut Chart<'_, '_>,
    pts: Vec<(f64, f64)>,
    (dash, gap): (u32, u32),
    stroke: ShapeStyle,
    label: Option<&str>,
) -> DrawResult {
    let s = chart.draw_series(DashedLineSeries::new(pts, dash, gap, stroke))?;
    if let Some(l) = label {
        s.label(l)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stroke));
    }
    Ok(())
}

/// A dashed horizontal reference at `y` across `x`, labelled in the legend.
pub fn reference(
    chart: &mut Chart<'_, '_>,
    x: (f64, f64),
    y: f64,
    (dash, gap): (u32, u32),
    stroke: ShapeStyle,
    label: &str,
) -> DrawResult {
    dashed(
        chart,
        vec![(x.0, y), (x.1, y)],
        (dash, gap),
        stroke,
        Some(label),
    )
}

/// Filled bars, each from `(x0, y0)` to `(x1, y1)`, labelled in the legend
/// by a swatch.
pub fn bars(
    chart: &mut Chart<'_, '_>,
    rects: impl Iterator<Item = ((f64, f64), (f64, f64))>,
    col: RGBColor,
    label: &str,
) -> DrawResult {
    chart
        .draw_series(rects.map(|(a, b)| Rectangle::new([a, b], col.filled())))?
        .label(label)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.filled()));
    Ok(())
}

/// Draws the legend of the labelled series at `pos`.
pub fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    style: &Style,
    pos: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .label_font((FONT, style.legend))
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One series of a [`GammaPanel`].
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Its legend label.
    pub label: String,
    /// The solid line's points.
    pub points: Vec<(f64, f64)>,
    /// The dashed companion line's points (drawn only when the panel has a
    /// dashed label).
    pub dashed: Vec<(f64, f64)>,
    /// Error bars `(x, low, high)`: a spread drawn around the solid line.
    pub errors: Vec<(f64, f64, f64)>,
}

/// A chart against the capacity factor: dashed horizontal references, then
/// per series a solid line with markers and, optionally, a dashed companion
/// line in the same colour (the first one's labelled `dashed_label`), and a
/// legend.
pub struct GammaPanel<'a> {
    /// Text sizes and spacing.
    pub style: &'a Style,
    /// The caption.
    pub title: &'a str,
    /// The y axis description.
    pub y_desc: &'a str,
    /// The x span.
    pub x: (f64, f64),
    /// The y span.
    pub y: (f64, f64),
    /// References: label, y value, colour.
    pub refs: &'a [(String, f64, RGBColor)],
    /// The lines, one per series.
    pub series: &'a [Series],
    /// The legend label of the dashed lines.
    pub dashed_label: Option<&'a str>,
    /// Where the legend goes.
    pub legend: SeriesLabelPosition,
}

impl GammaPanel<'_> {
    /// Draws the panel on `area`.
    pub fn draw(&self, area: &Area<'_>) -> DrawResult {
        let mut chart = cartesian(area, self.style, self.title, self.x, self.y)?;
        mesh(
            &mut chart,
            self.style,
            "capacity factor gamma",
            self.y_desc,
            |_| {},
        )?;
        for (label, v, col) in self.refs {
            reference(&mut chart, self.x, *v, (6, 4), col.stroke_width(1), label)?;
        }
        for (i, s) in self.series.iter().enumerate() {
            let col = color(i);
            line(&mut chart, self.style, &s.points, col, &s.label)?;
            error_bars(&mut chart, &s.errors, col)?;
            if let Some(what) = self.dashed_label {
                let l = (i == 0).then_some(what);
                dashed(&mut chart, s.dashed.clone(), (5, 4), col.stroke_width(1), l)?;
            }
        }
        legend(&mut chart, self.style, self.legend.clone())
    }
}
