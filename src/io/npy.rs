//! A 2-D `.npy` reader/writer for router traces.
//!
//! Hand-written because traces come as bfloat16 too, which numpy has no type
//! for: ml_dtypes (and torch via `.view`) save it as the 2-byte void type
//! `V2`, which no Rust npy crate maps to bf16. Versions 1-3, either byte
//! order, C or Fortran order.
//!
//! Hostile files: the header is read first, from a bounded prefix
//! ([`MAX_HEADER_LEN`]), and parsed strictly (exactly the keys `descr`,
//! `fortran_order`, `shape`, each once). The data is read only once the
//! header's claim (rows x cols x width, checked, at most [`MAX_VALUES`]
//! values) agrees with the file's size, so nothing is allocated for data
//! the file does not hold, and a stream such as `/dev/zero` fails on its
//! magic after 12 bytes.

use super::header::{parse_header, Dtype, Header};
use half::{bf16, f16};
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub(crate) const MAGIC: &[u8] = b"\x93NUMPY";

/// Longest header accepted, in bytes (numpy writes under 200; it reads at
/// most 10 000 by default).
pub const MAX_HEADER_LEN: usize = 65_536;

/// Most values a matrix may hold (2^30, 4 GiB as f32): a documented bound
/// on what one file may make us allocate, whatever its header says.
pub const MAX_VALUES: usize = 1 << 30;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bad magic, version, preamble or header.
    #[error("{path} is not a .npy file ({why})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected.
        why: String,
    },
    #[error("{path} has dtype `{descr}`; expected float32 (<f4), float16 (<f2), bfloat16 (V2 or bfloat16) or float64 (<f8)")]
    /// The dtype is not float32, float16, bfloat16 or float64.
    Dtype {
        /// The file.
        path: PathBuf,
        /// The header's `descr`, as written.
        descr: String,
    },
    #[error("{path} has shape {shape:?}; expected a {expected} array")]
    /// The array has another rank than the reader's (2-D [tokens, experts], or 3-D
    /// [layers, tokens, experts] in C order for [`read_layers`]).
    Rank {
        /// The file.
        path: PathBuf,
        /// The header's shape.
        shape: Vec<usize>,
        /// What the reader expects, e.g. `2-D [tokens, experts]`.
        expected: &'static str,
    },
    #[error("{path} has shape {shape:?}, more than {limit} values; expected at most {limit} (capmoe's bound on one matrix)")]
    /// The shape holds more than [`MAX_VALUES`] values (or overflows).
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The header's shape.
        shape: Vec<usize>,
        /// The bound, in values ([`MAX_VALUES`]).
        limit: usize,
    },
    #[error(
        "{path} holds {got} bytes of data; shape {shape:?} of {width}-byte values needs {want}"
    )]
    /// The data section's size disagrees with the header.
    Truncated {
        /// The file.
        path: PathBuf,
        /// The header's shape.
        shape: Vec<usize>,
        /// Bytes per value (2, 4 or 8).
        width: usize,
        /// Data bytes the file holds.
        got: usize,
        /// Data bytes the shape needs.
        want: usize,
    },
    #[error("{path}: value {value} at [{row}, {col}] does not fit in float32")]
    /// A finite f64 value overflows f32.
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// Row of the value (0-based).
        row: usize,
        /// Column of the value (0-based).
        col: usize,
        /// The f64 value.
        value: f64,
    },
    #[error(
        "cannot write {path}: the data holds {len} values, expected rows x cols = {rows} x {cols}"
    )]
    /// Writing: the data's length is not `rows * cols`.
    DataLength {
        /// The file to be written.
        path: PathBuf,
        /// Values given.
        len: usize,
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
    },
}

/// A row-major 2-D f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows (tokens, for a trace).
    pub rows: usize,
    /// Number of columns (experts, for a trace).
    pub cols: usize,
    /// `rows * cols` values, row-major: `data[r * cols + c]`.
    pub data: Vec<f32>,
    /// The dtype on disk, as numpy spells it.
    pub dtype: String,
}

fn format_err(path: &Path, why: impl Into<String>) -> NpyError {
    NpyError::Format {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// The header's length and where it starts, from the first bytes (at most
/// 12) of a file.
fn preamble(pre: &[u8], path: &Path) -> Result<(usize, usize), NpyError> {
    if pre.len() < 8 || &pre[..6] != MAGIC {
        return Err(format_err(path, "missing the \\x93NUMPY magic"));
    }
    let (hlen, start) = match (pre[6], pre) {
        (1, [_, _, _, _, _, _, _, _, a, b, ..]) => (u16::from_le_bytes([*a, *b]) as usize, 10),
        (2 | 3, [_, _, _, _, _, _, _, _, a, b, c, d, ..]) => {
            (u32::from_le_bytes([*a, *b, *c, *d]) as usize, 12)
        }
        (1..=3, _) => return Err(format_err(path, "the file ends inside the preamble")),
        (v, _) => {
            return Err(format_err(
                path,
                format!("unsupported format version {v}; expected 1, 2 or 3"),
            ))
        }
    };
    if hlen > MAX_HEADER_LEN {
        return Err(format_err(
            path,
            format!("the header claims {hlen} bytes; expected at most {MAX_HEADER_LEN}"),
        ));
    }
    Ok((hlen, start))
}

/// What a reader accepts: a 2-D matrix, or a C-order 3-D stack read as `[L * T, E]`.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    Matrix,
    Layers,
}

/// The header's checks that need the path: dtype, rank, size. A 3-D stack's shape comes back
/// flattened to `[L * T, E]` (its bytes are exactly that matrix's).
fn checked_header(text: &[u8], path: &Path, want: Want) -> Result<Header, NpyError> {
    let h = parse_header(text).map_err(|why| format_err(path, why))?;
    if h.dtype.is_none() {
        return Err(NpyError::Dtype {
            path: path.to_path_buf(),
            descr: h.descr,
        });
    }
    let ok = match want {
        Want::Matrix => h.shape.len() == 2,
        Want::Layers => h.shape.len() == 3 && !h.fortran,
    };
    if !ok {
        return Err(NpyError::Rank {
            path: path.to_path_buf(),
            shape: h.shape,
            expected: match want {
                Want::Matrix => "2-D [tokens, experts]",
                Want::Layers => "3-D C-order [layers, tokens, experts]",
            },
        });
    }
    if h.values().is_none_or(|n| n > MAX_VALUES) {
        return Err(NpyError::TooLarge {
            path: path.to_path_buf(),
            shape: h.shape,
            limit: MAX_VALUES,
        });
    }
    let mut h = h;
    if want == Want::Layers {
        // values() above bounds the product.
        h.shape = vec![h.shape[0] * h.shape[1], h.shape[2]];
    }
    Ok(h)
}

fn truncated(h: &Header, got: usize, want: usize, path: &Path) -> NpyError {
    NpyError::Truncated {
        path: path.to_path_buf(),
        shape: h.shape.clone(),
        width: h.width(),
        got,
        want,
    }
}

/// Reads a 2-D float array, converting to f32 (exactly for f16/bf16; f64 is
/// rounded, and a finite value beyond f32's range is an error).
///
/// Header first: at most 12 + [`MAX_HEADER_LEN`] bytes are read before the
/// header is validated; data is allocated only once the file is known to
/// hold exactly what the header claims (for a pipe, as it arrives, up to
/// the claim).
pub fn read_matrix(path: &Path) -> Result<Matrix, NpyError> {
    read(path, Want::Matrix)
}

/// Reads a 3-D C-order `[layers, tokens, experts]` float array (one forward's router logits, as
/// `capmoe trace --forwards` and `--record-router` write them) as the `[layers * tokens,
/// experts]` matrix of the same bytes, with the layer count. Same checks as [`read_matrix`].
pub fn read_layers(path: &Path) -> Result<(usize, Matrix), NpyError> {
    let layers = peek_layers(path)?;
    let m = read(path, Want::Layers)?;
    Ok((layers, m))
}

/// The leading dimension of a 3-D file's header (read before any data).
fn peek_layers(path: &Path) -> Result<usize, NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(12);
    (&mut f).take(12).read_to_end(&mut head).map_err(io)?;
    let (hlen, start) = preamble(&head, path)?;
    (&mut f)
        .take((start + hlen).saturating_sub(head.len()) as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let text = head
        .get(start..start + hlen)
        .ok_or_else(|| format_err(path, "the header runs past the end of the file"))?;
    let h = parse_header(text).map_err(|why| format_err(path, why))?;
    Ok(h.shape.first().copied().unwrap_or(0))
}

fn read(path: &Path, want: Want) -> Result<Matrix, NpyError> {
    let io = |source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let mut head = Vec::with_capacity(12);
    (&mut f).take(12).read_to_end(&mut head).map_err(io)?;
    let (hlen, start) = preamble(&head, path)?;
    let end = start + hlen;
    if head.len() < end {
        let more = (end - head.len()) as u64;
        (&mut f).take(more).read_to_end(&mut head).map_err(io)?;
    }
    if head.len() < end {
        return Err(format_err(path, "the header runs past the end of the file"));
    }
    let h = checked_header(&head[start..end], path, want)?;
    let want = h.data_bytes().ok_or_else(|| NpyError::TooLarge {
        path: path.to_path_buf(),
        shape: h.shape.clone(),
        limit: MAX_VALUES,
    })?;
    let mut data = head.split_off(end);
    if meta.is_file() {
        let got = meta.len().saturating_sub(end as u64);
        if got != want as u64 {
            return Err(truncated(
                &h,
                got.try_into().unwrap_or(usize::MAX),
                want,
                path,
            ));
        }
        data.reserve_exact(want.saturating_sub(data.len()));
    }
    let more = (want + 1).saturating_sub(data.len()) as u64;
    (&mut f).take(more).read_to_end(&mut data).map_err(io)?;
    if data.len() != want {
        return Err(truncated(&h, data.len(), want, path));
    }
    decode(&h, &data, path)
}

/// Parses `.npy` bytes; `path` only names the source in errors.
pub fn parse_matrix(bytes: &[u8], path: &Path) -> Result<Matrix, NpyError> {
    let (hlen, start) = preamble(&bytes[..bytes.len().min(12)], path)?;
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| format_err(path, "the header runs past the end of the file"))?;
    let h = checked_header(header, path, Want::Matrix)?;
    let data = &bytes[start + hlen..];
    match h.data_bytes() {
        Some(want) if want == data.len() => decode(&h, data, path),
        Some(want) => Err(truncated(&h, data.len(), want, path)),
        None => Err(NpyError::TooLarge {
            path: path.to_path_buf(),
            shape: h.shape,
            limit: MAX_VALUES,
        }),
    }
}

/// Converts `data` (exactly rows x cols x width bytes) to row-major f32.
fn decode(h: &Header, data: &[u8], path: &Path) -> Result<Matrix, NpyError> {
    let (rows, cols) = (h.shape[0], h.shape[1]);
    let Some(dtype) = h.dtype else {
        return Err(NpyError::Dtype {
            path: path.to_path_buf(),
            descr: h.descr.clone(),
        });
    };
    let w = h.width();
    let mut out = Vec::with_capacity(data.len() / w);
    for (i, c) in data.chunks_exact(w).enumerate() {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(c);
        if h.big_endian {
            b[..w].reverse();
        }
        let v = match dtype {
            Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::Bf16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::F64 => {
                let v = f64::from_le_bytes(b);
                let f = v as f32;
                if v.is_finite() && !f.is_finite() {
                    let (row, col) = if h.fortran {
                        (i % rows, i / rows)
                    } else {
                        (i / cols, i % cols)
                    };
                    return Err(NpyError::OutOfRange {
                        path: path.to_path_buf(),
                        row,
                        col,
                        value: v,
                    });
                }
                f
            }
        };
        out.push(v);
    }
    if h.fortran {
        let mut c = vec![0.0f32; out.len()];
        for j in 0..cols {
            for i in 0..rows {
                c[i * cols + j] = out[j * rows + i];
            }
        }
        out = c;
    }
    Ok(Matrix {
        rows,
        cols,
        data: out,
        dtype: h.descr.clone(),
    })
}

/// Serialises a C-order f32 `[layers, tokens, experts]` stack as `.npy` version 1.0 (what
/// [`read_layers`] reads); `data.len()` must be the product, else an error.
pub fn layers_to_bytes(
    data: &[f32],
    layers: usize,
    tokens: usize,
    experts: usize,
) -> Result<Vec<u8>, NpyError> {
    let shape = vec![layers, tokens, experts];
    if layers
        .checked_mul(tokens)
        .and_then(|n| n.checked_mul(experts))
        != Some(data.len())
    {
        return Err(NpyError::Truncated {
            path: PathBuf::from("<layers_to_bytes>"),
            shape,
            width: 4,
            got: data.len() * 4,
            want: layers
                .saturating_mul(tokens)
                .saturating_mul(experts)
                .saturating_mul(4),
        });
    }
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({layers}, {tokens}, {experts}), }}"
    );
    let mut out = header_bytes(&dict);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Serialises a row-major f32 matrix as `.npy` version 1.0.
///
/// # Panics
/// If `data.len()` is not `rows * cols` (a caller's bug, not bad input; see
/// [`write_matrix`] for the checked form).
pub fn to_bytes(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(
        Some(data.len()),
        rows.checked_mul(cols),
        "matrix data must be rows * cols"
    );
    let mut out = header_bytes(&format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}"
    ));
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Magic, version 1.0, and the header dict padded so that the data starts on a 64-byte
/// boundary, ending in '\n'.
fn header_bytes(dict: &str) -> Vec<u8> {
    let mut header = dict.to_string();
    let total = (MAGIC.len() + 4 + header.len() + 1).div_ceil(64) * 64;
    while MAGIC.len() + 4 + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes a row-major f32 matrix to `path` as `.npy`, atomically (see
/// [`super::atomic::write_atomic`]): a reader sees the old file or the new.
pub fn write_matrix(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<(), NpyError> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(NpyError::DataLength {
            path: path.to_path_buf(),
            len: data.len(),
            rows,
            cols,
        });
    }
    super::atomic::write_atomic(path, &to_bytes(data, rows, cols)).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
