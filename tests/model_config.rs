//! MixtralConfig parsing: transformers v4 and v5 field variants, defaults,
//! and typed errors.

use capmoe::model::{ConfigError, MixtralConfig};
use serde_json::{json, Value};

fn v4() -> Value {
    json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "max_position_embeddings": 32768,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
}

fn parse(v: &Value) -> Result<MixtralConfig, ConfigError> {
    MixtralConfig::from_json_str(&v.to_string())
}

#[test]
fn v4_config_matches_the_builtin_8x7b() {
    let c = parse(&v4()).unwrap();
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
    assert_eq!(c.eos_token_ids, vec![2]);
    let b = MixtralConfig::builtin("mixtral-8x7b").unwrap();
    assert_eq!(c, b);
    // 46.7B parameters.
    assert!((c.param_count() as f64 / 1e9 - 46.7).abs() < 0.1);
}

#[test]
fn v5_rope_parameters_and_dtype() {
    let mut v = v4();
    let m = v.as_object_mut().unwrap();
    m.remove("rope_theta");
    m.remove("torch_dtype");
    m.insert("dtype".into(), json!("float32"));
    m.insert(
        "rope_parameters".into(),
        json!({"rope_type": "default", "rope_theta": 10000.0}),
    );
    m.insert("head_dim".into(), Value::Null);
    m.insert("eos_token_id".into(), json!([2, 7]));
    let c = parse(&v).unwrap();
    assert_eq!(c.rope_theta, 1e4);
    assert_eq!(c.dtype.as_deref(), Some("float32"));
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.eos_token_ids, vec![2, 7]);
}

#[test]
fn explicit_head_dim_sliding_window_and_tied_embeddings() {
    let mut v = v4();
    let m = v.as_object_mut().unwrap();
    m.insert("head_dim".into(), json!(64));
    m.insert("sliding_window".into(), json!(4096));
    m.insert("tie_word_embeddings".into(), json!(true));
    let c = parse(&v).unwrap();
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.sliding_window, Some(4096));
    assert!(c.tie_word_embeddings);
}

#[test]
fn missing_and_invalid_fields_are_typed_errors() {
    let mut v = v4();
    v.as_object_mut().unwrap().remove("num_local_experts");
    assert!(matches!(
        parse(&v),
        Err(ConfigError::Missing("num_local_experts"))
    ));

    let mut v = v4();
    v["hidden_size"] = json!("big");
    assert!(matches!(
        parse(&v),
        Err(ConfigError::Invalid {
            field: "hidden_size",
            ..
        })
    ));

    let mut v = v4();
    v["sliding_window"] = json!(-1);
    assert!(matches!(
        parse(&v),
        Err(ConfigError::Invalid {
            field: "sliding_window",
            ..
        })
    ));

    let mut v = v4();
    v["num_key_value_heads"] = json!(5);
    assert!(matches!(parse(&v), Err(ConfigError::Inconsistent(_))));

    let mut v = v4();
    v["num_experts_per_tok"] = json!(9);
    assert!(matches!(parse(&v), Err(ConfigError::Inconsistent(_))));

    let mut v = v4();
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
    assert!(matches!(
        parse(&v),
        Err(ConfigError::Invalid {
            field: "rope_type",
            ..
        })
    ));

    let mut v = v4();
    v["model_type"] = json!("llama");
    assert!(matches!(
        parse(&v),
        Err(ConfigError::Invalid {
            field: "model_type",
            ..
        })
    ));

    assert!(matches!(
        MixtralConfig::from_json_str("[1, 2]"),
        Err(ConfigError::NotAnObject)
    ));
    assert!(matches!(
        MixtralConfig::from_json_str("{"),
        Err(ConfigError::Json(_))
    ));
    let e = MixtralConfig::builtin("huge").unwrap_err();
    assert!(e.to_string().contains("tiny"), "{e}");
}

#[test]
fn builtins_round_trip_through_hf_json() {
    for name in capmoe::model::BUILTIN_NAMES {
        let c = MixtralConfig::builtin(name).unwrap();
        let back = MixtralConfig::from_json_str(&c.to_hf_json().to_string()).unwrap();
        assert_eq!(back, c, "{name}");
    }
}
