//! Safetensors checkpoints: one `model.safetensors`, or the shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; f32 tensors are
//! used in place from the mapping, bf16/f16 tensors are converted to f32 once.

use crate::backend::HostTensor;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Errors reading a checkpoint.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WeightError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file (truncated or corrupt?): {source}")]
    Safetensors {
        path: String,
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: {msg}")]
    Index { path: String, msg: String },
    #[error("no weights in {0}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights(String),
    #[error("tensor `{name}` is missing from the checkpoint (expected shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; expected F32, BF16 or F16")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` appears in both {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("the checkpoint has {} tensor(s) a Mixtral model does not use: {}", names.len(), names.join(", "))]
    Extra { names: Vec<String> },
}

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
        let mut files = Vec::new();
        if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            if index.is_file() {
                let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
                let bad = |msg: String| WeightError::Index {
                    path: index.display().to_string(),
                    msg,
                };
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| bad("no `weight_map` object".into()))?;
                let mut shards: Vec<String> = Vec::new();
                for (name, f) in map {
                    let f = f
                        .as_str()
                        .ok_or_else(|| bad(format!("weight_map[{name}] is not a file name")))?;
                    if f.contains('/') || f.contains('\\') || f == ".." {
                        return Err(bad(format!("shard name `{f}` must be a plain file name")));
                    }
                    if !shards.iter().any(|s| s == f) {
                        shards.push(f.to_string());
                    }
                }
                shards.sort();
                files.extend(shards.iter().map(|s| path.join(s)));
                let me = Self::open_files(&files)?;
                for (name, f) in map {
                    let file = path.join(f.as_str().unwrap_or_default());
                    match me.entries.get(name) {
                        Some(e) if *e.file == file => {}
                        Some(e) => {
                            return Err(bad(format!(
                                "`{name}` is mapped to {f} but found in {}",
                                e.file.display()
                            )))
                        }
                        None => {
                            return Err(bad(format!("`{name}` is mapped to {f} but is not in it")))
                        }
                    }
                }
                return Ok(me);
            } else if single.is_file() {
                files.push(single);
            } else {
                return Err(WeightError::NoWeights(path.display().to_string()));
            }
        }
        Self::open_files(&files)
    }

    fn open_files(files: &[PathBuf]) -> Result<Self, WeightError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for path in files {
            let file = std::fs::File::open(path).map_err(io_err(path))?;
            // SAFETY: the mapping is read-only; like every mmap-based loader
            // we rely on the checkpoint not being modified while the model
            // is alive.
            let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_err(path))?);
            let st = SafeTensors::deserialize(&map).map_err(|source| WeightError::Safetensors {
                path: path.display().to_string(),
                source,
            })?;
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
        let n: usize = expected.iter().product();
        let bytes = &e.map[e.offset..e.offset + e.bytes];
        let shape = expected.to_vec();
        match e.dtype {
            Dtype::F32 => Ok(HostTensor::mapped(name, shape, e.map.clone(), e.offset, n)),
            Dtype::BF16 => Ok(HostTensor::owned(
                name,
                shape,
                convert(bytes, |b| half::bf16::from_bits(b).to_f32()),
            )),
            Dtype::F16 => Ok(HostTensor::owned(
                name,
                shape,
                convert(bytes, |b| half::f16::from_bits(b).to_f32()),
            )),
            other => Err(WeightError::Dtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
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

fn convert(bytes: &[u8], f: impl Fn(u16) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; bytes.len() / 2];
    out.par_chunks_mut(1 << 16)
        .zip(bytes.par_chunks(2 << 16))
        .for_each(|(o, b)| {
            for (o, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                *o = f(u16::from_le_bytes([c[0], c[1]]));
            }
        });
    out
}
