//! Replays every committed fuzz input through the fuzz targets' bodies (the
//! same code, tests/fuzz_harness/mod.rs): the seed corpora under
//! fuzz/corpus/<target>/ and every crash found, kept under
//! tests/fuzz_regressions/<target>/. A panic fails the test, naming the file.

mod fuzz_harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    replay_dirs(target, run, &["fuzz/corpus", "tests/fuzz_regressions"]);
}

fn replay_dirs(target: &str, run: fn(&[u8]), dirs: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in dirs.iter().map(|d| root.join(d).join(target)) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "fuzz target {target} panics on {}", p.display());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for fuzz target {target}");
}

#[test]
fn npy_inputs() {
    replay("npy", fuzz_harness::npy);
}

#[test]
fn config_inputs() {
    replay("config", fuzz_harness::config);
}

#[test]
fn safetensors_inputs() {
    replay("safetensors", fuzz_harness::safetensors);
    fuzz_harness::remove_scratch();
}

#[test]
fn routing_inputs() {
    replay("routing", fuzz_harness::routing);
}

/// The seeds that are valid checkpoints do load (so the target reaches past
/// the parsers).
#[test]
fn valid_safetensors_seeds_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/safetensors");
    let single = std::fs::read(root.join("single_f32")).unwrap();
    let dir = std::env::temp_dir().join(format!("capmoe-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), &single[1..]).unwrap();
    let files = capmoe::model::WeightFiles::open(&dir).unwrap();
    files.check(&fuzz_harness::micro_config()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
