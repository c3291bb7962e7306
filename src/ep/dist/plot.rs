//! The measured EP benchmark's figure: per case, the measured speedup over
//! `none` (median, min-max error bar) beside the ideal from rows and
//! today's modelled figure.

use super::bench::EpBenchReport;
use crate::chart::{bars, cartesian, mesh, save_png, DrawResult, BLACK, FONT, LARGE};
use plotters::element::{PathElement, Text};
use plotters::style::Color;
use plotters::style::{FontTransform, IntoFont};
use std::path::Path;

/// Draws `speedup.png` of `r` at `path`.
pub fn speedup_figure(path: &Path, r: &EpBenchReport) -> DrawResult {
    let n = r.cases.len();
    let top = r
        .cases
        .iter()
        .flat_map(|c| [c.speedup.max, c.ideal_speedup, c.modelled_speedup])
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.6;
    let width = (160 * n as u32).clamp(1500, 2600);
    save_png(path, (width, 620), |root| {
        let title = format!(
            "EP speedup over none, {} ranks, {} tokens. Blue: measured median (bar: min-max over forwards); orange: ideal from the busiest rank's rows; green: modelled",
            r.ranks, r.tokens
        );
        let mut chart = cartesian(root, &LARGE, &title, (-0.5, n as f64 - 0.5), (0.0, top))?;
        let labels: Vec<String> = r
            .cases
            .iter()
            .map(|c| match c.gamma {
                Some(g) => format!("{} {g}", c.policy),
                None => c.policy.clone(),
            })
            .collect();
        mesh(
            &mut chart,
            &LARGE,
            "case (numbered as labelled above its bars)",
            "speedup over none (x)",
            |m| {
                m.x_labels(n.max(1)).x_label_formatter(&case_number);
            },
        )?;
        let font = (FONT, 15).into_font().transform(FontTransform::Rotate90);
        chart.draw_series(labels.iter().enumerate().map(|(i, l)| {
            Text::new(
                format!("{i}: {l}"),
                (i as f64 - 0.1, top * 0.985),
                font.clone(),
            )
        }))?;
        let bar = |dx: f64, v: &dyn Fn(usize) -> f64| -> Vec<((f64, f64), (f64, f64))> {
            (0..n)
                .map(|i| {
                    let x = i as f64 + dx;
                    ((x - 0.125, 0.0), (x + 0.125, v(i)))
                })
                .collect()
        };
        let cases = &r.cases;
        bars(
            &mut chart,
            bar(-0.27, &|i| cases[i].speedup.p50).into_iter(),
            crate::chart::color(0),
            "measured (median)",
        )?;
        bars(
            &mut chart,
            bar(0.0, &|i| cases[i].ideal_speedup).into_iter(),
            crate::chart::color(1),
            "ideal (busiest rank's rows)",
        )?;
        bars(
            &mut chart,
            bar(0.27, &|i| cases[i].modelled_speedup).into_iter(),
            crate::chart::color(2),
            "modelled (slowest expert time + a2a at stated GB/s)",
        )?;
        chart.draw_series(cases.iter().enumerate().map(|(i, c)| {
            let x = i as f64 - 0.27;
            PathElement::new(
                vec![(x, c.speedup.min), (x, c.speedup.max)],
                BLACK.stroke_width(2),
            )
        }))?;
        Ok(())
    })
}

/// The x axis counts cases.
fn case_number(x: &f64) -> String {
    format!("{}", x.round() as i64)
}
