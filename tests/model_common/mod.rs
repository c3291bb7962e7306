//! Helpers shared by the model tests: random checkpoints written as
//! safetensors in f32 / bf16 / f16, single-file or sharded.
#![allow(dead_code)]

use capmoe::backend::CpuBackend;
use capmoe::model::{names, random_tensor, InitOptions, MixtralConfig, Model};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn tiny() -> MixtralConfig {
    MixtralConfig::builtin("tiny").unwrap()
}

/// A fresh temporary directory under the target dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "capmoe-test-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every tensor of a seeded random model of `cfg`.
pub fn random_tensors(cfg: &MixtralConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let opts = InitOptions::new(seed);
    names::expected(cfg)
        .into_iter()
        .map(|(n, s)| {
            let t = random_tensor(&n, &s, &opts);
            let d = t.data().to_vec();
            (n, s, d)
        })
        .collect()
}

pub fn encode(data: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::BF16 => data
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F16 => data
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

/// Serialises tensors into safetensors bytes.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> Vec<u8> {
    let enc: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), encode(d, dtype)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = enc
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

pub fn write_config(dir: &Path, cfg: &MixtralConfig) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg.to_hf_json()).unwrap(),
    )
    .unwrap();
}

/// Writes `config.json` and `model.safetensors`.
pub fn write_single(
    dir: &Path,
    cfg: &MixtralConfig,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) {
    write_config(dir, cfg);
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(tensors, dtype),
    )
    .unwrap();
}

/// Writes `config.json`, `shards` shard files and the index.
pub fn write_sharded(
    dir: &Path,
    cfg: &MixtralConfig,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
    shards: usize,
) {
    write_config(dir, cfg);
    let per = tensors.len().div_ceil(shards);
    let mut map = BTreeMap::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        std::fs::write(dir.join(&name), safetensors_bytes(chunk, dtype)).unwrap();
        for (n, _, _) in chunk {
            map.insert(n.clone(), name.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
}

pub fn random_model(cfg: MixtralConfig, seed: u64) -> Model<CpuBackend> {
    Model::random(CpuBackend, cfg, &InitOptions::new(seed)).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
