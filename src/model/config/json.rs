//! The JSON form of [`MixtralConfig`]: parsing a Hugging Face config.json
//! (transformers v4 and v5) and writing the v4 form.

use super::{ConfigError, MixtralConfig};
use crate::io::{file::read_regular_text, json::parse_strict};
use serde_json::{Map, Value};
use std::path::Path;

fn get<'a>(m: &'a Map<String, Value>, key: &'static str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn usize_field(m: &Map<String, Value>, key: &'static str) -> Result<usize, ConfigError> {
    let v = get(m, key).ok_or(ConfigError::Missing(key))?;
    as_usize(v, key)
}

fn as_usize(v: &Value, key: &'static str) -> Result<usize, ConfigError> {
    v.as_u64()
        .filter(|&n| n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ConfigError::Invalid {
            field: key,
            value: v.to_string(),
            expected: "a positive integer",
        })
}

fn f64_field(v: &Value, key: &'static str) -> Result<f64, ConfigError> {
    // Used as f32: 1e-50 is 0 there, 1e39 infinite.
    v.as_f64()
        .filter(|&x| (x as f32).is_finite() && x as f32 > 0.0)
        .ok_or_else(|| ConfigError::Invalid {
            field: key,
            value: v.to_string(),
            expected: "a finite number > 0 in float32 (as it is used)",
        })
}

/// A token id or a non-empty list of them; `single` also refuses lists of
/// more than one (a sequence has one start).
fn u32_list(v: &Value, key: &'static str, single: bool) -> Result<Vec<u32>, ConfigError> {
    let expected = if single {
        "a token id (a non-negative integer, or a list of exactly one)"
    } else {
        "a token id or a non-empty list of token ids (non-negative integers)"
    };
    let bad = || ConfigError::Invalid {
        field: key,
        value: v.to_string(),
        expected,
    };
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    let ids = match v {
        Value::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        _ => vec![one(v)?],
    };
    if ids.is_empty() || (single && ids.len() > 1) {
        return Err(bad());
    }
    Ok(ids)
}

/// `m[key]` as an object when present; anything else but null is an error.
fn object_field<'a>(
    m: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(ConfigError::Invalid {
            field: key,
            value: v.to_string(),
            expected: "an object (or null)",
        }),
    }
}

/// Largest config.json read, in bytes.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

impl MixtralConfig {
    /// Parses a config.json text.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let v: Value = parse_strict(text)?;
        let m = v.as_object().ok_or(ConfigError::NotAnObject)?;
        if let Some(mt) = get(m, "model_type") {
            if !matches!(mt.as_str(), Some("mixtral" | "mistral")) {
                return Err(ConfigError::Invalid {
                    field: "model_type",
                    value: mt.to_string(),
                    expected: "\"mixtral\" (or \"mistral\")",
                });
            }
        }
        if let Some(act) = get(m, "hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ConfigError::Invalid {
                    field: "hidden_act",
                    value: act.to_string(),
                    expected: "\"silu\" (Mixtral's SwiGLU experts)",
                });
            }
        }
        let hidden_size = usize_field(m, "hidden_size")?;
        let num_attention_heads = usize_field(m, "num_attention_heads")?;
        let num_key_value_heads = match get(m, "num_key_value_heads") {
            Some(v) => as_usize(v, "num_key_value_heads")?,
            None => num_attention_heads,
        };
        let head_dim = match get(m, "head_dim") {
            Some(v) => as_usize(v, "head_dim")?,
            None if hidden_size % num_attention_heads != 0 => {
                return Err(ConfigError::Inconsistent(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads \
                     {num_attention_heads}; expected the heads to divide hidden_size \
                     (or an explicit head_dim)"
                )))
            }
            None => hidden_size / num_attention_heads,
        };
        // v4: top-level `rope_theta` (and `rope_scaling`); v5: `rope_parameters`.
        let rope_params = object_field(m, "rope_parameters")?;
        let rope_scaling = object_field(m, "rope_scaling")?;
        let rope_theta = match (
            rope_params.and_then(|p| get(p, "rope_theta")),
            get(m, "rope_theta"),
        ) {
            (Some(v), _) | (None, Some(v)) => f64_field(v, "rope_theta")?,
            (None, None) => 1e6,
        };
        let rope_type = rope_params
            .and_then(|p| get(p, "rope_type"))
            .or_else(|| rope_scaling.and_then(|s| get(s, "rope_type").or(get(s, "type"))));
        if let Some(t) = rope_type {
            if t.as_str() != Some("default") {
                return Err(ConfigError::Invalid {
                    field: "rope_type",
                    value: t.to_string(),
                    expected: "\"default\" (scaled RoPE variants are not supported)",
                });
            }
        }
        let sliding_window = match get(m, "sliding_window") {
            None => None,
            Some(v) => Some(as_usize(v, "sliding_window")?),
        };
        let dtype = get(m, "dtype")
            .or_else(|| get(m, "torch_dtype"))
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::Invalid {
                        field: "dtype",
                        value: v.to_string(),
                        expected: "a dtype name such as \"bfloat16\"",
                    })
            })
            .transpose()?;
        let tie_word_embeddings = match get(m, "tie_word_embeddings") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| ConfigError::Invalid {
                field: "tie_word_embeddings",
                value: v.to_string(),
                expected: "true or false",
            })?,
        };
        let cfg = Self {
            vocab_size: usize_field(m, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(m, "intermediate_size")?,
            num_hidden_layers: usize_field(m, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            num_local_experts: usize_field(m, "num_local_experts")?,
            num_experts_per_tok: usize_field(m, "num_experts_per_tok")?,
            rms_norm_eps: match get(m, "rms_norm_eps") {
                Some(v) => f64_field(v, "rms_norm_eps")?,
                None => 1e-5,
            },
            rope_theta,
            max_position_embeddings: match get(m, "max_position_embeddings") {
                Some(v) => as_usize(v, "max_position_embeddings")?,
                None => 32768,
            },
            sliding_window,
            tie_word_embeddings,
            dtype,
            bos_token_id: match get(m, "bos_token_id") {
                Some(v) => u32_list(v, "bos_token_id", true)?.first().copied(),
                None => None,
            },
            eos_token_ids: match get(m, "eos_token_id") {
                Some(v) => u32_list(v, "eos_token_id", false)?,
                None => Vec::new(),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `dir/config.json` (or the file itself when `path` is a file).
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text =
            read_regular_text(&file, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Io {
                path: file.display().to_string(),
                source,
            })?;
        Self::from_json_str(&text)
    }
}

impl MixtralConfig {
    /// The config as a transformers v4 `config.json` object.
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.dtype.clone().unwrap_or_else(|| "float32".into()),
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
        })
    }
}
