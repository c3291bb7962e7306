//! The autotuner's host side: which grouped-GEMM variant to run for a
//! problem, remembered across runs in a JSON file.
//!
//! A problem is keyed by the GPU architecture, the expert count, the GEMM's
//! `n` and `k`, and a power-of-two bucket of the token count `T` (not of the
//! rows per expert: `T` is what a caller knows before routing, and with
//! balanced routing the rows per expert scale with it). Timing a variant is
//! the caller's job (a closure), so all of this runs and is tested without a
//! GPU.

use super::variants::{Variant, VARIANTS};
use super::ExpertError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest token bucket; larger batches share it.
pub const MAX_BUCKET: usize = 65536;

/// The crate version the cache file is written by (entries from another
/// version are not trusted: kernels may have changed).
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Environment variable naming the cache file itself.
pub const CACHE_ENV: &str = "CAPMOE_TUNE_CACHE";

/// The bucket of `tokens` (the batch's token count `T`): the next power of
/// two, at least 1, at most [`MAX_BUCKET`].
///
/// ```
/// use capmoe::expert::tune::token_bucket;
/// assert_eq!([0, 1, 3, 64, 65, 100_000].map(token_bucket), [1, 1, 4, 64, 128, 65536]);
/// ```
pub fn token_bucket(tokens: usize) -> usize {
    // Clamp first: next_power_of_two overflows near usize::MAX.
    tokens.clamp(1, MAX_BUCKET).next_power_of_two()
}

/// What a tuning result is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TuneKey {
    /// `sm{major}{minor}` of the GPU, e.g. "sm90".
    pub arch: String,
    /// Experts in the grouped GEMM.
    pub experts: usize,
    /// GEMM output columns (2I for GEMM1, H for GEMM2).
    pub n: usize,
    /// GEMM reduction length (H for GEMM1, I for GEMM2).
    pub k: usize,
    /// [`token_bucket`] of the token count.
    pub bucket: usize,
}

impl TuneKey {
    /// The key of a GEMM of `n x k` over `experts` experts for `tokens`
    /// tokens on a GPU of compute capability `major.minor`.
    ///
    /// ```
    /// use capmoe::expert::tune::TuneKey;
    /// let k = TuneKey::new(9, 0, 8, 28672, 4096, 3000);
    /// assert_eq!((k.arch.as_str(), k.bucket), ("sm90", 4096));
    /// ```
    pub fn new(major: u32, minor: u32, experts: usize, n: usize, k: usize, tokens: usize) -> Self {
        Self {
            arch: arch_name(major, minor),
            experts,
            n,
            k,
            bucket: token_bucket(tokens),
        }
    }
}

impl fmt::Display for TuneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} E={} n={} k={} T-bucket={}",
            self.arch, self.experts, self.n, self.k, self.bucket
        )
    }
}

/// `sm{major}{minor}`, e.g. "sm90" for compute capability 9.0.
pub fn arch_name(major: u32, minor: u32) -> String {
    format!("sm{major}{minor}")
}

/// One remembered choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// What the entry is valid for.
    #[serde(flatten)]
    pub key: TuneKey,
    /// Name of the fastest variant.
    pub variant: String,
    /// Its time, microseconds.
    pub micros: f64,
    /// Every candidate that ran: name -> microseconds.
    pub timings: BTreeMap<String, f64>,
    /// Candidates whose timing failed: name -> the error.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, String>,
}

/// The file's form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheFile {
    gpu: String,
    crate_version: String,
    entries: Vec<TuneEntry>,
}

/// The outcome of [`TuneCache::choose`].
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The chosen variant.
    pub variant: &'static Variant,
    /// Its time in microseconds (from the cache when `cached`).
    pub micros: f64,
    /// Whether the cache answered (nothing was timed).
    pub cached: bool,
}

/// Tuning results for one GPU and crate version, backed by a JSON file.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneCache {
    /// `None`: kept in memory only (no cache directory).
    path: Option<PathBuf>,
    gpu: String,
    entries: BTreeMap<TuneKey, TuneEntry>,
    ignored: Option<String>,
}

/// A file-name-safe form of a GPU name: lowercase ASCII letters and digits,
/// runs of anything else as one `-` ("NVIDIA H200" -> "nvidia-h200").
pub fn gpu_slug(gpu: &str) -> String {
    let mut s = String::new();
    for c in gpu.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() {
        s.push_str("unknown-gpu");
    }
    s
}

/// The cache file for `gpu`, looking variables up with `var`:
/// `CAPMOE_TUNE_CACHE` (the file itself), else
/// `$XDG_CACHE_HOME/capmoe/tune-<gpu slug>-<crate version>.json`, else the
/// same under `$HOME/.cache/capmoe/`. Empty variables count as unset.
pub fn resolve_path(
    var: impl Fn(&str) -> Option<OsString>,
    gpu: &str,
) -> Result<PathBuf, ExpertError> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty());
    if let Some(p) = get(CACHE_ENV) {
        return Ok(PathBuf::from(p));
    }
    let dir = match (get("XDG_CACHE_HOME"), get("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => Path::new(&h).join(".cache"),
        (None, None) => return Err(ExpertError::NoCacheDir),
    };
    Ok(dir
        .join("capmoe")
        .join(format!("tune-{}-{CRATE_VERSION}.json", gpu_slug(gpu))))
}

impl TuneCache {
    /// An empty cache that [`save`](Self::save)s to `path`.
    pub fn empty(path: impl Into<PathBuf>, gpu: &str) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::in_memory(gpu)
        }
    }

    /// An empty cache with no file: [`save`](Self::save) does nothing.
    pub fn in_memory(gpu: &str) -> Self {
        Self {
            path: None,
            gpu: gpu.to_string(),
            entries: BTreeMap::new(),
            ignored: None,
        }
    }

    /// Reads the cache at `path`. A missing file is an empty cache; a file
    /// written for another GPU or crate version is ignored (empty cache,
    /// [`ignored`](Self::ignored) says why) and replaced on the next save; a
    /// file that does not parse is an error naming it.
    pub fn load(path: impl Into<PathBuf>, gpu: &str) -> Result<Self, ExpertError> {
        let path = path.into();
        let mut cache = Self::empty(path.clone(), gpu);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cache),
            Err(e) => return Err(io_err(&path, "read", e)),
        };
        let file: CacheFile =
            serde_json::from_str(&text).map_err(|e| ExpertError::CacheCorrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if file.gpu != gpu || file.crate_version != CRATE_VERSION {
            cache.ignored = Some(format!(
                "tune cache {} was written for gpu `{}` by capmoe {}; this is gpu `{gpu}` and capmoe {CRATE_VERSION}, so it is ignored and will be overwritten",
                path.display(),
                file.gpu,
                file.crate_version
            ));
            return Ok(cache);
        }
        cache.entries = file
            .entries
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        Ok(cache)
    }

    /// Writes the cache: to a temporary file next to it, then renamed over
    /// it, so a reader never sees half a file. Creates the directory. Does
    /// nothing for an [`in_memory`](Self::in_memory) cache.
    pub fn save(&self) -> Result<(), ExpertError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create directory", e))?;
        }
        let file = CacheFile {
            gpu: self.gpu.clone(),
            crate_version: CRATE_VERSION.to_string(),
            entries: self.entries.values().cloned().collect(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| ExpertError::CacheIo {
            path: path.clone(),
            op: "serialize",
            reason: e.to_string(),
        })?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text + "\n").map_err(|e| io_err(&tmp, "write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(path, "rename into place", e)
        })
    }

    /// The file, or `None` for an in-memory cache.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// The GPU name the cache is for.
    pub fn gpu(&self) -> &str {
        &self.gpu
    }
    /// Why the file on disk was not used, if it was not.
    pub fn ignored(&self) -> Option<&str> {
        self.ignored.as_deref()
    }
    /// The entry for `key`, if one was tuned.
    pub fn get(&self, key: &TuneKey) -> Option<&TuneEntry> {
        self.entries.get(key)
    }
    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &TuneEntry> {
        self.entries.values()
    }
    /// Records (or replaces) an entry.
    pub fn insert(&mut self, entry: TuneEntry) {
        self.entries.insert(entry.key.clone(), entry);
    }
    /// Forgets `key` (so that [`choose`](Self::choose) times it again).
    pub fn remove(&mut self, key: &TuneKey) -> Option<TuneEntry> {
        self.entries.remove(key)
    }

    /// The variant to run for `key` among `candidates`.
    ///
    /// A cached choice is used when its variant is one of the candidates.
    /// Otherwise every candidate is timed with `time` (microseconds); one
    /// whose timing fails (or is not a finite, non-negative number) is
    /// skipped and recorded in the entry's `failures`. The fastest wins;
    /// ties go to the variant earlier in [`VARIANTS`], so the choice is
    /// deterministic. The result is recorded in the cache (in memory:
    /// [`save`](Self::save) writes it). No candidates, or all failing, is an
    /// error.
    pub fn choose<E>(
        &mut self,
        key: &TuneKey,
        candidates: &[&'static Variant],
        mut time: impl FnMut(&Variant) -> Result<f64, E>,
    ) -> Result<Choice, E>
    where
        E: From<ExpertError> + fmt::Display,
    {
        if candidates.is_empty() {
            return Err(ExpertError::NoCandidates {
                key: key.to_string(),
            }
            .into());
        }
        if let Some(e) = self.entries.get(key) {
            if let Some(v) = candidates.iter().find(|v| v.name == e.variant) {
                return Ok(Choice {
                    variant: v,
                    micros: e.micros,
                    cached: true,
                });
            }
        }
        let mut order: Vec<&'static Variant> = candidates.to_vec();
        order.sort_by_key(|v| rank(v));
        order.dedup_by_key(|v| v.name);
        let mut timings = BTreeMap::new();
        let mut failures = BTreeMap::new();
        let mut best: Option<(&'static Variant, f64)> = None;
        for v in order {
            let t = time(v).and_then(|t| {
                if t.is_finite() && t >= 0.0 {
                    Ok(t)
                } else {
                    Err(ExpertError::BadTiming {
                        variant: v.name,
                        micros: t,
                    }
                    .into())
                }
            });
            match t {
                Ok(t) => {
                    timings.insert(v.name.to_string(), t);
                    // Strictly faster only: ties keep the earlier variant.
                    if best.is_none_or(|(_, b)| t < b) {
                        best = Some((v, t));
                    }
                }
                Err(e) => {
                    failures.insert(v.name.to_string(), e.to_string());
                }
            }
        }
        let Some((variant, micros)) = best else {
            let failures = failures
                .iter()
                .map(|(n, e)| format!("{n}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ExpertError::AllCandidatesFailed {
                key: key.to_string(),
                failures,
            }
            .into());
        };
        self.insert(TuneEntry {
            key: key.clone(),
            variant: variant.name.to_string(),
            micros,
            timings,
            failures,
        });
        Ok(Choice {
            variant,
            micros,
            cached: false,
        })
    }
}

/// Position in [`VARIANTS`] (variants outside it sort after, by name).
fn rank(v: &Variant) -> (usize, &'static str) {
    let i = VARIANTS
        .iter()
        .position(|x| x.name == v.name)
        .unwrap_or(usize::MAX);
    (i, v.name)
}

fn io_err(path: &Path, op: &'static str, e: std::io::Error) -> ExpertError {
    ExpertError::CacheIo {
        path: path.to_path_buf(),
        op,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
