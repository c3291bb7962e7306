//! Hostile config.json files: each field checked for type and range (in the
//! precision it is used in), relations between fields, and repeated keys.

use capmoe::model::{ConfigError, MixtralConfig};
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 32768,
        "bos_token_id": 1, "eos_token_id": 2
    })
}

fn with(key: &str, v: Value) -> Result<MixtralConfig, ConfigError> {
    let mut c = base();
    c[key] = v;
    MixtralConfig::from_json_str(&c.to_string())
}

/// The error's message, checked to name `words`.
fn err_naming(r: Result<MixtralConfig, ConfigError>, words: &[&str]) -> ConfigError {
    let e = r.expect_err("a hostile config was accepted");
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "`{msg}` does not name `{w}`");
    }
    e
}

#[test]
fn empty_and_bad_token_id_lists_are_errors_not_panics() {
    let e = err_naming(
        with("bos_token_id", json!([])),
        &["bos_token_id", "[]", "token id"],
    );
    assert!(matches!(
        e,
        ConfigError::Invalid {
            field: "bos_token_id",
            ..
        }
    ));
    err_naming(
        with("bos_token_id", json!([1, 2])),
        &["bos_token_id", "exactly one"],
    );
    err_naming(
        with("eos_token_id", json!([])),
        &["eos_token_id", "non-empty"],
    );
    err_naming(with("eos_token_id", json!([2, -1])), &["eos_token_id"]);
    err_naming(
        with("eos_token_id", json!(32000)),
        &["32000", "vocab_size 32000"],
    );
    err_naming(
        with("bos_token_id", json!(4294967296u64)),
        &["bos_token_id"],
    );
    assert_eq!(
        with("bos_token_id", json!([7])).unwrap().bos_token_id,
        Some(7)
    );
}

#[test]
fn huge_sizes_are_bounded_before_any_allocation() {
    for (key, v) in [
        ("num_hidden_layers", 1_000_000_000_000_000u64),
        ("vocab_size", 1 << 40),
        ("hidden_size", 1 << 20),
        ("intermediate_size", u64::MAX),
        ("num_local_experts", 1000),
        ("max_position_embeddings", 1 << 40),
    ] {
        let e = err_naming(with(key, json!(v)), &[key, &v.to_string(), "expected 1..="]);
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    }
    err_naming(
        with("num_hidden_layers", json!(1e15)),
        &["num_hidden_layers", "positive integer"],
    );
    err_naming(
        with("max_position_embeddings", json!(0)),
        &["max_position_embeddings"],
    );
}

#[test]
fn eps_and_theta_are_checked_as_float32() {
    // 1e-50 is positive in f64 but 0 in f32; 1e39 is infinite in f32.
    for v in [
        json!(1e-50),
        json!(1e39),
        json!(0),
        json!(-1e-5),
        json!("1e-5"),
    ] {
        err_naming(with("rms_norm_eps", v), &["rms_norm_eps", "float32"]);
    }
    for v in [json!(1e39), json!(0), json!(-10000), json!(1e-40)] {
        err_naming(with("rope_theta", v), &["rope_theta", "float32"]);
    }
    let mut c = base();
    c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e300});
    err_naming(
        MixtralConfig::from_json_str(&c.to_string()),
        &["rope_theta"],
    );
}

#[test]
fn relations_between_fields() {
    err_naming(
        with("num_experts_per_tok", json!(9)),
        &["num_experts_per_tok 9", "num_local_experts 8"],
    );
    err_naming(
        with("num_attention_heads", json!(3)),
        &["hidden_size 4096", "num_attention_heads 3", "divide"],
    );
    err_naming(
        with("num_key_value_heads", json!(5)),
        &["num_key_value_heads 5"],
    );
    err_naming(with("head_dim", json!(7)), &["head_dim 7", "even"]);
    // With an explicit head_dim the heads need not divide hidden_size.
    let mut c = base();
    c["num_attention_heads"] = json!(3);
    c["num_key_value_heads"] = json!(1);
    c["head_dim"] = json!(128);
    assert_eq!(
        MixtralConfig::from_json_str(&c.to_string())
            .unwrap()
            .head_dim,
        128
    );
}

#[test]
fn wrong_types_are_named() {
    err_naming(
        with("model_type", json!(5)),
        &["model_type", "5", "mixtral"],
    );
    err_naming(
        with("rope_scaling", json!("yarn")),
        &["rope_scaling", "object"],
    );
    err_naming(
        with("rope_parameters", json!([1])),
        &["rope_parameters", "object"],
    );
    err_naming(
        with("tie_word_embeddings", json!("yes")),
        &["tie_word_embeddings"],
    );
    err_naming(with("hidden_act", json!("gelu")), &["hidden_act", "silu"]);
    err_naming(with("sliding_window", json!(0)), &["sliding_window"]);
}

#[test]
fn repeated_keys_are_refused_at_any_depth() {
    let text = base().to_string().replacen('{', "{\"hidden_size\": 8, ", 1);
    let e = err_naming(
        MixtralConfig::from_json_str(&text),
        &["duplicate key `hidden_size`"],
    );
    assert!(matches!(e, ConfigError::Json(_)));
    let mut c = base();
    c["rope_parameters"] = json!({"rope_type": "default"});
    let text = c
        .to_string()
        .replace("\"rope_type\"", "\"rope_theta\":1.0,\"rope_theta\"");
    err_naming(
        MixtralConfig::from_json_str(&text),
        &["duplicate key `rope_theta`"],
    );
}

#[test]
fn config_paths_that_are_not_small_regular_files_are_refused() {
    if std::path::Path::new("/dev/zero").exists() {
        let e = MixtralConfig::from_path(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
    let p = std::env::temp_dir().join(format!("capmoe-big-config-{}.json", std::process::id()));
    std::fs::File::create(&p)
        .unwrap()
        .set_len(17 << 20)
        .unwrap(); // sparse
    let e = MixtralConfig::from_path(&p).unwrap_err();
    assert!(e.to_string().contains("expected at most 16777216"), "{e}");
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn positions_past_max_position_embeddings_are_errors() {
    let mut c = MixtralConfig::builtin("tiny").unwrap();
    c.max_position_embeddings = 16;
    c.check_positions(0, 16).unwrap();
    c.check_positions(15, 1).unwrap();
    let e = c.check_positions(15, 2).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::PositionOutOfRange {
                start: 15,
                end: 17,
                max: 16
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("max_position_embeddings = 16"),
        "{e}"
    );
    assert!(c.check_positions(usize::MAX, usize::MAX).is_err());
    // A 10-token prompt plus 7 new tokens feeds 16 positions: fine; 8 is not.
    c.check_generation(10, 7).unwrap();
    assert!(c.check_generation(10, 8).is_err());
    assert!(c.check_generation(3, usize::MAX).is_err());
    assert!(c.check_generation(17, 0).is_err());
}
