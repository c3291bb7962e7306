//! Hostile checkpoints: NaN/Inf weights (named), shard indexes that
//! disagree with their shards, repeated keys, wrong dtypes, and the order
//! of the checks (names, shapes and dtypes before any conversion).

mod model_common;

use capmoe::backend::CpuBackend;
use capmoe::model::{Model, ModelError, WeightError, WeightFiles};
use model_common::*;
use safetensors::Dtype;
use std::path::Path;

fn weights_err(dir: &Path) -> WeightError {
    match Model::load(CpuBackend, dir) {
        Err(ModelError::Weights(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("loaded a hostile checkpoint"),
    }
}

fn set(t: &mut [(String, Vec<usize>, Vec<f32>)], name: &str, i: usize, v: f32) {
    t.iter_mut().find(|(n, _, _)| n == name).unwrap().2[i] = v;
}

#[test]
fn a_nan_weight_is_refused_naming_the_tensor_and_index() {
    let cfg = tiny();
    let mut t = random_tensors(&cfg, 1);
    set(&mut t, "lm_head.weight", 3 * 32 + 17, f32::NAN);
    let dir = temp_dir("nan-f32");
    write_single(&dir, &cfg, &t, Dtype::F32);
    let e = weights_err(&dir);
    assert!(
        matches!(&e, WeightError::NonFinite { name, index, value }
            if name == "lm_head.weight" && index == &vec![3, 17] && value.is_nan()),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("lm_head.weight") && msg.contains("NaN") && msg.contains("expected finite"),
        "{msg}"
    );
}

#[test]
fn inf_is_refused_in_converted_and_sharded_weights_too() {
    let cfg = tiny();
    for (dtype, v) in [
        (Dtype::BF16, f32::INFINITY),
        (Dtype::F16, f32::NEG_INFINITY),
        (Dtype::F16, 1e6),
    ] {
        let mut t = random_tensors(&cfg, 2);
        let name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
        set(&mut t, name, 5, v); // 1e6 overflows f16 to inf
        let dir = temp_dir(&format!("inf-{dtype:?}-{v}"));
        write_sharded(&dir, &cfg, &t, dtype, 3);
        let e = weights_err(&dir);
        assert!(
            matches!(&e, WeightError::NonFinite { name: n, index, .. }
            if n == name && index == &vec![0, 5]),
            "{e:?}"
        );
        assert!(e.to_string().contains("inf"), "{e}");
    }
}

#[test]
fn names_shapes_and_dtypes_are_checked_before_any_weight_is_converted() {
    // A NaN early in the file and a tensor missing at the end: the missing
    // tensor is reported, found without converting anything.
    let cfg = tiny();
    let mut t = random_tensors(&cfg, 3);
    set(&mut t, "model.embed_tokens.weight", 0, f32::NAN);
    t.retain(|(n, _, _)| n != "model.norm.weight");
    let dir = temp_dir("order");
    write_single(&dir, &cfg, &t, Dtype::F32);
    assert!(
        matches!(weights_err(&dir), WeightError::Missing { name, .. } if name == "model.norm.weight")
    );
    // Likewise a misshaped tensor after the NaN.
    let mut t = random_tensors(&cfg, 3);
    set(&mut t, "model.embed_tokens.weight", 0, f32::NAN);
    t.iter_mut().find(|(n, _, _)| n == NORM).unwrap().1 = vec![1, 32];
    let dir = temp_dir("order-shape");
    write_single(&dir, &cfg, &t, Dtype::F32);
    assert!(matches!(weights_err(&dir), WeightError::Shape { name, .. } if name == NORM));
}

/// A safetensors file holding one tensor `w` of `dtype`, `shape`, `bytes`.
fn one_tensor_file(tag: &str, dtype: &str, shape: &[usize], bytes: usize) -> std::path::PathBuf {
    let header = format!(
        "{{\"w\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[0,{bytes}]}}}}"
    );
    let dir = temp_dir(tag);
    let p = dir.join("w.safetensors");
    std::fs::write(&p, raw_safetensors(&header, bytes)).unwrap();
    p
}

fn raw_safetensors(header: &str, data: usize) -> Vec<u8> {
    let mut h = header.to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(h.as_bytes());
    b.resize(b.len() + data, 0);
    b
}

#[test]
fn an_unsupported_dtype_is_a_typed_error() {
    let mut files = WeightFiles::open(&one_tensor_file("i32b", "I32", &[1, 2], 8)).unwrap();
    let e = files.take("w", &[1, 2]).unwrap_err();
    assert!(
        matches!(&e, WeightError::Dtype { name, dtype } if name == "w" && dtype == "I32"),
        "{e}"
    );
    assert!(e.to_string().contains("expected F32, BF16 or F16"), "{e}");
}

#[test]
fn a_repeated_tensor_name_in_a_header_is_refused() {
    let header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\
                  \"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    let dir = temp_dir("dup-header");
    let p = dir.join("w.safetensors");
    std::fs::write(&p, raw_safetensors(header, 4)).unwrap();
    let e = WeightFiles::open(&p)
        .err()
        .expect("a repeated key was accepted");
    assert!(e.to_string().contains("duplicate key `w`"), "{e}");
}

/// A sharded tiny checkpoint whose index text is then rewritten by `edit`.
fn sharded_with_index(tag: &str, edit: impl Fn(&mut serde_json::Value)) -> std::path::PathBuf {
    let cfg = tiny();
    let dir = temp_dir(tag);
    write_sharded(&dir, &cfg, &random_tensors(&cfg, 5), Dtype::F32, 2);
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    dir
}

fn index_msg(dir: &Path) -> String {
    match weights_err(dir) {
        e @ WeightError::Index { .. } => e.to_string(),
        e => panic!("expected an index error, got {e}"),
    }
}

const NORM: &str = "model.norm.weight";

#[test]
fn the_index_must_map_every_tensor_of_its_shards() {
    let dir = sharded_with_index("unmapped", |v| {
        v["weight_map"].as_object_mut().unwrap().remove(NORM);
    });
    let msg = index_msg(&dir);
    assert!(
        msg.contains(NORM) && msg.contains("not in `weight_map`"),
        "{msg}"
    );
}

#[test]
fn the_index_must_not_map_a_tensor_to_the_wrong_shard_or_to_none() {
    let dir = sharded_with_index("wrong-shard", |v| {
        v["weight_map"][NORM] = "model-00001-of-00002.safetensors".into();
    });
    let msg = index_msg(&dir);
    assert!(msg.contains(NORM) && msg.contains("but found in"), "{msg}");
    let dir = sharded_with_index("ghost", |v| {
        v["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors".into();
    });
    let msg = index_msg(&dir);
    assert!(
        msg.contains("model.ghost.weight") && msg.contains("is not in it"),
        "{msg}"
    );
    let dir = sharded_with_index("absent-shard", |v| {
        v["weight_map"][NORM] = "model-00009-of-00009.safetensors".into();
    });
    let e = weights_err(&dir);
    assert!(
        matches!(e, WeightError::Io { .. }) && e.to_string().contains("00009"),
        "{e}"
    );
}

#[test]
fn malformed_indexes_are_named() {
    for (tag, text, want) in [
        ("empty", r#"{"weight_map": {}}"#, "is empty"),
        ("nomap", r#"{"metadata": {}}"#, "no `weight_map`"),
        (
            "notstr",
            r#"{"weight_map": {"a": 3}}"#,
            "expected a shard file name",
        ),
        ("dot", r#"{"weight_map": {"a": ".."}}"#, "plain file name"),
        (
            "slash",
            r#"{"weight_map": {"a": "/etc/passwd"}}"#,
            "plain file name",
        ),
        (
            "dup",
            r#"{"weight_map": {"a": "x", "a": "y"}}"#,
            "duplicate key `a`",
        ),
    ] {
        let cfg = tiny();
        let dir = temp_dir(&format!("index-{tag}"));
        write_config(&dir, &cfg);
        std::fs::write(dir.join("model.safetensors.index.json"), text).unwrap();
        let msg = index_msg(&dir);
        assert!(msg.contains(want), "{tag}: {msg}");
    }
}

#[test]
fn a_shard_that_is_not_a_regular_file_is_refused() {
    let dir = sharded_with_index("dir-shard", |_| {});
    let shard = dir.join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::fs::create_dir(&shard).unwrap();
    let e = weights_err(&dir);
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn a_huge_config_fails_before_the_weights_are_opened() {
    let dir = temp_dir("huge-layers");
    let mut v = tiny().to_hf_json();
    v["num_hidden_layers"] = serde_json::json!(1_000_000_000_000_000u64);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    match Model::load(CpuBackend, &dir) {
        Err(ModelError::Config(e)) => assert!(e.to_string().contains("num_hidden_layers"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("loaded"),
    }
}

/// Large tensors are scanned in parallel chunks; the first bad value is the
/// one named, whatever chunk finishes first.
#[test]
fn the_first_non_finite_value_of_a_large_tensor_is_named() {
    let n = 300_000;
    for dtype in [Dtype::F32, Dtype::BF16] {
        let mut v = vec![0.5f32; n];
        v[290_000] = f32::NAN;
        v[150_001] = f32::INFINITY;
        v[150_002] = f32::NAN;
        let dir = temp_dir(&format!("large-{dtype:?}"));
        let p = dir.join("w.safetensors");
        std::fs::write(
            &p,
            safetensors_bytes(&[("w".into(), vec![3, n / 3], v)], dtype),
        )
        .unwrap();
        let mut files = WeightFiles::open(&p).unwrap();
        let e = files.take("w", &[3, n / 3]).unwrap_err();
        assert!(
            matches!(&e, WeightError::NonFinite { index, value, .. }
            if index == &vec![1, 50_001] && value.is_infinite()),
            "{dtype:?}: {e}"
        );
    }
}
