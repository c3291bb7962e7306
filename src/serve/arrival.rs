//! Request arrivals: a seeded Poisson or gamma process, or a replayed trace file.
//!
//! Trace format (one arrival a line, in order of arrival; blank lines skipped):
//!
//! - JSON lines: `{"arrival_s": 0.25, "request": 3}`, or
//! - CSV: `0.25,3`, with an optional first line `arrival_s,request`.
//!
//! A file whose first non-blank line starts with `{` is JSON lines, any other CSV.
//! `arrival_s` is seconds from the start of the run (finite, `0 ..= MAX_ARRIVAL_S`,
//! non-decreasing down the file); `request` is the index of the prompt served (checked
//! against the pool by [`super::requests`]). At most [`super::MAX_REQUESTS`] lines.

use super::error::ServeError;
use super::MAX_REQUESTS;
use crate::routing::numerics::splitmix64;
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// The largest request rate accepted, requests per second.
pub const MAX_RATE: f64 = 1e6;
/// The gamma process's shape bounds (`gamma:SHAPE`): 1 is Poisson, below 1 burstier.
pub const GAMMA_SHAPE_RANGE: (f64, f64) = (0.01, 100.0);
/// The latest arrival a trace may hold, seconds.
pub const MAX_ARRIVAL_S: f64 = 1e9;

/// How inter-arrival gaps are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalProcess {
    /// Exponential gaps (a Poisson process).
    Poisson,
    /// Gamma gaps of this shape, scaled so the mean gap is `1 / rate` (coefficient of
    /// variation `1 / sqrt(shape)`).
    Gamma(f64),
}

impl FromStr for ArrivalProcess {
    type Err = ServeError;
    fn from_str(s: &str) -> Result<Self, ServeError> {
        let bad = || ServeError::OutOfRange {
            what: "arrival process",
            value: s.to_string(),
            expected: format!(
                "poisson or gamma:SHAPE with SHAPE in [{}, {}]",
                GAMMA_SHAPE_RANGE.0, GAMMA_SHAPE_RANGE.1
            ),
        };
        match s.split_once(':') {
            None if s == "poisson" => Ok(Self::Poisson),
            Some(("gamma", k)) => {
                let k: f64 = k.parse().map_err(|_| bad())?;
                if !(GAMMA_SHAPE_RANGE.0..=GAMMA_SHAPE_RANGE.1).contains(&k) {
                    return Err(bad());
                }
                Ok(Self::Gamma(k))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ArrivalProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Poisson => write!(f, "poisson"),
            Self::Gamma(k) => write!(f, "gamma:{k}"),
        }
    }
}

/// A seeded stream of uniform numbers (SplitMix64 over a counter).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.state)
    }

    /// Uniform in `(0, 1]` (never 0, so its logarithm is finite).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A Gamma(`shape`, 1) draw (Marsaglia-Tsang; shapes below 1 boosted by `U^(1/shape)`).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform().powf(1.0 / shape);
            return self.gamma(shape + 1.0) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// Checks a rate: finite, positive, at most [`MAX_RATE`].
pub fn check_rate(rate: f64) -> Result<(), ServeError> {
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
        return Err(ServeError::OutOfRange {
            what: "request rate (req/s)",
            value: rate.to_string(),
            expected: format!("a finite number in (0, {MAX_RATE}]"),
        });
    }
    Ok(())
}

/// `n` arrival times (seconds, non-decreasing, the first one gap after 0) of `process` at
/// `rate` requests per second, the same for the same seed.
pub fn arrival_times(
    n: usize,
    rate: f64,
    process: ArrivalProcess,
    seed: u64,
) -> Result<Vec<f64>, ServeError> {
    super::error::check_count("requests", n, 1, MAX_REQUESTS)?;
    check_rate(rate)?;
    if let ArrivalProcess::Gamma(k) = process {
        if !(GAMMA_SHAPE_RANGE.0..=GAMMA_SHAPE_RANGE.1).contains(&k) {
            return Err(ServeError::OutOfRange {
                what: "gamma shape",
                value: k.to_string(),
                expected: format!("in [{}, {}]", GAMMA_SHAPE_RANGE.0, GAMMA_SHAPE_RANGE.1),
            });
        }
    }
    let mut rng = Rng::new(seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let gap = match process {
            ArrivalProcess::Poisson => -rng.uniform().ln() / rate,
            ArrivalProcess::Gamma(k) => rng.gamma(k) / (k * rate),
        };
        t += gap;
        out.push(t);
    }
    Ok(out)
}

/// One line of an arrival trace.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceEntry {
    /// Seconds from the start of the run.
    pub arrival_s: f64,
    /// Index of the prompt served.
    pub request: usize,
}

fn parse_csv(line: &str) -> Result<TraceEntry, String> {
    let mut cells = line.split(',').map(str::trim);
    let (Some(t), Some(r), None) = (cells.next(), cells.next(), cells.next()) else {
        return Err("expected two cells, `arrival_s,request`".into());
    };
    let arrival_s = t
        .parse()
        .map_err(|_| format!("arrival `{t}` is not a number"))?;
    let request = r
        .parse()
        .map_err(|_| format!("request `{r}` is not a non-negative integer"))?;
    Ok(TraceEntry { arrival_s, request })
}

/// Parses a trace (format in the module docs).
pub fn parse_trace(text: &str) -> Result<Vec<TraceEntry>, ServeError> {
    let json = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('{'));
    let mut out: Vec<TraceEntry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (!json && out.is_empty() && line == "arrival_s,request") {
            continue;
        }
        let bad = |msg: String| ServeError::Trace { line: n + 1, msg };
        if out.len() == MAX_REQUESTS {
            return Err(bad(format!("more than {MAX_REQUESTS} arrivals")));
        }
        let e = if json {
            serde_json::from_str::<TraceEntry>(line).map_err(|e| bad(e.to_string()))?
        } else {
            parse_csv(line).map_err(bad)?
        };
        if !(e.arrival_s.is_finite() && (0.0..=MAX_ARRIVAL_S).contains(&e.arrival_s)) {
            return Err(bad(format!(
                "arrival {} s is not in [0, {MAX_ARRIVAL_S}]",
                e.arrival_s
            )));
        }
        if let Some(prev) = out.last() {
            if e.arrival_s < prev.arrival_s {
                return Err(bad(format!(
                    "arrival {} s is before the previous line's {} s; a trace lists arrivals in order",
                    e.arrival_s, prev.arrival_s
                )));
            }
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err(ServeError::Empty(
            "the arrival trace holds no arrivals; expected at least one line".into(),
        ));
    }
    Ok(out)
}
