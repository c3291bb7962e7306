//! Safetensors checkpoints: one `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; f32 tensors are
//! used in place from the mapping, bf16/f16 tensors are converted to f32 once.
//!
//! Hostile checkpoints: JSON (index and safetensors headers) may not repeat
//! a key; the index must map every tensor of its shards, each to the shard
//! that holds it; [`WeightFiles::check`] compares names, shapes and dtypes
//! with the config before anything is converted; a weight holding NaN or
//! Inf is refused by [`WeightFiles::take`], named, in the same pass that
//! converts it (one scan of the mapping for f32).

use super::{names, MixtralConfig};
use crate::backend::HostTensor;
use crate::io::file::read_regular_text;
use crate::io::json::{parse_strict, parse_strict_slice};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod convert;
mod error;
use convert::{convert, first_non_finite_f32, unravel};
pub use error::WeightError;

/// Largest `model.safetensors.index.json` read, in bytes.
const MAX_INDEX_BYTES: u64 = 64 << 20;

struct Entry {
    map: Arc<Mmap>,
    file: Arc<PathBuf>,
    offset: usize,
    bytes: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// The tensors of a checkpoint, by name, not yet taken by the model.
pub struct WeightFiles {
    entries: HashMap<String, Entry>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WeightError + '_ {
    move |source| WeightError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl WeightFiles {
    /// Opens `path`: a directory holding `model.safetensors.index.json` (the
    /// shards it lists) or `model.safetensors`, or a single `.safetensors`
    /// file. Headers are parsed and sizes checked now; data is mapped, not read.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        if path.is_file() {
            return Self::open_files(&[path.to_path_buf()]);
        }
        let index = path.join("model.safetensors.index.json");
        let single = path.join("model.safetensors");
        if index.is_file() {
            Self::open_index(path, &index)
        } else if single.is_file() {
            Self::open_files(&[single])
        } else {
            Err(WeightError::NoWeights(path.display().to_string()))
        }
    }

    /// The shards of `index` (in `dir`), checked against its `weight_map`
    /// both ways: every mapped tensor is in the shard it is mapped to, and
    /// every tensor of a shard is mapped.
    fn open_index(dir: &Path, index: &Path) -> Result<Self, WeightError> {
        let text = read_regular_text(index, MAX_INDEX_BYTES).map_err(io_err(index))?;
        let bad = |msg: String| WeightError::Index {
            path: index.display().to_string(),
            msg,
        };
        let v = parse_strict(&text).map_err(|e| bad(e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                bad(
                    "no `weight_map` object; expected {\"weight_map\": {tensor: shard file}}"
                        .into(),
                )
            })?;
        if map.is_empty() {
            return Err(bad(
                "`weight_map` is empty; expected every tensor mapped to its shard".into(),
            ));
        }
        let mut shards: Vec<&str> = Vec::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| {
                bad(format!(
                    "weight_map[{name}] is {f}; expected a shard file name"
                ))
            })?;
            if f.is_empty() || f == "." || f == ".." || f.contains(['/', '\\', '\0']) {
                return Err(bad(format!(
                    "shard name `{f}` (of `{name}`) must be a plain file name in the checkpoint directory"
                )));
            }
            shards.push(f);
        }
        shards.sort_unstable();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let me = Self::open_files(&files)?;
        for (name, f) in map {
            let file = dir.join(f.as_str().unwrap_or_default());
            match me.entries.get(name) {
                Some(e) if *e.file == file => {}
                Some(e) => {
                    return Err(bad(format!(
                        "`{name}` is mapped to {} but found in {}",
                        file.display(),
                        e.file.display()
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "`{name}` is mapped to {} but is not in it",
                        file.display()
                    )))
                }
            }
        }
        if me.entries.len() != map.len() {
            let mut unmapped: Vec<String> = me
                .entries
                .iter()
                .filter(|(n, _)| !map.contains_key(*n))
                .map(|(n, e)| format!("`{n}` (in {})", e.file.display()))
                .collect();
            unmapped.sort();
            return Err(bad(format!(
                "{} tensor(s) of the shards are not in `weight_map`: {}; expected the index to map every tensor",
                unmapped.len(),
                unmapped.join(", ")
            )));
        }
        Ok(me)
    }

    fn open_files(files: &[PathBuf]) -> Result<Self, WeightError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for path in files {
            // A FIFO would block the open, a device would map nothing useful.
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            if !meta.is_file() {
                return Err(WeightError::Io {
                    path: path.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a regular file; expected a safetensors file",
                    ),
                });
            }
            let file = std::fs::File::open(path).map_err(io_err(path))?;
            // SAFETY: the mapping is read-only; like every mmap-based loader
            // we rely on the checkpoint not being modified while the model
            // is alive.
            let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?);
            let corrupt = |source| WeightError::Safetensors {
                path: path.display().to_string(),
                source,
            };
            let st = SafeTensors::deserialize(&map).map_err(corrupt)?;
            check_header_keys(&map, path)?;
            let fname = Arc::new(path.clone());
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let entry = Entry {
                    map: map.clone(),
                    file: fname.clone(),
                    offset: view.data().as_ptr() as usize - base,
                    bytes: view.data().len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                };
                if let Some(prev) = entries.get(&name) {
                    return Err(WeightError::Duplicate {
                        name,
                        first: prev.file.display().to_string(),
                        second: path.display().to_string(),
                    });
                }
                entries.insert(name, entry);
            }
        }
        Ok(Self { entries })
    }

    /// Checks, before anything is converted or allocated, that the tensors
    /// are exactly those of a `cfg` checkpoint: each present with its shape
    /// and a supported dtype (F32, BF16, F16), and no others.
    pub fn check(&self, cfg: &MixtralConfig) -> Result<(), WeightError> {
        let mut seen = 0usize;
        names::visit_expected(cfg, &mut |name, shape| {
            let e = self.entries.get(name).ok_or_else(|| WeightError::Missing {
                name: name.to_string(),
                expected: shape.to_vec(),
            })?;
            if e.shape != shape {
                return Err(WeightError::Shape {
                    name: name.to_string(),
                    found: e.shape.clone(),
                    expected: shape.to_vec(),
                });
            }
            if !matches!(e.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                return Err(WeightError::Dtype {
                    name: name.to_string(),
                    dtype: format!("{:?}", e.dtype),
                });
            }
            seen += 1;
            Ok(())
        })?;
        if seen != self.entries.len() {
            // Every expected tensor was found, so this list is no longer
            // than the checkpoint's own.
            let expected: std::collections::HashSet<String> =
                names::expected(cfg).into_iter().map(|(n, _)| n).collect();
            let mut extra = self.names();
            extra.retain(|n| !expected.contains(n));
            return Err(WeightError::Extra { names: extra });
        }
        Ok(())
    }

    /// Names not taken yet, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether `name` is present (and not taken yet).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Takes tensor `name`, checking its shape: f32 in place, bf16/f16
    /// converted to f32.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, WeightError> {
        let e = self
            .entries
            .remove(name)
            .ok_or_else(|| WeightError::Missing {
                name: name.to_string(),
                expected: expected.to_vec(),
            })?;
        if e.shape != expected {
            return Err(WeightError::Shape {
                name: name.to_string(),
                found: e.shape,
                expected: expected.to_vec(),
            });
        }
        let width = match e.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => {
                return Err(WeightError::Dtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let n = expected
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| n.checked_mul(width) == Some(e.bytes))
            .ok_or_else(|| WeightError::DataSize {
                name: name.to_string(),
                bytes: e.bytes,
                expected: expected
                    .iter()
                    .try_fold(width, |a, &d| a.checked_mul(d))
                    .unwrap_or(usize::MAX),
            })?;
        let bytes = &e.map[e.offset..e.offset + e.bytes];
        let shape = expected.to_vec();
        let (tensor, bad) = match e.dtype {
            Dtype::F32 => (
                HostTensor::mapped(name, shape, e.map.clone(), e.offset, n),
                first_non_finite_f32(bytes),
            ),
            Dtype::BF16 => {
                let (v, bad) = convert(bytes, |b| half::bf16::from_bits(b).to_f32());
                (HostTensor::owned(name, shape, v), bad)
            }
            _ => {
                let (v, bad) = convert(bytes, |b| half::f16::from_bits(b).to_f32());
                (HostTensor::owned(name, shape, v), bad)
            }
        };
        match bad {
            None => Ok(tensor),
            Some(i) => Err(WeightError::NonFinite {
                name: name.to_string(),
                index: unravel(i, expected),
                value: tensor.data()[i],
            }),
        }
    }

    /// Drops tensor `name` without reading it (an expert another EP rank
    /// holds); whether it was there.
    pub fn discard(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Fails naming every tensor that was never taken.
    pub fn finish(self) -> Result<(), WeightError> {
        if self.entries.is_empty() {
            Ok(())
        } else {
            Err(WeightError::Extra {
                names: self.names(),
            })
        }
    }

    /// Dtype name counts (e.g. `{"BF16": 99}`), for reports.
    pub fn dtypes(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.entries.values() {
            *m.entry(format!("{:?}", e.dtype)).or_insert(0) += 1;
        }
        m
    }
}

/// Refuses a safetensors header that repeats a key (the parser keeps the
/// last of two equal tensor names). The header's bounds were checked by
/// [`SafeTensors::deserialize`].
fn check_header_keys(map: &[u8], path: &Path) -> Result<(), WeightError> {
    let n = map
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    let header = map.get(8..8usize.saturating_add(n)).unwrap_or_default();
    parse_strict_slice(header)
        .map(drop)
        .map_err(|e| WeightError::Index {
            path: path.display().to_string(),
            msg: format!("the safetensors header is not strict JSON: {e}"),
        })
}
