//! `MixtralConfig`: the model shape, read from a Hugging Face config.json as
//! transformers v4 and v5 write it, or taken from a built-in name.

use crate::error::MAX_EXPERTS;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;
use thiserror::Error;

/// Errors reading or validating a configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config.json must be a JSON object")]
    NotAnObject,
    #[error("config.json has no `{0}`; a Mixtral config needs it")]
    Missing(&'static str),
    #[error("config field `{field}` is {value}; expected {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("inconsistent config: {0}")]
    Inconsistent(String),
    #[error("unknown built-in config `{0}`; expected one of: {names}", names = BUILTIN_NAMES.join(", "))]
    UnknownBuiltin(String),
}

/// The shape and hyper-parameters of a Mixtral model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixtralConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `hidden_size / num_attention_heads` when the file has none (or null).
    pub head_dim: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// Mistral sliding-window attention span; `None` is full causal attention.
    pub sliding_window: Option<usize>,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// On-disk dtype named by the config (`torch_dtype` in v4, `dtype` in
    /// v5), informational: the loader goes by each tensor's own dtype.
    pub dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (the file may give one id or a list).
    pub eos_token_ids: Vec<u32>,
}

/// Names accepted by [`MixtralConfig::builtin`].
pub const BUILTIN_NAMES: &[&str] = &["tiny", "small", "mixtral-8x7b"];

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
        .map(|n| n as usize)
        .ok_or_else(|| ConfigError::Invalid {
            field: key,
            value: v.to_string(),
            expected: "a positive integer",
        })
}

fn f64_field(v: &Value, key: &'static str) -> Result<f64, ConfigError> {
    v.as_f64()
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| ConfigError::Invalid {
            field: key,
            value: v.to_string(),
            expected: "a positive finite number",
        })
}

fn u32_list(v: &Value, key: &'static str) -> Result<Vec<u32>, ConfigError> {
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ConfigError::Invalid {
                field: key,
                value: v.to_string(),
                expected: "a token id or a list of token ids",
            })
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        _ => Ok(vec![one(v)?]),
    }
}

impl MixtralConfig {
    /// Parses a config.json text.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(text)?;
        let m = v.as_object().ok_or(ConfigError::NotAnObject)?;
        if let Some(mt) = get(m, "model_type").and_then(Value::as_str) {
            if mt != "mixtral" && mt != "mistral" {
                return Err(ConfigError::Invalid {
                    field: "model_type",
                    value: format!("\"{mt}\""),
                    expected: "\"mixtral\"",
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
            None => hidden_size / num_attention_heads,
        };
        // v4: top-level `rope_theta` (and `rope_scaling`); v5: `rope_parameters`.
        let rope_params = get(m, "rope_parameters").and_then(Value::as_object);
        let rope_theta = match (
            rope_params.and_then(|p| get(p, "rope_theta")),
            get(m, "rope_theta"),
        ) {
            (Some(v), _) | (None, Some(v)) => f64_field(v, "rope_theta")?,
            (None, None) => 1e6,
        };
        let rope_type = rope_params
            .and_then(|p| get(p, "rope_type"))
            .or_else(|| get(m, "rope_scaling").and_then(|s| s.get("rope_type").or(s.get("type"))));
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
            bos_token_id: get(m, "bos_token_id")
                .map(|v| u32_list(v, "bos_token_id").map(|l| l[0]))
                .transpose()?,
            eos_token_ids: match get(m, "eos_token_id") {
                Some(v) => u32_list(v, "eos_token_id")?,
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
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
            path: file.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Checks the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Inconsistent(s));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0; expected a positive integer"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim {} is odd; RoPE needs an even head_dim",
                self.head_dim
            ));
        }
        if self.num_local_experts > MAX_EXPERTS {
            return bad(format!(
                "num_local_experts {} is above the supported {MAX_EXPERTS}",
                self.num_local_experts
            ));
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return bad(format!(
                "num_experts_per_tok {} is larger than num_local_experts {}",
                self.num_experts_per_tok, self.num_local_experts
            ));
        }
        if u32::try_from(self.vocab_size).is_err() {
            return bad(format!(
                "vocab_size {} does not fit token ids (u32)",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// A built-in shape by name (random weights only):
    ///
    /// | name | hidden | inter | layers | heads/kv | experts | vocab |
    /// | --- | --- | --- | --- | --- | --- | --- |
    /// | `tiny` | 32 | 64 | 2 | 4/2 | 4 top-2 | 128 |
    /// | `small` | 1024 | 3584 | 4 | 16/4 | 8 top-2 | 32000 |
    /// | `mixtral-8x7b` | 4096 | 14336 | 32 | 32/8 | 8 top-2 | 32000 |
    pub fn builtin(name: &str) -> Result<Self, ConfigError> {
        let base = |hidden, inter, layers, heads, kv, experts, vocab| Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            num_local_experts: experts,
            num_experts_per_tok: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            sliding_window: None,
            tie_word_embeddings: false,
            dtype: Some("float32".into()),
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        };
        match name {
            "tiny" => Ok(base(32, 64, 2, 4, 2, 4, 128)),
            "small" => Ok(base(1024, 3584, 4, 16, 4, 8, 32000)),
            "mixtral-8x7b" => Ok(Self {
                dtype: Some("bfloat16".into()),
                ..base(4096, 14336, 32, 32, 8, 8, 32000)
            }),
            _ => Err(ConfigError::UnknownBuiltin(name.to_string())),
        }
    }

    /// Parameters in all (embeddings and LM head counted separately unless tied).
    pub fn param_count(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let attn = h * q * 2 + h * kv * 2;
        let moe = self.num_local_experts as u64 * 3 * h * i + self.num_local_experts as u64 * h;
        let layer = attn + moe + 2 * h;
        let heads = if self.tie_word_embeddings {
            v * h
        } else {
            2 * v * h
        };
        self.num_hidden_layers as u64 * layer + heads + h
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
