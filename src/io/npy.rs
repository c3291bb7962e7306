//! A 2-D `.npy` reader/writer for router traces.
//!
//! Hand-written because traces come as bfloat16 too, which numpy has no type
//! for: ml_dtypes (and torch via `.view`) save it as the 2-byte void type
//! `V2`, which no Rust npy crate maps to bf16. Versions 1-3, either byte
//! order, C or Fortran order.

use half::{bf16, f16};
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NpyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a .npy file ({why})")]
    Format { path: PathBuf, why: String },
    #[error("{path} has dtype `{descr}`; expected float32 (<f4), float16 (<f2), bfloat16 (V2 or bfloat16) or float64 (<f8)")]
    Dtype { path: PathBuf, descr: String },
    #[error("{path} has shape {shape:?}; expected a 2-D [tokens, experts] array")]
    Rank { path: PathBuf, shape: Vec<usize> },
    #[error(
        "{path} holds {got} bytes of data; shape {shape:?} of {width}-byte values needs {want}"
    )]
    Truncated {
        path: PathBuf,
        shape: Vec<usize>,
        width: usize,
        got: usize,
        want: usize,
    },
    #[error("{path}: value {value} at [{row}, {col}] does not fit in float32")]
    OutOfRange {
        path: PathBuf,
        row: usize,
        col: usize,
        value: f64,
    },
}

/// A row-major 2-D f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    /// The dtype on disk, as numpy spells it.
    pub dtype: String,
}

#[derive(Clone, Copy)]
enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
}

impl Dtype {
    fn width(self) -> usize {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Reads a 2-D float array, converting to f32 (exactly for f16/bf16; f64 is
/// rounded, and a finite value beyond f32's range is an error).
pub fn read_matrix(path: &Path) -> Result<Matrix, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_matrix(&bytes, path)
}

/// Parses `.npy` bytes; `path` only names the source in errors.
pub fn parse_matrix(bytes: &[u8], path: &Path) -> Result<Matrix, NpyError> {
    let fmt = |why: &str| NpyError::Format {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(fmt("missing the \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fmt(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| fmt("header runs past the end of the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt("header is not text"))?;
    let descr = dict_str(header, "descr").ok_or_else(|| fmt("header has no 'descr'"))?;
    let fortran =
        dict_raw(header, "fortran_order").ok_or_else(|| fmt("header has no 'fortran_order'"))?;
    let fortran = match fortran.trim() {
        "True" => true,
        "False" => false,
        _ => return Err(fmt("'fortran_order' is neither True nor False")),
    };
    let shape = parse_shape(header).ok_or_else(|| fmt("header has no readable 'shape'"))?;
    let (dtype, big) = match descr.as_str() {
        "<f4" | "=f4" => (Dtype::F32, false),
        ">f4" => (Dtype::F32, true),
        "<f2" | "=f2" => (Dtype::F16, false),
        ">f2" => (Dtype::F16, true),
        "<f8" | "=f8" => (Dtype::F64, false),
        ">f8" => (Dtype::F64, true),
        "<V2" | "|V2" | "bfloat16" | "<bfloat16" => (Dtype::Bf16, false),
        _ => {
            return Err(NpyError::Dtype {
                path: path.to_path_buf(),
                descr,
            })
        }
    };
    if shape.len() != 2 {
        return Err(NpyError::Rank {
            path: path.to_path_buf(),
            shape,
        });
    }
    let (rows, cols) = (shape[0], shape[1]);
    let w = dtype.width();
    let data = &bytes[start + hlen..];
    let want = rows.saturating_mul(cols).saturating_mul(w);
    if data.len() != want {
        return Err(NpyError::Truncated {
            path: path.to_path_buf(),
            shape,
            width: w,
            got: data.len(),
            want,
        });
    }
    let mut out = Vec::with_capacity(rows * cols);
    for (i, c) in data.chunks_exact(w).enumerate() {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(c);
        if big {
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
                    let (row, col) = if fortran {
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
    if fortran {
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
        dtype: descr,
    })
}

/// Serialises a row-major f32 matrix as `.npy` version 1.0.
pub fn to_bytes(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(data.len(), rows * cols, "matrix data must be rows * cols");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Pad so that the data starts on a 64-byte boundary, ending in '\n'.
    let total = (MAGIC.len() + 4 + header.len() + 1).div_ceil(64) * 64;
    while MAGIC.len() + 4 + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn dict_raw<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let k = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[k + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let v = dict_raw(header, key)?.trim();
    let v = v.strip_prefix('\'').or_else(|| v.strip_prefix('"'))?;
    let v = v.strip_suffix('\'').or_else(|| v.strip_suffix('"'))?;
    Some(v.to_string())
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let k = header
        .find("'shape'")
        .or_else(|| header.find("\"shape\""))?;
    let rest = &header[k..];
    let open = rest.find('(')?;
    let close = rest.find(')')?;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
        let h = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn round_trips_f32() {
        let d = [1.0f32, -2.5, 3.25, 0.0, 7.0, 8.0];
        let m = parse_matrix(&to_bytes(&d, 2, 3), Path::new("x")).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, d);
    }

    #[test]
    fn reads_half_types_and_f64() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            parse_matrix(&with_header("<V2", "(1, 2)", false, &h), Path::new("x"))
                .unwrap()
                .data,
            [1.5, -2.0]
        );
        let h: Vec<u8> = [0.5f32, 4.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            parse_matrix(&with_header("<f2", "(2, 1)", false, &h), Path::new("x"))
                .unwrap()
                .data,
            [0.5, 4.0]
        );
        let h: Vec<u8> = [0.25f64, 1e3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse_matrix(&with_header("<f8", "(1, 2)", false, &h), Path::new("x"))
                .unwrap()
                .data,
            [0.25, 1000.0]
        );
        let h: Vec<u8> = [1e300f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(matches!(
            parse_matrix(&with_header("<f8", "(1, 1)", false, &h), Path::new("x")),
            Err(NpyError::OutOfRange { .. })
        ));
    }

    #[test]
    fn fortran_order_is_transposed() {
        let h: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let m = parse_matrix(&with_header("<f4", "(2, 3)", true, &h), Path::new("x")).unwrap();
        assert_eq!(m.data, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn rejects_bad_inputs() {
        let p = Path::new("x");
        assert!(matches!(
            parse_matrix(b"hello", p),
            Err(NpyError::Format { .. })
        ));
        assert!(matches!(
            parse_matrix(&with_header("<i4", "(1, 1)", false, &[0; 4]), p),
            Err(NpyError::Dtype { .. })
        ));
        assert!(matches!(
            parse_matrix(&with_header("<f4", "(4,)", false, &[0; 16]), p),
            Err(NpyError::Rank { .. })
        ));
        assert!(matches!(
            parse_matrix(&with_header("<f4", "(2, 2)", false, &[0; 12]), p),
            Err(NpyError::Truncated { .. })
        ));
    }
}
