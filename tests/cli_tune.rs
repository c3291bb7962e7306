//! `capmoe tune`: argument checks, and the clear error of a build without
//! the `cuda` feature.

use std::process::Command;

fn tune(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .arg("tune")
        .args(args)
        .output()
        .expect("capmoe runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_shapes_and_batches_are_refused_with_what_was_expected() {
    let (ok, err) = tune(&["--top-k", "9", "--experts", "8"]);
    assert!(!ok && err.contains("--top-k is 9; expected 1..=8"), "{err}");
    let (ok, err) = tune(&["--tokens", "0,16"]);
    assert!(!ok && err.contains("each >= 1"), "{err}");
    let (ok, err) = tune(&["--experts", "0"]);
    assert!(
        !ok && err.contains("--experts is 0; expected at least 1"),
        "{err}"
    );
    let (ok, err) = tune(&["--tokens", "18446744073709551615"]);
    assert!(
        !ok && err.contains("--tokens 18446744073709551615 is too large"),
        "{err}"
    );
    let (ok, err) = tune(&["--hidden", "4100"]);
    assert!(!ok && err.contains("multiple of 8"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_it_says_how_to_get_it() {
    let (ok, err) = tune(&[]);
    assert!(!ok);
    assert!(err.contains("--features cuda"), "{err}");
}

#[cfg(feature = "cuda")]
#[test]
fn without_a_gpu_it_fails_cleanly() {
    if capmoe::cuda::GpuContext::unavailable().is_none() {
        eprintln!("skipped: a GPU is present; `capmoe tune` would tune it");
        return;
    }
    let (ok, err) = tune(&["--tokens", "1"]);
    assert!(!ok && err.starts_with("error: "), "{err}");
}

#[test]
fn help_lists_every_declared_variant() {
    let out = Command::new(env!("CARGO_BIN_EXE_capmoe"))
        .args(["tune", "--help"])
        .output()
        .expect("capmoe runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for v in capmoe::expert::variants::VARIANTS {
        assert!(help.contains(v.name), "{} missing from:\n{help}", v.name);
    }
}
