//! End-to-end tests of `capmoe route` and `capmoe trace`.

use capmoe::io::npy;
use std::path::PathBuf;
use std::process::{Command, Output};

fn capmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .args(args)
        .output()
        .expect("run capmoe")
}

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capmoe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn json_has_exactly_the_contract_keys() {
    // 3 tokens, 2 experts: all prefer expert 0.
    let f = temp(
        "q.npy",
        &npy::to_bytes(&[2.0, 0.0, 1.0, 0.0, 3.0, 0.0], 3, 2),
    );
    let o = capmoe(&[
        "route",
        "--logits",
        f.to_str().unwrap(),
        "--top-k",
        "1",
        "--policy",
        "drop:score",
        "--capacity-factor",
        "1.0",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "tokens",
        "experts",
        "top_k",
        "capacity",
        "assignments",
        "load",
        "dropped",
        "rerouted",
        "gate_mass_kept",
    ];
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(v["capacity"], 2); // ceil(1.0 * 3 * 1 / 2)
    assert_eq!(v["load"], serde_json::json!([2, 0]));
    assert_eq!(v["dropped"], 1);
    // Token 1 (lowest p for expert 0) is the one dropped.
    assert_eq!(v["assignments"][1], serde_json::json!([]));
    assert_eq!(v["assignments"][2][0]["expert"], 0);
    assert_eq!(v["assignments"][2][0]["weight"], 1.0);
}

#[test]
fn none_reports_null_capacity_and_table_renders() {
    let f = temp("n.npy", &npy::to_bytes(&[2.0, 0.0, 1.0, 0.0], 2, 2));
    let o = capmoe(&[
        "route",
        "--logits",
        f.to_str().unwrap(),
        "--top-k",
        "1",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["capacity"].is_null());
    let o = capmoe(&[
        "route",
        "--logits",
        f.to_str().unwrap(),
        "--top-k",
        "1",
        "--policy",
        "reroute:optimal",
    ]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        s.contains("max/mean load") && s.contains("gate mass kept") && s.contains('█'),
        "{s}"
    );
}

#[test]
fn usage_errors_are_clear() {
    let f = temp("u.npy", &npy::to_bytes(&[0.0; 8], 2, 4));
    let path = f.to_str().unwrap();
    let o = capmoe(&[
        "route",
        "--logits",
        path,
        "--top-k",
        "1",
        "--policy",
        "expand:local",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ranks"), "{}", stderr(&o));
    let o = capmoe(&[
        "route",
        "--logits",
        path,
        "--top-k",
        "1",
        "--capacity-factor",
        "1.5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("policy `none` has no capacity"),
        "{}",
        stderr(&o)
    );
    let o = capmoe(&["route", "--logits", path, "--top-k", "9"]);
    assert!(
        stderr(&o).contains("top-k = 9 is larger than the number of experts 4"),
        "{}",
        stderr(&o)
    );
    let o = capmoe(&[
        "route",
        "--logits",
        path,
        "--top-k",
        "1",
        "--policy",
        "drop:best",
    ]);
    assert!(stderr(&o).contains("unknown policy"), "{}", stderr(&o));
    let o = capmoe(&["route", "--logits", path]);
    assert!(
        stderr(&o).contains("--top-k K is required"),
        "{}",
        stderr(&o)
    );
    let o = capmoe(&["route", "--logits", "/nonexistent.npy", "--top-k", "1"]);
    assert!(
        stderr(&o).contains("cannot read /nonexistent.npy"),
        "{}",
        stderr(&o)
    );
    let mut bytes = npy::to_bytes(&[0.0; 8], 2, 4);
    bytes.truncate(bytes.len() - 3);
    let o = capmoe(&[
        "route",
        "--logits",
        temp("t.npy", &bytes).to_str().unwrap(),
        "--top-k",
        "1",
    ]);
    assert!(stderr(&o).contains("needs 32"), "{}", stderr(&o));
    let o = capmoe(&[
        "route",
        "--logits",
        temp("nan.npy", &npy::to_bytes(&[0.0, f32::NAN], 1, 2))
            .to_str()
            .unwrap(),
        "--top-k",
        "1",
    ]);
    assert!(
        stderr(&o).contains("token 0, expert 1 is NaN"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_lists_every_policy() {
    let o = capmoe(&["route", "--help"]);
    let s = String::from_utf8_lossy(&o.stdout);
    for p in [
        "none",
        "drop:score",
        "drop:order",
        "drop:reverse-order",
        "drop:random",
        "reroute:next-best",
        "reroute:optimal",
        "expand:local",
    ] {
        assert!(s.contains(p), "--help misses {p}");
    }
}

#[test]
fn trace_writes_a_routable_file() {
    let dir = std::env::temp_dir().join(format!("capmoe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("trace.npy");
    let o = capmoe(&[
        "trace",
        "--tokens",
        "64",
        "--experts",
        "8",
        "--out",
        f.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = npy::read_matrix(&f).unwrap();
    assert_eq!((m.rows, m.cols), (64, 8));
    let o = capmoe(&[
        "trace",
        "--tokens",
        "64",
        "--experts",
        "8",
        "--skew",
        "olmoe",
        "--out",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("out of reach"), "{}", stderr(&o));
}

#[test]
fn rank_flags_that_would_change_nothing_are_refused() {
    let f = temp("r.npy", &npy::to_bytes(&[0.0; 8], 2, 4));
    let path = f.to_str().unwrap();
    let base = ["route", "--logits", path, "--top-k", "1"];
    let run = |extra: &[&str]| capmoe(&[&base[..], extra].concat());
    // No capacity, so nothing to share per rank.
    let o = run(&["--capacity-scope", "rank", "--ranks", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--capacity-scope rank"),
        "{}",
        stderr(&o)
    );
    // Ranks matter only for rank scope and expand:local.
    for extra in [
        &["--ranks", "2"][..],
        &["--policy", "drop:score", "--ranks", "2"][..],
    ] {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&o).contains("changes nothing"), "{}", stderr(&o));
    }
    // Where ranks matter they are accepted.
    for extra in [
        &[
            "--policy",
            "drop:score",
            "--ranks",
            "2",
            "--capacity-scope",
            "rank",
        ][..],
        &["--policy", "expand:local", "--ranks", "2"][..],
    ] {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
    }
}
