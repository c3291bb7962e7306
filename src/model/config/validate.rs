//! [`MixtralConfig`]'s checks: every field's range, the relations between
//! fields, and the positions a sequence may take.

use super::{ConfigError, MixtralConfig};
use crate::routing::MAX_EXPERTS;

impl MixtralConfig {
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
}
