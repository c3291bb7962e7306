use super::*;
use crate::expert::variants::by_name;
use std::cell::RefCell;

/// A timing error of the fake timer, or the tuner's own.
#[derive(Debug)]
enum TestErr {
    Launch(&'static str),
    Tune(ExpertError),
}
impl From<ExpertError> for TestErr {
    fn from(e: ExpertError) -> Self {
        Self::Tune(e)
    }
}
impl fmt::Display for TestErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Launch(n) => write!(f, "launch of {n} failed"),
            Self::Tune(e) => e.fmt(f),
        }
    }
}

fn v(name: &str) -> &'static Variant {
    by_name(name).unwrap()
}
fn key() -> TuneKey {
    TuneKey::new(9, 0, 8, 28672, 4096, 17)
}
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("capmoe-tune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
/// A fake timer from a table of name -> microseconds (absent: fails),
/// counting its calls.
fn timer<'a>(
    table: &'a [(&'static str, f64)],
    calls: &'a RefCell<Vec<&'static str>>,
) -> impl FnMut(&Variant) -> Result<f64, TestErr> + 'a {
    move |var: &Variant| {
        calls.borrow_mut().push(var.name);
        table
            .iter()
            .find(|(n, _)| *n == var.name)
            .map(|&(_, t)| t)
            .ok_or(TestErr::Launch(var.name))
    }
}

const A: &str = "sm90_coop_128x128x64_c1x1";
const B: &str = "sm90_pp_64x128x64_c1x1";
const C: &str = "sm80_64x128x64_s3";

#[test]
fn buckets_are_powers_of_two_within_bounds() {
    assert_eq!(token_bucket(0), 1);
    assert_eq!(token_bucket(4096), 4096);
    assert_eq!(token_bucket(4097), 8192);
    assert_eq!(token_bucket(MAX_BUCKET + 1), MAX_BUCKET);
    assert_eq!(token_bucket(usize::MAX), MAX_BUCKET);
    assert_eq!(key().bucket, 32);
    assert_eq!(TuneKey::new(8, 6, 1, 8, 8, 1).arch, "sm86");
}

#[test]
fn slugs_and_paths() {
    assert_eq!(gpu_slug("NVIDIA H200"), "nvidia-h200");
    assert_eq!(
        gpu_slug(" NVIDIA  A100-SXM4-80GB "),
        "nvidia-a100-sxm4-80gb"
    );
    assert_eq!(gpu_slug("?"), "unknown-gpu");
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let file = format!("tune-nvidia-h200-{CRATE_VERSION}.json");
    let p = resolve_path(
        env(&[("CAPMOE_TUNE_CACHE", "/x/t.json"), ("HOME", "/h")]),
        "NVIDIA H200",
    );
    assert_eq!(p.unwrap(), PathBuf::from("/x/t.json"));
    let p = resolve_path(
        env(&[
            ("CAPMOE_TUNE_CACHE", ""),
            ("XDG_CACHE_HOME", "/c"),
            ("HOME", "/h"),
        ]),
        "NVIDIA H200",
    );
    assert_eq!(p.unwrap(), Path::new("/c/capmoe").join(&file));
    let p = resolve_path(
        env(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")]),
        "NVIDIA H200",
    );
    assert_eq!(p.unwrap(), Path::new("/h/.cache/capmoe").join(&file));
    let e = resolve_path(env(&[]), "NVIDIA H200").unwrap_err();
    assert_eq!(e, ExpertError::NoCacheDir);
}

#[test]
fn times_every_candidate_and_picks_the_fastest() {
    let mut cache = TuneCache::empty("/nonexistent/never-saved.json", "gpu");
    let calls = RefCell::new(vec![]);
    let table = [(A, 30.0), (B, 20.0), (C, 25.0)];
    let c = cache
        .choose(&key(), &[v(C), v(A), v(B)], timer(&table, &calls))
        .unwrap();
    assert_eq!((c.variant.name, c.micros, c.cached), (B, 20.0, false));
    // Timed in VARIANTS order, each once.
    assert_eq!(*calls.borrow(), [A, B, C]);
    let e = cache.get(&key()).unwrap();
    assert_eq!(e.variant, B);
    assert_eq!(e.timings.len(), 3);
    assert!(e.failures.is_empty());

    // The cached choice answers without timing.
    calls.borrow_mut().clear();
    let c = cache
        .choose(&key(), &[v(A), v(B)], timer(&table, &calls))
        .unwrap();
    assert_eq!((c.variant.name, c.cached), (B, true));
    assert!(calls.borrow().is_empty());

    // A cached variant that is no candidate (not compiled here): retime.
    let c = cache
        .choose(&key(), &[v(A), v(C)], timer(&table, &calls))
        .unwrap();
    assert_eq!((c.variant.name, c.cached), (C, false));
    assert_eq!(*calls.borrow(), [A, C]);
    assert_eq!(cache.get(&key()).unwrap().variant, C);

    // Removing the entry forces a retime.
    calls.borrow_mut().clear();
    assert!(cache.remove(&key()).is_some());
    let c = cache
        .choose(&key(), &[v(A), v(B)], timer(&table, &calls))
        .unwrap();
    assert_eq!((c.variant.name, c.cached), (B, false));
    assert_eq!(*calls.borrow(), [A, B]);
}

#[test]
fn an_in_memory_cache_saves_nothing() {
    let mut cache = TuneCache::in_memory("gpu");
    let calls = RefCell::new(vec![]);
    cache
        .choose(&key(), &[v(A)], timer(&[(A, 1.0)], &calls))
        .unwrap();
    assert_eq!((cache.path(), cache.entries().count()), (None, 1));
    cache.save().unwrap();
}

#[test]
fn ties_go_to_the_earlier_variant() {
    let calls = RefCell::new(vec![]);
    let table = [(A, 10.0), (B, 10.0), (C, 10.0)];
    for cands in [[v(C), v(B), v(A)], [v(A), v(B), v(C)], [v(B), v(C), v(A)]] {
        let mut cache = TuneCache::empty("unused.json", "gpu");
        let c = cache.choose(&key(), &cands, timer(&table, &calls)).unwrap();
        assert_eq!(c.variant.name, A);
    }
}

#[test]
fn failing_candidates_are_skipped_and_recorded() {
    let mut cache = TuneCache::empty("unused.json", "gpu");
    let calls = RefCell::new(vec![]);
    // A fails to launch, C reports NaN: both skipped.
    let table = [(B, 50.0), (C, f64::NAN)];
    let c = cache
        .choose(&key(), &[v(A), v(B), v(C)], timer(&table, &calls))
        .unwrap();
    assert_eq!(c.variant.name, B);
    let e = cache.get(&key()).unwrap();
    assert_eq!(e.timings.keys().collect::<Vec<_>>(), [B]);
    assert_eq!(e.failures[A], format!("launch of {A} failed"));
    assert!(e.failures[C].contains("finite"), "{}", e.failures[C]);

    let mut cache = TuneCache::empty("unused.json", "gpu");
    let err = cache
        .choose(&key(), &[v(A), v(C)], timer(&[], &calls))
        .unwrap_err()
        .to_string();
    assert!(err.contains("every candidate variant failed"), "{err}");
    assert!(err.contains(&format!("{A}: launch of {A} failed")), "{err}");
    assert!(cache.get(&key()).is_none());

    let err = cache
        .choose(&key(), &[], timer(&[], &calls))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no candidate variant"), "{err}");
}

#[test]
fn saves_atomically_and_loads_back() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("sub").join("tune.json");
    // Missing file: empty, nothing ignored.
    let mut cache = TuneCache::load(&path, "NVIDIA H200").unwrap();
    assert_eq!((cache.entries().count(), cache.ignored()), (0, None));
    let calls = RefCell::new(vec![]);
    cache
        .choose(&key(), &[v(A), v(B)], timer(&[(A, 1.5), (B, 2.5)], &calls))
        .unwrap();
    cache.save().unwrap();
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tune.json"], "no temporary file is left");

    let back = TuneCache::load(&path, "NVIDIA H200").unwrap();
    assert_eq!(back, cache);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["gpu"], "NVIDIA H200");
    assert_eq!(json["crate_version"], CRATE_VERSION);
    let e = &json["entries"][0];
    assert_eq!(e["arch"], "sm90");
    assert_eq!(
        (&e["experts"], &e["n"], &e["k"], &e["bucket"]),
        (&8.into(), &28672.into(), &4096.into(), &32.into())
    );
    assert_eq!(e["variant"], A);
    assert_eq!(e["micros"], 1.5);
    assert_eq!(e["timings"][B], 2.5);

    // Another GPU: ignored, and saying so.
    let other = TuneCache::load(&path, "NVIDIA A100").unwrap();
    assert_eq!(other.entries().count(), 0);
    let why = other.ignored().unwrap();
    assert!(
        why.contains("NVIDIA H200") && why.contains("ignored"),
        "{why}"
    );
    // Another crate version: ignored.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(CRATE_VERSION, "0.0.0-older");
    std::fs::write(&path, text).unwrap();
    let old = TuneCache::load(&path, "NVIDIA H200").unwrap();
    assert_eq!(old.entries().count(), 0);
    assert!(old.ignored().unwrap().contains("0.0.0-older"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_file_is_an_error_naming_it() {
    let dir = temp_dir("corrupt");
    let path = dir.join("tune.json");
    for text in ["{ not json", r#"{"gpu": "x"}"#, "[]"] {
        std::fs::write(&path, text).unwrap();
        let e = TuneCache::load(&path, "x").unwrap_err();
        assert!(matches!(e, ExpertError::CacheCorrupt { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("delete it"), "{msg}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
