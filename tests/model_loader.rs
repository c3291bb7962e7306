//! Safetensors loading: f32 in place, bf16/f16 converted, shards, and typed
//! errors for missing, extra, misshaped tensors and truncated files.

mod model_common;

use capmoe::backend::CpuBackend;
use capmoe::model::{Model, ModelError, WeightError, WeightFiles};
use model_common::*;
use safetensors::Dtype;

fn logits(m: &Model<CpuBackend>) -> Vec<f32> {
    m.logits(&[1, 5, 9, 3], &m.default_router())
        .unwrap()
        .concat()
}

#[test]
fn f32_single_file_loads_in_place_and_matches_random_init() {
    let cfg = tiny();
    let dir = temp_dir("f32");
    write_single(&dir, &cfg, &random_tensors(&cfg, 3), Dtype::F32);
    let loaded = Model::load(CpuBackend, &dir).unwrap();
    let want = random_model(cfg, 3);
    assert_eq!(logits(&loaded), logits(&want));
    // The serializer pads headers to 8 bytes, so every f32 tensor is mapped.
    let mut files = WeightFiles::open(&dir).unwrap();
    let t = files.take("model.norm.weight", &[32]).unwrap();
    assert!(t.is_mapped());
}

#[test]
fn bf16_sharded_and_f16_load_converted() {
    let cfg = tiny();
    let tensors = random_tensors(&cfg, 4);
    let want = logits(&random_model(cfg.clone(), 4));
    for (dtype, tol) in [(Dtype::BF16, 5e-2f32), (Dtype::F16, 5e-3)] {
        let dir = temp_dir(&format!("{dtype:?}"));
        write_sharded(&dir, &cfg, &tensors, dtype, 3);
        let m = Model::load(CpuBackend, &dir).unwrap();
        let d = max_abs_diff(&logits(&m), &want);
        assert!(d < tol, "{dtype:?}: max diff {d}");
        let mut files = WeightFiles::open(&dir).unwrap();
        assert!(!files.take("model.norm.weight", &[32]).unwrap().is_mapped());
    }
}

fn load_err(tensors: &[(String, Vec<usize>, Vec<f32>)], tag: &str) -> WeightError {
    let dir = temp_dir(tag);
    write_single(&dir, &tiny(), tensors, Dtype::F32);
    match Model::load(CpuBackend, &dir) {
        Err(ModelError::Weights(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("loaded a bad checkpoint"),
    }
}

#[test]
fn missing_tensor_is_named() {
    let mut t = random_tensors(&tiny(), 1);
    t.retain(|(n, _, _)| n != "model.layers.1.block_sparse_moe.experts.2.w3.weight");
    let e = load_err(&t, "missing");
    assert!(matches!(&e, WeightError::Missing { name, expected }
        if name == "model.layers.1.block_sparse_moe.experts.2.w3.weight" && expected == &vec![64, 32]));
    assert!(e.to_string().contains("experts.2.w3"), "{e}");
}

#[test]
fn extra_tensor_is_named() {
    let mut t = random_tensors(&tiny(), 1);
    t.push(("model.layers.0.mlp.bias".into(), vec![4], vec![0.0; 4]));
    let e = load_err(&t, "extra");
    assert!(
        matches!(&e, WeightError::Extra { names } if names == &vec!["model.layers.0.mlp.bias".to_string()])
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let mut t = random_tensors(&tiny(), 1);
    let g = t
        .iter_mut()
        .find(|(n, _, _)| n == "model.layers.0.block_sparse_moe.gate.weight")
        .unwrap();
    g.1 = vec![32, 4];
    let e = load_err(&t, "shape");
    assert!(matches!(&e, WeightError::Shape { found, expected, .. }
        if found == &vec![32, 4] && expected == &vec![4, 32]));
    let msg = e.to_string();
    assert!(msg.contains("[32, 4]") && msg.contains("[4, 32]"), "{msg}");
}

#[test]
fn truncated_file_is_an_error() {
    let cfg = tiny();
    let dir = temp_dir("trunc");
    let bytes = safetensors_bytes(&random_tensors(&cfg, 1), Dtype::F32);
    write_config(&dir, &cfg);
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    let e = Model::load(CpuBackend, &dir).err().unwrap();
    assert!(
        matches!(e, ModelError::Weights(WeightError::Safetensors { .. })),
        "{e}"
    );
    std::fs::write(dir.join("model.safetensors"), &bytes[..5]).unwrap();
    assert!(Model::load(CpuBackend, &dir).is_err());
}

#[test]
fn missing_weights_and_bad_index_are_errors() {
    let cfg = tiny();
    let dir = temp_dir("noweights");
    write_config(&dir, &cfg);
    assert!(matches!(
        Model::load(CpuBackend, &dir),
        Err(ModelError::Weights(WeightError::NoWeights(_)))
    ));
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        "{\"weight_map\": {\"x\": \"../a\"}}",
    )
    .unwrap();
    assert!(matches!(
        Model::load(CpuBackend, &dir),
        Err(ModelError::Weights(WeightError::Index { .. }))
    ));
}

#[test]
fn tied_embeddings_need_no_lm_head() {
    let mut cfg = tiny();
    cfg.tie_word_embeddings = true;
    let dir = temp_dir("tied");
    let t = random_tensors(&cfg, 2);
    assert!(!t.iter().any(|(n, _, _)| n == "lm_head.weight"));
    write_single(&dir, &cfg, &t, Dtype::F32);
    let m = Model::load(CpuBackend, &dir).unwrap();
    assert_eq!(logits(&m), logits(&random_model(cfg, 2)));
}

/// A safetensors file whose header length leaves the f32 data 2 bytes off
/// 4-byte alignment: the loader copies instead of borrowing, same values.
#[test]
fn misaligned_f32_data_falls_back_to_a_copy() {
    let dir = temp_dir("misaligned");
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    let mut header =
        String::from("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}");
    while (8 + header.len()) % 4 != 2 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    let path = dir.join("odd.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let mut files = WeightFiles::open(&path).unwrap();
    let t = files.take("w", &[2, 3]).unwrap();
    assert!(!t.is_mapped());
    assert_eq!(t.data(), &values[..]);
    files.finish().unwrap();
}
