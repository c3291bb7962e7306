//! Parity with Hugging Face transformers on a seeded random tiny Mixtral
//! (tests/fixtures/tiny-mixtral, made by tools/make-fixtures.py; sliding
//! window 8, one prompt of 13 tokens).
//!
//! Tolerances (max abs logit difference; logits are O(1)):
//! - f32 checkpoint vs transformers f32: 1e-4, and identical greedy ids;
//! - bf16 sharded checkpoint (converted to f32 at load) vs transformers on the
//!   same bf16-rounded weights in f32: 1e-4;
//! - bf16 checkpoint vs the f32 reference: 0.1 (weight rounding only; logits
//!   reach 4.8 in magnitude, and transformers itself differs by 0.061 here).

mod model_common;

use capmoe::backend::CpuBackend;
use capmoe::model::{GenerateOptions, Model};
use model_common::max_abs_diff;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Generated {
    prompt: Vec<u32>,
    max_new_tokens: usize,
    generated: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Vec<u32>>,
    logits_f32: Vec<Vec<Vec<f32>>>,
    logits_bf16_weights: Vec<Vec<Vec<f32>>>,
    generate: Vec<Generated>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mixtral")
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_diff(m: &Model<CpuBackend>, prompts: &[Vec<u32>], want: &[Vec<Vec<f32>>]) -> f32 {
    let mut worst = 0.0f32;
    for (p, w) in prompts.iter().zip(want) {
        let got = m.logits(p, &m.default_router()).unwrap();
        assert_eq!(got.len(), w.len());
        worst = worst.max(max_abs_diff(&got.concat(), &w.concat()));
    }
    worst
}

#[test]
fn f32_logits_and_greedy_ids_match_transformers() {
    let r = reference();
    let m = Model::load(CpuBackend, &fixtures().join("f32")).unwrap();
    assert_eq!(m.config().sliding_window, Some(8));
    assert!(r.prompts.iter().any(|p| p.len() > 8));
    let d = max_diff(&m, &r.prompts, &r.logits_f32);
    assert!(d <= 1e-4, "max abs logit difference {d}");
    for g in &r.generate {
        let opts = GenerateOptions {
            max_new_tokens: g.max_new_tokens,
            eos: vec![],
            router: m.default_router(),
        };
        assert_eq!(m.generate(&g.prompt, &opts).unwrap(), g.generated);
    }
}

#[test]
fn bf16_sharded_checkpoint_matches_transformers() {
    let r = reference();
    let dir = fixtures().join("bf16");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let m = Model::load(CpuBackend, &dir).unwrap();
    let d = max_diff(&m, &r.prompts, &r.logits_bf16_weights);
    assert!(d <= 1e-4, "bf16 weights, f32 compute: {d}");
    let d = max_diff(&m, &r.prompts, &r.logits_f32);
    assert!(d <= 0.1, "bf16 vs f32 reference: {d}");
}
