//! `capmoe logits` and `capmoe generate` end to end on the parity fixture.

use serde_json::Value;
mod cli_common;
use cli_common::capmoe;

fn fixture() -> String {
    format!("{}/tests/fixtures/tiny-mixtral", env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}/reference.json", fixture())).unwrap())
        .unwrap()
}

#[test]
fn logits_json_matches_the_reference() {
    let r = reference();
    let model = format!("{}/f32", fixture());
    let (code, out, err) = capmoe(&["logits", "--model", &model, "--ids", "1,5,9,3", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got = v["logits"].as_array().unwrap();
    let want = r["logits_f32"][0].as_array().unwrap();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_array().unwrap(), w.as_array().unwrap());
        assert_eq!(g.len(), 128);
        for (a, b) in g.iter().zip(w) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-4);
        }
    }
}

#[test]
fn generate_json_matches_the_reference_and_policies_run() {
    let r = reference();
    let g = &r["generate"][0];
    let model = format!("{}/bf16", fixture());
    let f32_model = format!("{}/f32", fixture());
    let (code, out, err) = capmoe(&[
        "generate",
        "--model",
        &f32_model,
        "--ids",
        "1,5,9,3",
        "--max-new-tokens",
        "8",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["generated"], g["generated"]);
    let (code, out, err) = capmoe(&[
        "generate",
        "--model",
        &model,
        "--ids",
        "1,5,9,3",
        "--max-new-tokens",
        "4",
        "--policy",
        "reroute:optimal",
        "--capacity-factor",
        "1.0",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["generated"].is_array());
}

#[test]
fn builtin_models_and_errors() {
    let (code, out, err) = capmoe(&[
        "logits", "--model", "tiny", "--seed", "3", "--ids", "1,2", "--skew", "1.5", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("{\"logits\":[["));
    let (code, _, err) = capmoe(&["logits", "--model", "tiny", "--ids", "1,500"]);
    assert_eq!(code, 2);
    assert!(err.contains("out of range"), "{err}");
    let (code, _, err) = capmoe(&["logits", "--model", "nope", "--ids", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("built-in"), "{err}");
    let (code, _, err) = capmoe(&[
        "generate",
        "--model",
        "tiny",
        "--ids",
        "1",
        "--policy",
        "expand:local",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--ranks"), "{err}");
}

/// Without the `cuda` feature `--device cuda` is a usage error that says what
/// it needs; `--device cpu` is the default's behaviour.
#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_is_a_clear_error() {
    for cmd in ["logits", "generate"] {
        let (code, _, err) = capmoe(&[cmd, "--model", "tiny", "--ids", "1,2", "--device", "cuda"]);
        assert_ne!(code, 0);
        assert!(err.contains("--features cuda"), "{err}");
    }
    let (code, out, err) = capmoe(&[
        "generate",
        "--model",
        "tiny",
        "--ids",
        "1,2",
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, want, _) = capmoe(&[
        "generate",
        "--model",
        "tiny",
        "--ids",
        "1,2",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(out, want);
}
