//! `capmoe eval` end to end: on the tiny parity fixture given a generated char-level
//! tokenizer.json, and on a committed trained model when one is in bench/models/.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
mod cli_common;
use cli_common::capmoe;

/// The characters of the generated vocabulary: id = index (the fixture has 128 ids).
const CHARS: &str = "\n abcdefghijklmnopqrstuvwxyz0123456789=+-";

/// A char-level BPE tokenizer.json over [`CHARS`], as the training tools write it.
fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, Value> = CHARS
        .chars()
        .enumerate()
        .map(|(i, c)| (c.to_string(), json!(i)))
        .chain(std::iter::once(("<unk>".to_string(), json!(CHARS.len()))))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}

fn ids_of(s: &str) -> Vec<u32> {
    s.chars().map(|c| CHARS.find(c).unwrap() as u32).collect()
}

/// Deterministic examples of two tasks; lengths vary so some straddle rows.
fn examples(n: usize) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let w: String = (0..1 + i % 7)
                .map(|j| (b'a' + ((i * 7 + j * 3) % 26) as u8) as char)
                .collect();
            if i % 2 == 0 {
                ("rev".into(), format!("rev {w}="), w.chars().rev().collect())
            } else {
                (
                    "add".into(),
                    format!("{}+{}=", i % 10, i % 7),
                    format!("{}", i % 10 + i % 7),
                )
            }
        })
        .collect()
}

fn jsonl(ex: &[(String, String, String)]) -> String {
    ex.iter()
        .map(|(t, p, a)| format!("{}\n", json!({"task": t, "prompt": p, "answer": a})))
        .collect()
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// A fresh checkpoint directory: the tiny bf16 fixture, a tokenizer.json and eval.jsonl.
fn model_dir(name: &str, with_tokenizer: bool, data: &str) -> TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-mixtral/bf16");
    let dir = std::env::temp_dir().join(format!("capmoe-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    if with_tokenizer {
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    }
    std::fs::write(dir.join("eval.jsonl"), data).unwrap();
    TempDir(dir)
}

fn eval_json(dir: &Path, extra: &[&str]) -> Value {
    let d = dir.to_str().unwrap();
    let mut args = vec!["eval", "--model", d, "--format", "json"];
    args.extend_from_slice(extra);
    let (code, out, err) = capmoe(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Examples whose tokens lie in one row of a full batch, computed from the text alone.
fn expected_scored(ex: &[(String, String, String)], rows: usize, seq_len: usize) -> usize {
    let total: usize = ex.iter().map(|(_, p, a)| p.len() + a.len() + 1).sum();
    let used = total / seq_len / rows * rows * seq_len;
    let mut start = 0;
    let mut n = 0;
    for (_, p, a) in ex {
        let end = start + p.len() + a.len() + 1;
        n += usize::from(end <= used && start / seq_len == (end - 1) / seq_len);
        start = end;
    }
    n
}

#[test]
fn json_has_one_result_per_run_and_none_first() {
    let ex = examples(40);
    let dir = model_dir("shape", true, &jsonl(&ex));
    let v = eval_json(
        &dir,
        &[
            "--rows",
            "2",
            "--seq-len",
            "32",
            "--policies",
            "drop:score,drop:order",
            "--capacity-factors",
            "1.0,1.5",
        ],
    );
    let r = v["results"].as_array().unwrap();
    let runs: Vec<(String, Value)> = r
        .iter()
        .map(|x| {
            (
                x["policy"].as_str().unwrap().to_string(),
                x["gamma"].clone(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        vec![
            ("none".into(), Value::Null),
            ("drop:score".into(), json!(1.0)),
            ("drop:score".into(), json!(1.5)),
            ("drop:order".into(), json!(1.0)),
            ("drop:order".into(), json!(1.5)),
        ]
    );
    let want = expected_scored(&ex, 2, 32);
    assert!(want > 0 && want < ex.len());
    assert_eq!(v["scored"], json!(want));
    assert_eq!(v["tokens_per_forward"], json!(64));
    for x in r {
        assert_eq!(x["scored"], json!(want));
        let counts = x["per_task_counts"].as_object().unwrap();
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["add", "rev"]);
        let c = x["correct"].as_u64().unwrap() as f64;
        assert!((x["accuracy"].as_f64().unwrap() - c / want as f64).abs() < 1e-12);
        assert_eq!(x["load_max_over_mean"].as_array().unwrap().len(), 2); // layers
        for k in [
            "answer_nll",
            "answer_ppl",
            "kl_vs_none",
            "dropped_pct",
            "rerouted_pct",
            "gate_mass_kept",
        ] {
            assert!(x[k].as_f64().unwrap().is_finite(), "{k}");
        }
    }
    assert_eq!(r[0]["kl_vs_none"], json!(0.0));
    assert_eq!(r[0]["dropped_pct"], json!(0.0));
    // At gamma 1.0 over 64 tokens some expert overflows on this fixture.
    assert!(r[1]["dropped_pct"].as_f64().unwrap() > 0.0);
    assert!(r[1]["gate_mass_kept"].as_f64().unwrap() < 1.0);
    assert!(r[1]["kl_vs_none"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_capacity_that_never_binds_reproduces_none() {
    let ex = examples(30);
    let dir = model_dir("loose", true, &jsonl(&ex));
    let v = eval_json(
        &dir,
        &[
            "--rows",
            "2",
            "--seq-len",
            "24",
            "--policies",
            "drop:score",
            "--capacity-factors",
            "4.0",
        ],
    );
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 2);
    // C = ceil(4 * T * k / E) = 2T: no expert can overflow.
    for k in ["correct", "answer_nll", "per_task_counts"] {
        assert_eq!(r[0][k], r[1][k], "{k}");
    }
    assert_eq!(r[1]["dropped_pct"], json!(0.0));
    assert_eq!(r[1]["kl_vs_none"], json!(0.0));
}

/// Under `none` with one row per forward, the answer NLL and correct count follow from
/// `capmoe logits` of each row: the scoring checked through another path.
#[test]
fn none_scores_agree_with_per_row_logits() {
    let ex = examples(24);
    let dir = model_dir("rows", true, &jsonl(&ex));
    let seq_len = 20;
    let v = eval_json(
        &dir,
        &["--rows", "1", "--seq-len", "20", "--policies", "none"],
    );
    let r = &v["results"][0];
    let stream: Vec<u32> = ex
        .iter()
        .flat_map(|(_, p, a)| ids_of(&format!("{p}{a}\n")))
        .collect();
    let d = dir.to_str().unwrap();
    let rows: Vec<Vec<Vec<f64>>> = stream
        .chunks_exact(seq_len)
        .map(|row| {
            let ids: Vec<String> = row.iter().map(u32::to_string).collect();
            let (code, out, err) =
                capmoe(&["logits", "--model", d, "--ids", &ids.join(","), "--json"]);
            assert_eq!(code, 0, "{err}");
            let v: Value = serde_json::from_str(&out).unwrap();
            v["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    l.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect()
        })
        .collect();
    let (mut start, mut correct, mut scored, mut nll, mut pos) = (0usize, 0, 0, 0.0f64, 0usize);
    for (_, p, a) in &ex {
        let (ans, end) = (start + p.len(), start + p.len() + a.len() + 1);
        if end <= rows.len() * seq_len && start / seq_len == (end - 1) / seq_len {
            let mut ok = true;
            for q in ans..end {
                let l = &rows[(q - 1) / seq_len][(q - 1) % seq_len];
                let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
                ok &= best as u32 == stream[q];
                let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
                nll += lse - l[stream[q] as usize];
                pos += 1;
            }
            correct += usize::from(ok);
            scored += 1;
        }
        start = end;
    }
    assert_eq!(r["scored"], json!(scored));
    assert_eq!(r["correct"], json!(correct));
    let got = r["answer_nll"].as_f64().unwrap();
    assert!(
        (got - nll / pos as f64).abs() < 1e-4,
        "{got} vs {}",
        nll / pos as f64
    );
}

#[test]
fn out_writes_the_report_and_the_figure() {
    let ex = examples(30);
    let dir = model_dir("out", true, &jsonl(&ex));
    let out = dir.join("results");
    let (d, o) = (dir.to_str().unwrap(), out.to_str().unwrap());
    let (code, table, err) = capmoe(&[
        "eval",
        "--model",
        d,
        "--rows",
        "2",
        "--seq-len",
        "24",
        "--policies",
        "drop:score,expand:local",
        "--capacity-factors",
        "1.0,2.0",
        "--out",
        o,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("expand:local"), "{table}");
    let v: Value = serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 5);
    assert_eq!(v["ranks"], json!(4)); // E = 4: the largest of 8, 4, 2, 1 dividing it
    let png = std::fs::read(out.join("accuracy.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

fn eval_err(dir: &Path, extra: &[&str]) -> String {
    let d = dir.to_str().unwrap();
    let mut args = vec!["eval", "--model", d];
    args.extend_from_slice(extra);
    let (code, _, err) = capmoe(&args);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn errors_are_clear() {
    let data = jsonl(&examples(30));
    let no_tok = model_dir("notok", false, &data);
    assert!(eval_err(&no_tok, &[]).contains("no tokenizer.json"));
    let dir = model_dir("errs", true, &data);
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"task\":\"a\",\"prompt\":\"x=\",\"answer\":\"y\"}\n{\"prompt\":\"x\"}\n",
    )
    .unwrap();
    let e = eval_err(&dir, &["--data", bad.to_str().unwrap()]);
    assert!(e.contains("bad.jsonl:2") && e.contains("\"task\""), "{e}");
    std::fs::write(&bad, "\n").unwrap();
    assert!(eval_err(&dir, &["--data", bad.to_str().unwrap()]).contains("holds no example"));
    std::fs::write(
        &bad,
        "{\"task\":\"a\",\"prompt\":\"X=\",\"answer\":\"y\"}\n",
    )
    .unwrap();
    assert!(eval_err(&dir, &["--data", bad.to_str().unwrap()]).contains("does not know"));
    assert!(eval_err(&dir, &["--seq-len", "257"]).contains("max_position_embeddings"));
    let e = eval_err(&dir, &["--rows", "100000", "--seq-len", "256"]);
    assert!(e.contains("exceeds the limit"), "{e}");
    let e = eval_err(&dir, &["--rows", &usize::MAX.to_string(), "--seq-len", "2"]);
    assert!(e.contains("exceeds the limit"), "{e}");
    assert!(
        eval_err(&dir, &["--rows", "64", "--seq-len", "128"]).contains("fewer than one forward")
    );
    assert!(eval_err(&dir, &["--seq-len", "4", "--rows", "1"]).contains("raise --seq-len"));
    assert!(
        eval_err(&dir, &["--rows", "2", "--seq-len", "24", "--ranks", "3"]).contains("must divide")
    );
    assert!(eval_err(&dir, &["--data", "/nonexistent.jsonl"]).contains("cannot read"));
}

#[test]
fn prompt_text_equals_the_same_ids() {
    let dir = model_dir("prompt", true, "");
    let d = dir.to_str().unwrap();
    let ids: Vec<String> = ids_of("rev abc=").iter().map(u32::to_string).collect();
    let by_ids = capmoe(&["logits", "--model", d, "--ids", &ids.join(","), "--json"]);
    let by_text = capmoe(&["logits", "--model", d, "--prompt", "rev abc=", "--json"]);
    assert_eq!(by_ids.0, 0, "{}", by_ids.2);
    assert_eq!(by_ids.1, by_text.1);
    let (code, out, err) = capmoe(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "rev abc=",
        "--max-new-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let gen: Vec<u32> = v["generated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let text: String = gen
        .iter()
        .map(|&i| {
            CHARS
                .chars()
                .nth(i as usize)
                .map_or(String::new(), String::from)
        })
        .collect();
    // Ids past the generated vocabulary decode to nothing.
    assert_eq!(v["text"], json!(text));
    let (code, _, err) = capmoe(&["logits", "--model", "tiny", "--prompt", "abc"]);
    assert_eq!(code, 2);
    assert!(err.contains("checkpoint directory"), "{err}");
}

/// A committed model reproduces its committed slice results (bench/models/NAME/eval-slice.json,
/// written from the PyTorch reference, tools/train/eval_ref.py) within 1 point of accuracy.
#[test]
fn committed_models_reproduce_their_slice_accuracy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/models");
    let mut found = 0;
    for name in ["mixtral-like", "fine-grained"] {
        let dir = root.join(name);
        let slice = dir.join("eval-slice.json");
        if !dir.join("model.safetensors").is_file() || !slice.is_file() {
            eprintln!(
                "skipping {name}: no {} with model.safetensors",
                slice.display()
            );
            continue;
        }
        found += 1;
        let s: Value = serde_json::from_slice(&std::fs::read(&slice).unwrap()).unwrap();
        let num = |k: &str| s[k].as_u64().unwrap().to_string();
        for run in s["runs"].as_array().unwrap() {
            let policy = run["policy"].as_str().unwrap();
            let mut args = vec![
                "--limit".to_string(),
                num("limit"),
                "--rows".into(),
                num("rows"),
            ];
            args.extend([
                "--seq-len".into(),
                num("seq_len"),
                "--policies".into(),
                policy.into(),
            ]);
            if let Some(g) = run["gamma"].as_f64() {
                args.extend(["--capacity-factors".into(), g.to_string()]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let v = eval_json(&dir, &a);
            let got = v["results"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(got["policy"], run["policy"]);
            assert_eq!(got["scored"], run["scored"], "{name} {policy}");
            let (g, w) = (
                got["accuracy"].as_f64().unwrap(),
                run["accuracy"].as_f64().unwrap(),
            );
            assert!(
                (g - w).abs() <= 0.01,
                "{name} {policy} {:?}: accuracy {g} vs committed {w}",
                run["gamma"]
            );
        }
    }
    if found == 0 {
        eprintln!(
            "no committed model in {}: nothing to reproduce",
            root.display()
        );
    }
}
