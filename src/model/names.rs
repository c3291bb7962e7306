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
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let mut out = vec![(EMBED.to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        out.push((input_norm(l), vec![h]));
        out.push((attn(l, "q_proj"), vec![q, h]));
        out.push((attn(l, "k_proj"), vec![kv, h]));
        out.push((attn(l, "v_proj"), vec![kv, h]));
        out.push((attn(l, "o_proj"), vec![h, q]));
        out.push((post_norm(l), vec![h]));
        out.push((gate(l), vec![cfg.num_local_experts, h]));
        for j in 0..cfg.num_local_experts {
            out.push((expert(l, j, "w1"), vec![i, h]));
            out.push((expert(l, j, "w2"), vec![h, i]));
            out.push((expert(l, j, "w3"), vec![i, h]));
        }
    }
    out.push((NORM.to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push((LM_HEAD.to_string(), vec![v, h]));
    }
    out
}
