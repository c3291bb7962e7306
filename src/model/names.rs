//! Hugging Face tensor names of a Mixtral checkpoint.

/// Token embeddings `[vocab, hidden]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final RMSNorm's weight `[hidden]`.
pub const NORM: &str = "model.norm.weight";
/// The LM head `[vocab, hidden]` (absent when tied to the embeddings).
pub const LM_HEAD: &str = "lm_head.weight";

/// `model.layers.{i}.{rest}`.
pub fn layer(i: usize, rest: &str) -> String {
    format!("model.layers.{i}.{rest}")
}
/// Layer `i`'s pre-attention RMSNorm weight.
pub fn input_norm(i: usize) -> String {
    layer(i, "input_layernorm.weight")
}
/// Layer `i`'s pre-MoE (post-attention) RMSNorm weight.
pub fn post_norm(i: usize) -> String {
    layer(i, "post_attention_layernorm.weight")
}
/// `which` is one of `q_proj`, `k_proj`, `v_proj`, `o_proj`.
pub fn attn(i: usize, which: &str) -> String {
    layer(i, &format!("self_attn.{which}.weight"))
}
/// Layer `i`'s router `[experts, hidden]`.
pub fn gate(i: usize) -> String {
    layer(i, "block_sparse_moe.gate.weight")
}
/// `w` is one of `w1`, `w2`, `w3`.
pub fn expert(i: usize, j: usize, w: &str) -> String {
    layer(i, &format!("block_sparse_moe.experts.{j}.{w}.weight"))
}

/// Every tensor a checkpoint of `cfg` holds, with its shape, in a stable order.
pub fn expected(cfg: &super::MixtralConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let _ = visit_expected(cfg, &mut |name, shape| {
        out.push((name.to_string(), shape.to_vec()));
        Ok::<(), ()>(())
    });
    out
}

/// Calls `f` on every tensor of [`expected`], in its order, without building
/// the list; stops at the first error.
pub fn visit_expected<E, F: FnMut(&str, &[usize]) -> Result<(), E>>(
    cfg: &super::MixtralConfig,
    f: &mut F,
) -> Result<(), E> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    f(EMBED, &[v, h])?;
    for l in 0..cfg.num_hidden_layers {
        f(&input_norm(l), &[h])?;
        f(&attn(l, "q_proj"), &[q, h])?;
        f(&attn(l, "k_proj"), &[kv, h])?;
        f(&attn(l, "v_proj"), &[kv, h])?;
        f(&attn(l, "o_proj"), &[h, q])?;
        f(&post_norm(l), &[h])?;
        f(&gate(l), &[cfg.num_local_experts, h])?;
        for j in 0..cfg.num_local_experts {
            f(&expert(l, j, "w1"), &[i, h])?;
            f(&expert(l, j, "w2"), &[h, i])?;
            f(&expert(l, j, "w3"), &[i, h])?;
        }
    }
    f(NORM, &[h])?;
    if !cfg.tie_word_embeddings {
        f(LM_HEAD, &[v, h])?;
    }
    Ok(())
}
