//! GPU telemetry during the benchmark: a sampler thread reads NVML every
//! few milliseconds (utilisation, SM and memory clocks, power, temperature,
//! clock-event reasons, the energy counter), and [`summarize`] condenses the
//! samples of one measurement window.
//!
//! NVML is loaded at run time (`nvml-wrapper` opens `libnvidia-ml.so.1` with
//! libloading, feature `cuda`), so a host without it runs the benchmark all
//! the same: telemetry is then recorded as unavailable, with the reason,
//! never as an error.
//!
//! What NVML's numbers mean (and do not): `gpu_util` is the share of the
//! driver's last sample period (1/6 s to 1 s depending on the GPU) during
//! which at least one kernel ran, not how busy the SMs were; power is the
//! driver's (averaged) board power; the energy counter is the board's total
//! energy in mJ since the driver loaded, the most accurate energy source,
//! read directly at each window's edges. Sampling faster than the driver
//! updates only repeats values; the samples' count says how many there were.

use serde::Serialize;

/// One NVML reading. `t` is seconds since the telemetry started; a field
/// NVML could not read is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Sample {
    /// Seconds since the telemetry started.
    pub t: f64,
    /// NVML GPU utilisation: share of time a kernel ran, %.
    pub gpu_util_pct: Option<f64>,
    /// NVML memory utilisation: share of time device memory was read or written, %.
    pub mem_util_pct: Option<f64>,
    /// SM clock, MHz.
    pub sm_clock_mhz: Option<f64>,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Option<f64>,
    /// Board power draw, W.
    pub power_w: Option<f64>,
    /// GPU temperature, deg C.
    pub temp_c: Option<f64>,
    /// Total energy counter, mJ.
    pub energy_mj: Option<u64>,
    /// NVML clock-event (throttle) reason bits.
    pub throttle_bits: Option<u64>,
}

/// What one measurement window drew and ran at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    /// Window length, ms (host clock).
    pub window_ms: f64,
    /// Samples inside the window.
    pub samples: usize,
    /// NVML "GPU utilisation": share of time a kernel was running, %.
    pub gpu_util_mean_pct: Option<f64>,
    /// Largest GPU utilisation sample, %.
    pub gpu_util_max_pct: Option<f64>,
    /// Mean memory utilisation, %.
    pub mem_util_mean_pct: Option<f64>,
    /// Mean SM clock, MHz.
    pub sm_clock_mean_mhz: Option<f64>,
    /// Lowest SM clock, MHz (a throttling sign).
    pub sm_clock_min_mhz: Option<f64>,
    /// Mean memory clock, MHz.
    pub mem_clock_mean_mhz: Option<f64>,
    /// Mean power draw, W.
    pub power_mean_w: Option<f64>,
    /// Largest power sample, W.
    pub power_max_w: Option<f64>,
    /// Highest temperature, deg C.
    pub temp_max_c: Option<f64>,
    /// Energy over the window, J.
    pub energy_j: Option<f64>,
    /// "counter" (NVML total energy, read at the window's edges),
    /// "integrated power" (trapezoids over the samples) or "none".
    pub energy_source: String,
    /// Clock-event reasons seen in the window (names), e.g. "SW power cap".
    pub throttle: Vec<String>,
}

/// Names of the NVML clock-event reason bits (nvml.h's
/// `nvmlClocksEventReason*`).
pub fn throttle_names(bits: u64) -> Vec<String> {
    const NAMES: [(u64, &str); 9] = [
        (0x1, "GPU idle"),
        (0x2, "application clocks setting"),
        (0x4, "SW power cap"),
        (0x8, "HW slowdown"),
        (0x10, "sync boost"),
        (0x20, "SW thermal slowdown"),
        (0x40, "HW thermal slowdown"),
        (0x80, "HW power brake slowdown"),
        (0x100, "display clock setting"),
    ];
    NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

/// Integral of power over `[t0, t1]` (J) by trapezoids over the samples,
/// holding the first and last readings flat to the window's edges. `None`
/// without power readings.
pub fn integrate_power(samples: &[Sample], t0: f64, t1: f64) -> Option<f64> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.power_w.map(|p| (s.t, p)))
        .collect();
    if pts.is_empty() || t1 <= t0 {
        return None;
    }
    // Value at time t: linear between readings, flat outside them.
    let at = |t: f64| -> f64 {
        match pts.iter().position(|&(ts, _)| ts >= t) {
            None => pts[pts.len() - 1].1,
            Some(0) => pts[0].1,
            Some(i) => {
                let (ta, pa) = pts[i - 1];
                let (tb, pb) = pts[i];
                if tb > ta {
                    pa + (pb - pa) * (t - ta) / (tb - ta)
                } else {
                    pb
                }
            }
        }
    };
    let mut knots = vec![t0];
    knots.extend(pts.iter().map(|&(t, _)| t).filter(|&t| t > t0 && t < t1));
    knots.push(t1);
    Some(
        knots
            .windows(2)
            .map(|w| 0.5 * (at(w[0]) + at(w[1])) * (w[1] - w[0]))
            .sum(),
    )
}

/// Summarises the samples taken in `[t0, t1]` (seconds on the telemetry's
/// clock). `counter` is the energy counter (mJ) read at the two edges, when
/// NVML has one; otherwise power is integrated over the window.
pub fn summarize(
    samples: &[Sample],
    t0: f64,
    t1: f64,
    counter: Option<(u64, u64)>,
) -> WindowSummary {
    let inside: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t >= t0 && s.t <= t1)
        .collect();
    let col =
        |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> { inside.iter().filter_map(f).collect() };
    let util = col(&|s| s.gpu_util_pct);
    let mem = col(&|s| s.mem_util_pct);
    let sm = col(&|s| s.sm_clock_mhz);
    let mclk = col(&|s| s.mem_clock_mhz);
    let power = col(&|s| s.power_w);
    let temp = col(&|s| s.temp_c);
    let bits = inside
        .iter()
        .filter_map(|s| s.throttle_bits)
        .fold(0, |a, b| a | b);
    let (energy_j, energy_source) = match counter {
        Some((a, b)) if b >= a => (Some((b - a) as f64 / 1e3), "counter"),
        _ => {
            // Neighbours just outside the window help the interpolation.
            let near: Vec<Sample> = samples
                .iter()
                .copied()
                .filter(|s| s.t >= t0 - 0.05 && s.t <= t1 + 0.05)
                .collect();
            match integrate_power(&near, t0, t1) {
                Some(j) => (Some(j), "integrated power"),
                None => (None, "none"),
            }
        }
    };
    WindowSummary {
        window_ms: (t1 - t0).max(0.0) * 1e3,
        samples: inside.len(),
        gpu_util_mean_pct: mean(&util),
        gpu_util_max_pct: max(&util),
        mem_util_mean_pct: mean(&mem),
        sm_clock_mean_mhz: mean(&sm),
        sm_clock_min_mhz: min(&sm),
        mem_clock_mean_mhz: mean(&mclk),
        power_mean_w: mean(&power),
        power_max_w: max(&power),
        temp_max_c: max(&temp),
        energy_j,
        energy_source: energy_source.into(),
        throttle: throttle_names(bits),
    }
}

/// How telemetry went for the whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryInfo {
    /// Whether NVML started and found the device.
    pub available: bool,
    /// Why not, when unavailable.
    pub reason: Option<String>,
    /// Sampling period asked for, ms.
    pub period_ms: f64,
    /// Samples taken over the run.
    pub samples: usize,
    /// The NVML device's name and enforced power limit, W.
    pub device: Option<String>,
    /// The device's enforced power limit, W.
    pub power_limit_w: Option<f64>,
    /// Whether the total-energy counter could be read.
    pub energy_counter: bool,
    /// Median power while idle before the run, W (to judge the windows'
    /// idle gaps).
    pub idle_power_w: Option<f64>,
}

impl TelemetryInfo {
    /// Telemetry that could not start.
    pub fn unavailable(reason: impl Into<String>, period_ms: f64) -> Self {
        Self {
            available: false,
            reason: Some(reason.into()),
            period_ms,
            samples: 0,
            device: None,
            power_limit_w: None,
            energy_counter: false,
            idle_power_w: None,
        }
    }
}

#[cfg(feature = "cuda")]
pub use sampler::Telemetry;

#[cfg(feature = "cuda")]
mod sampler;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, p: f64) -> Sample {
        Sample {
            t,
            power_w: Some(p),
            gpu_util_pct: Some(100.0 * t),
            sm_clock_mhz: Some(1980.0 - t),
            ..Sample::default()
        }
    }

    #[test]
    fn constant_power_integrates_to_power_times_time() {
        let v = [s(0.0, 100.0), s(0.5, 100.0), s(1.0, 100.0)];
        assert!((integrate_power(&v, 0.2, 0.8).unwrap() - 60.0).abs() < 1e-9);
        // Flat beyond the readings.
        assert!((integrate_power(&v, -1.0, 2.0).unwrap() - 300.0).abs() < 1e-9);
        // A ramp 0 -> 200 W over 1 s: 100 J.
        let r = [s(0.0, 0.0), s(1.0, 200.0)];
        assert!((integrate_power(&r, 0.0, 1.0).unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(integrate_power(&[], 0.0, 1.0), None);
    }

    #[test]
    fn window_prefers_the_energy_counter() {
        let v = [s(0.0, 100.0), s(0.5, 300.0), s(1.0, 100.0)];
        let w = summarize(&v, 0.0, 1.0, Some((1_000, 251_000)));
        assert_eq!(w.energy_j, Some(250.0));
        assert_eq!(w.energy_source, "counter");
        assert_eq!(w.samples, 3);
        assert_eq!(w.power_max_w, Some(300.0));
        assert!((w.power_mean_w.unwrap() - 500.0 / 3.0).abs() < 1e-9);
        assert_eq!(w.sm_clock_min_mhz, Some(1979.0));
        let w = summarize(&v, 0.0, 1.0, None);
        assert_eq!(w.energy_source, "integrated power");
        assert!((w.energy_j.unwrap() - 200.0).abs() < 1e-9);
        // A counter that went backwards (driver reload) is not trusted.
        assert_eq!(
            summarize(&v, 0.0, 1.0, Some((5, 1))).energy_source,
            "integrated power"
        );
    }

    #[test]
    fn no_samples_means_no_numbers_not_an_error() {
        let w = summarize(&[], 0.0, 1.0, None);
        assert_eq!(w.samples, 0);
        assert_eq!(w.energy_j, None);
        assert_eq!(w.energy_source, "none");
        assert_eq!(w.gpu_util_mean_pct, None);
        let i = TelemetryInfo::unavailable("no NVML", 10.0);
        assert!(!i.available);
        assert_eq!(i.reason.as_deref(), Some("no NVML"));
        let j = serde_json::to_value(&i).unwrap();
        assert_eq!(j["available"], false);
    }

    #[test]
    fn throttle_bits_have_names() {
        assert_eq!(
            throttle_names(0x4 | 0x40),
            vec!["SW power cap", "HW thermal slowdown"]
        );
        assert!(throttle_names(0).is_empty());
    }
}
