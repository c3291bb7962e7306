//! `MixtralConfig`: the model shape, read from a Hugging Face config.json as
//! transformers v4 and v5 write it, or taken from a built-in name.

use crate::io::{file::read_regular_text, json::parse_strict};
use crate::routing::MAX_EXPERTS;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

mod error;
pub use error::ConfigError;

/// The shape and hyper-parameters of a Mixtral model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixtralConfig {
    /// Tokenizer vocabulary size (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Model (residual) width `d`.
    pub hidden_size: usize,
    /// Each expert's FFN inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention; defaults to
    /// `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// `hidden_size / num_attention_heads` when the file has none (or null).
    pub head_dim: usize,
    /// Experts per MoE layer `E`.
    pub num_local_experts: usize,
    /// Experts each token is routed to, `k`.
    pub num_experts_per_tok: usize,
    /// RMSNorm epsilon (used as f32).
    pub rms_norm_eps: f64,
    /// RoPE base frequency (used as f32).
    pub rope_theta: f64,
    /// Most positions per sequence (prompt plus generated tokens).
    pub max_position_embeddings: usize,
    /// Mistral sliding-window attention span; `None` is full causal attention.
    pub sliding_window: Option<usize>,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// On-disk dtype named by the config (`torch_dtype` in v4, `dtype` in
    /// v5), informational: the loader goes by each tensor's own dtype.
    pub dtype: Option<String>,
    /// Beginning-of-sequence token id, if the config names one.
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
    /// Largest vocabulary (2^24 ids).
    pub const MAX_VOCAB: usize = 1 << 24;
    /// Largest hidden_size (65536; the largest released models use 16384).
    pub const MAX_HIDDEN: usize = 1 << 16;
    /// Largest intermediate_size (2^18).
    pub const MAX_INTERMEDIATE: usize = 1 << 18;
    /// Most decoder layers (1024; released models have under 130).
    pub const MAX_LAYERS: usize = 1024;
    /// Most attention (and key/value) heads.
    pub const MAX_HEADS: usize = 1 << 12;
    /// Largest head_dim.
    pub const MAX_HEAD_DIM: usize = 1 << 12;
    /// Largest max_position_embeddings (2^24 positions).
    pub const MAX_POSITIONS: usize = 1 << 24;

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

    /// Checks every field's range and the relations between fields (in the
    /// precision each is used in: eps and theta as f32), so that no size or
    /// product of sizes can overflow and nothing is allocated for an
    /// absurd shape. The bounds are the `MAX_*` constants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Inconsistent(s));
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, Self::MAX_VOCAB),
            ("hidden_size", self.hidden_size, Self::MAX_HIDDEN),
            (
                "intermediate_size",
                self.intermediate_size,
                Self::MAX_INTERMEDIATE,
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                Self::MAX_LAYERS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                Self::MAX_HEADS,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                Self::MAX_HEADS,
            ),
            ("head_dim", self.head_dim, Self::MAX_HEAD_DIM),
            ("num_local_experts", self.num_local_experts, MAX_EXPERTS),
            ("num_experts_per_tok", self.num_experts_per_tok, MAX_EXPERTS),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                Self::MAX_POSITIONS,
            ),
        ] {
            if v == 0 {
                return bad(format!("{field} is 0; expected a positive integer"));
            }
            if v > max {
                return Err(ConfigError::TooLarge {
                    field,
                    value: v as u64,
                    max: max as u64,
                });
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window is 0; expected a positive window (or null)".into());
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
        if self.num_experts_per_tok > self.num_local_experts {
            return bad(format!(
                "num_experts_per_tok {} is larger than num_local_experts {}",
                self.num_experts_per_tok, self.num_local_experts
            ));
        }
        let eps = self.rms_norm_eps as f32;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(ConfigError::Invalid {
                field: "rms_norm_eps",
                value: self.rms_norm_eps.to_string(),
                expected: "a finite number > 0 in float32 (e.g. 1e-5)",
            });
        }
        self.check_rope()?;
        for id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if *id as usize >= self.vocab_size {
                return bad(format!(
                    "token id {id} (bos_token_id or eos_token_id) is outside the vocabulary; \
                     expected ids below vocab_size {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// theta in f32, as RoPE uses it: finite and > 0, and every angle
    /// `position * inv_freq` finite up to max_position_embeddings.
    fn check_rope(&self) -> Result<(), ConfigError> {
        let theta = self.rope_theta as f32;
        let far = self.max_position_embeddings as f32;
        let ok = theta.is_finite()
            && theta > 0.0
            && crate::backend::Rope::new(self.head_dim, self.rope_theta)
                .inv_freq
                .iter()
                .all(|f| f.is_finite() && (f * far).is_finite());
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                field: "rope_theta",
                value: self.rope_theta.to_string(),
                expected: "a finite number > 0 in float32 whose RoPE angles stay finite up to max_position_embeddings (e.g. 1e6)",
            })
        }
    }

    /// Checks that a sequence may take positions `start..start + count`:
    /// all below `max_position_embeddings` (the forward pass calls this
    /// per sequence before it runs, so generation cannot run past it).
    pub fn check_positions(&self, start: usize, count: usize) -> Result<(), ConfigError> {
        let end = start as u128 + count as u128;
        if end > self.max_position_embeddings as u128 {
            return Err(ConfigError::PositionOutOfRange {
                start,
                end,
                max: self.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Checks that greedy generation of `max_new_tokens` after a prompt of
    /// `prompt_len` tokens stays within `max_position_embeddings`: the
    /// prompt and every generated token but the last are fed forward.
    pub fn check_generation(
        &self,
        prompt_len: usize,
        max_new_tokens: usize,
    ) -> Result<(), ConfigError> {
        self.check_positions(0, prompt_len)?;
        self.check_positions(prompt_len, max_new_tokens.saturating_sub(1))
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

    /// Parameters in all (embeddings and LM head counted separately unless
    /// tied); saturates at `u64::MAX` (never reached within the bounds
    /// [`MixtralConfig::validate`] enforces).
    pub fn param_count(&self) -> u64 {
        self.checked_param_count().unwrap_or(u64::MAX)
    }

    /// [`MixtralConfig::param_count`], `None` on overflow.
    pub fn checked_param_count(&self) -> Option<u64> {
        let u = |x: usize| x as u64;
        let (h, i, v) = (
            u(self.hidden_size),
            u(self.intermediate_size),
            u(self.vocab_size),
        );
        let q = u(self.num_attention_heads).checked_mul(u(self.head_dim))?;
        let kv = u(self.num_key_value_heads).checked_mul(u(self.head_dim))?;
        let e = u(self.num_local_experts);
        let attn = (h.checked_mul(q)?.checked_add(h.checked_mul(kv)?)?).checked_mul(2)?;
        let ffn = e.checked_mul(h.checked_mul(i)?.checked_mul(3)?.checked_add(h)?)?;
        let layer = attn.checked_add(ffn)?.checked_add(h.checked_mul(2)?)?;
        let heads = v
            .checked_mul(h)?
            .checked_mul(if self.tie_word_embeddings { 1 } else { 2 })?;
        u(self.num_hidden_layers)
            .checked_mul(layer)?
            .checked_add(heads)?
            .checked_add(h)
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
