//! Reports and figures are written atomically (temp file in the same
//! directory, then rename): a run leaves no temporary files, replaces the
//! previous files whole, and a write that fails leaves the old file and no
//! debris (issue 11, "nothing is lost").

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench(out: &Path) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .args([
            "bench",
            "--config",
            "tiny",
            "--skew",
            "uniform",
            "--batch",
            "1",
            "--seq-len",
            "8",
            "--iters",
            "1",
            "--policies",
            "none,drop:score",
            "--capacity-factors",
            "1.0",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capmoe-atomic-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_bench_replaces_its_files_whole_and_leaves_no_temporaries() {
    let d = dir("ok");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("report.json"), "old").unwrap();
    let (code, err) = bench(&d);
    assert_eq!(code, 0, "{err}");
    let want = [
        "fidelity.png",
        "load.png",
        "report.json",
        "report.md",
        "speedup.png",
    ];
    assert_eq!(names(&d), want, "only the outputs, no temporary files");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    assert!(json["cases"].is_array());
    for png in ["load.png", "speedup.png", "fidelity.png"] {
        let b = std::fs::read(d.join(png)).unwrap();
        assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"), "{png} is a whole PNG");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_figure_that_cannot_be_replaced_is_named_and_leaves_no_debris() {
    let d = dir("blocked");
    // A non-empty directory where load.png goes: the rename over it fails.
    std::fs::create_dir_all(d.join("load.png").join("x")).unwrap();
    let (code, err) = bench(&d);
    assert!(code != 0 && code != 101, "exit {code}: {err}");
    assert!(err.contains("load.png"), "{err}");
    assert!(d.join("load.png").join("x").is_dir(), "old entry kept");
    let debris: Vec<String> = names(&d)
        .into_iter()
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(debris.is_empty(), "temporary files left: {debris:?}");
    let _ = std::fs::remove_dir_all(&d);
}
