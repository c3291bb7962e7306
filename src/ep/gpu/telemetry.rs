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
    pub t: f64,
    pub gpu_util_pct: Option<f64>,
    pub mem_util_pct: Option<f64>,
    pub sm_clock_mhz: Option<f64>,
    pub mem_clock_mhz: Option<f64>,
    pub power_w: Option<f64>,
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
    pub gpu_util_max_pct: Option<f64>,
    pub mem_util_mean_pct: Option<f64>,
    pub sm_clock_mean_mhz: Option<f64>,
    pub sm_clock_min_mhz: Option<f64>,
    pub mem_clock_mean_mhz: Option<f64>,
    pub power_mean_w: Option<f64>,
    pub power_max_w: Option<f64>,
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
    pub available: bool,
    /// Why not, when unavailable.
    pub reason: Option<String>,
    /// Sampling period asked for, ms.
    pub period_ms: f64,
    /// Samples taken over the run.
    pub samples: usize,
    /// The NVML device's name and enforced power limit, W.
    pub device: Option<String>,
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
mod sampler {
    use super::{summarize, Sample, TelemetryInfo, WindowSummary};
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    use nvml_wrapper::{Device, Nvml};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// The running sampler, or the reason there is none.
    pub struct Telemetry {
        start: Instant,
        period: Duration,
        live: Option<Live>,
        reason: Option<String>,
        idle_power_w: Option<f64>,
    }

    struct Live {
        nvml: Arc<Nvml>,
        /// `device_by_uuid` key, else index 0.
        uuid: Option<String>,
        samples: Arc<Mutex<Vec<Sample>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
        name: Option<String>,
        power_limit_w: Option<f64>,
        energy_counter: bool,
    }

    fn device<'a>(nvml: &'a Nvml, uuid: &Option<String>) -> Result<Device<'a>, String> {
        match uuid {
            Some(u) => nvml
                .device_by_uuid(u.as_str())
                .or_else(|_| nvml.device_by_index(0))
                .map_err(|e| e.to_string()),
            None => nvml.device_by_index(0).map_err(|e| e.to_string()),
        }
    }

    fn read(d: &Device<'_>, t: f64) -> Sample {
        let util = d.utilization_rates().ok();
        Sample {
            t,
            gpu_util_pct: util.as_ref().map(|u| f64::from(u.gpu)),
            mem_util_pct: util.as_ref().map(|u| f64::from(u.memory)),
            sm_clock_mhz: d.clock_info(Clock::SM).ok().map(f64::from),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok().map(f64::from),
            power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1e3),
            temp_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            energy_mj: d.total_energy_consumption().ok(),
            throttle_bits: d.current_throttle_reasons().ok().map(|r| r.bits()),
        }
    }

    impl Telemetry {
        /// Starts sampling the GPU whose CUDA UUID is `uuid` (NVML's
        /// `GPU-xxxxxxxx-...` spelling; index 0 when `None` or not found)
        /// every `period`. Never fails: without NVML it returns a telemetry
        /// that reports why it is unavailable.
        pub fn start(uuid: Option<String>, period: Duration) -> Self {
            let start = Instant::now();
            let nvml = match Nvml::init() {
                Ok(n) => Arc::new(n),
                Err(e) => {
                    return Self::unavailable(format!("NVML did not initialise: {e}"), period)
                }
            };
            let (name, power_limit_w, energy_counter) = match device(&nvml, &uuid) {
                Ok(d) => (
                    d.name().ok(),
                    d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
                    d.total_energy_consumption().is_ok(),
                ),
                Err(e) => return Self::unavailable(format!("NVML has no such GPU: {e}"), period),
            };
            let samples = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let handle = {
                let (nvml, uuid, samples, stop) =
                    (nvml.clone(), uuid.clone(), samples.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("capmoe-nvml".into())
                    .spawn(move || {
                        let Ok(d) = device(&nvml, &uuid) else { return };
                        while !stop.load(Ordering::Relaxed) {
                            let s = read(&d, start.elapsed().as_secs_f64());
                            if let Ok(mut v) = samples.lock() {
                                v.push(s);
                            }
                            std::thread::sleep(period);
                        }
                    })
                    .ok()
            };
            if handle.is_none() {
                return Self::unavailable("cannot spawn the NVML sampler thread", period);
            }
            Self {
                start,
                period,
                live: Some(Live {
                    nvml,
                    uuid,
                    samples,
                    stop,
                    handle,
                    name,
                    power_limit_w,
                    energy_counter,
                }),
                reason: None,
                idle_power_w: None,
            }
        }

        /// A telemetry that records nothing, with the reason.
        pub fn unavailable(reason: impl Into<String>, period: Duration) -> Self {
            Self {
                start: Instant::now(),
                period,
                live: None,
                reason: Some(reason.into()),
                idle_power_w: None,
            }
        }

        pub fn available(&self) -> bool {
            self.live.is_some()
        }

        /// Seconds on the telemetry's clock.
        pub fn now(&self) -> f64 {
            self.start.elapsed().as_secs_f64()
        }

        /// The energy counter now, mJ (`None` without NVML or a counter).
        pub fn energy_mj(&self) -> Option<u64> {
            let l = self.live.as_ref()?;
            if !l.energy_counter {
                return None;
            }
            device(&l.nvml, &l.uuid)
                .ok()?
                .total_energy_consumption()
                .ok()
        }

        /// Measures idle power: waits `dur` with the GPU idle and keeps the
        /// median power of the samples.
        pub fn measure_idle(&mut self, dur: Duration) {
            if self.live.is_none() {
                return;
            }
            let t0 = self.now();
            std::thread::sleep(dur);
            let t1 = self.now();
            let mut p: Vec<f64> = self
                .samples()
                .iter()
                .filter(|s| s.t >= t0 && s.t <= t1)
                .filter_map(|s| s.power_w)
                .collect();
            p.sort_by(f64::total_cmp);
            self.idle_power_w = p.get(p.len() / 2).copied();
        }

        /// A copy of every sample so far.
        pub fn samples(&self) -> Vec<Sample> {
            self.live
                .as_ref()
                .and_then(|l| l.samples.lock().ok().map(|v| v.clone()))
                .unwrap_or_default()
        }

        /// Summary of `[t0, t1]`; `e0`/`e1` are [`Telemetry::energy_mj`] read
        /// at the edges. `None` without NVML.
        pub fn window(
            &self,
            t0: f64,
            t1: f64,
            e0: Option<u64>,
            e1: Option<u64>,
        ) -> Option<WindowSummary> {
            self.live.as_ref()?;
            Some(summarize(&self.samples(), t0, t1, e0.zip(e1)))
        }

        /// What the report says about telemetry.
        pub fn info(&self) -> TelemetryInfo {
            let period_ms = self.period.as_secs_f64() * 1e3;
            match &self.live {
                None => TelemetryInfo::unavailable(
                    self.reason.clone().unwrap_or_else(|| "not started".into()),
                    period_ms,
                ),
                Some(l) => TelemetryInfo {
                    available: true,
                    reason: None,
                    period_ms,
                    samples: self.samples().len(),
                    device: l.name.clone(),
                    power_limit_w: l.power_limit_w,
                    energy_counter: l.energy_counter,
                    idle_power_w: self.idle_power_w,
                },
            }
        }
    }

    impl Drop for Telemetry {
        fn drop(&mut self) {
            if let Some(l) = &mut self.live {
                l.stop.store(true, Ordering::Relaxed);
                if let Some(h) = l.handle.take() {
                    let _ = h.join();
                }
            }
        }
    }
}

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
