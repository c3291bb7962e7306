//! The NVML sampler thread (feature `telemetry`). Without the feature every [`Telemetry`] is
//! unavailable and says why.

use super::{summarize, Sample, TelemetryInfo, WindowSummary};
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
    nvml: Arc<nvml::Handle>,
    /// `device_by_uuid` key, else index 0.
    uuid: Option<String>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    name: Option<String>,
    power_limit_w: Option<f64>,
    energy_counter: bool,
}

impl Telemetry {
    /// Starts sampling the GPU whose CUDA UUID is `uuid` (NVML's
    /// `GPU-xxxxxxxx-...` spelling; index 0 when `None` or not found)
    /// every `period`. Never fails: without NVML it returns a telemetry
    /// that reports why it is unavailable.
    pub fn start(uuid: Option<String>, period: Duration) -> Self {
        let start = Instant::now();
        let nvml = match nvml::init() {
            Ok(n) => Arc::new(n),
            Err(e) => return Self::unavailable(e, period),
        };
        let (name, power_limit_w, energy_counter) = match nvml::describe(&nvml, &uuid) {
            Ok(d) => d,
            Err(e) => return Self::unavailable(format!("NVML has no such GPU: {e}"), period),
        };
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (nvml, uuid, samples, stop) =
                (nvml.clone(), uuid.clone(), samples.clone(), stop.clone());
            std::thread::Builder::new()
                .name("capmoe-nvml".into())
                .spawn(move || nvml::sample_loop(&nvml, &uuid, start, period, &samples, &stop))
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

    /// Whether NVML is sampling (false: [`unavailable`](Self::unavailable) or NVML failed to start).
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
        nvml::energy_mj(&l.nvml, &l.uuid)
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

/// The NVML calls, behind feature `telemetry`.
#[cfg(feature = "telemetry")]
mod nvml {
    use super::Sample;
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    use nvml_wrapper::{Device, Nvml};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    pub type Handle = Nvml;

    pub fn init() -> Result<Handle, String> {
        Nvml::init().map_err(|e| format!("NVML did not initialise: {e}"))
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

    /// Name, enforced power limit (W), and whether the energy counter exists.
    pub fn describe(
        nvml: &Nvml,
        uuid: &Option<String>,
    ) -> Result<(Option<String>, Option<f64>, bool), String> {
        let d = device(nvml, uuid)?;
        Ok((
            d.name().ok(),
            d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
            d.total_energy_consumption().is_ok(),
        ))
    }

    pub fn energy_mj(nvml: &Nvml, uuid: &Option<String>) -> Option<u64> {
        device(nvml, uuid).ok()?.total_energy_consumption().ok()
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

    /// The sampler thread's body: a sample every `period` until `stop`.
    pub fn sample_loop(
        nvml: &Nvml,
        uuid: &Option<String>,
        start: Instant,
        period: Duration,
        samples: &Mutex<Vec<Sample>>,
        stop: &AtomicBool,
    ) {
        let Ok(d) = device(nvml, uuid) else { return };
        while !stop.load(Ordering::Relaxed) {
            let s = read(&d, start.elapsed().as_secs_f64());
            if let Ok(mut v) = samples.lock() {
                v.push(s);
            }
            std::thread::sleep(period);
        }
    }
}

/// Without feature `telemetry`: no NVML, so no handle can exist.
#[cfg(not(feature = "telemetry"))]
mod nvml {
    use super::Sample;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Uninhabited: [`init`] never returns one.
    pub enum Handle {}

    pub fn init() -> Result<Handle, String> {
        Err("capmoe was built without the `telemetry` feature (NVML)".into())
    }

    pub fn describe(
        h: &Handle,
        _: &Option<String>,
    ) -> Result<(Option<String>, Option<f64>, bool), String> {
        match *h {}
    }

    pub fn energy_mj(h: &Handle, _: &Option<String>) -> Option<u64> {
        match *h {}
    }

    pub fn sample_loop(
        h: &Handle,
        _: &Option<String>,
        _: Instant,
        _: Duration,
        _: &Mutex<Vec<Sample>>,
        _: &AtomicBool,
    ) {
        match *h {}
    }
}
