//! `MixtralConfig`: the model shape, read from a Hugging Face config.json as
//! transformers v4 and v5 write it, or taken from a built-in name.

use serde::Serialize;

mod error;
mod json;
mod validate;
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
