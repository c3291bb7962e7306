//! The EP forward across ranks (`capmoe::ep::dist`) on the CUDA backend, one rank: the layer
//! stages its rows through the host (download, all-to-all-v, upload) and combines on the host in
//! f32, so its logits equal the device forward's within the bf16 parity tolerance, and its plans
//! equal the device router's exactly. Under `tools/emulate.sh` this runs on the fake driver
//! (emulated, not verified on a GPU); on a host without a GPU it skips.
#![cfg(feature = "cuda")]

use capmoe::backend::CudaBackend;
use capmoe::cuda::GpuContext;
use capmoe::ep::comm::LocalComm;
use capmoe::ep::dist::{ep_logits, EpMoe};
use capmoe::model::{ForwardOptions, InitOptions, MixtralConfig, Model};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::Skew;
use std::time::Duration;

#[allow(dead_code)]
mod gpu_lock;

fn gpu() -> Option<CudaBackend> {
    gpu_lock::shared();
    if let Some(why) = GpuContext::unavailable() {
        if cfg!(feature = "emulate") {
            panic!("emulated GPU did not open: {why}");
        }
        eprintln!("skipped: no GPU ({why})");
        return None;
    }
    Some(CudaBackend::open().expect("the GPU opened, so the CUDA backend must"))
}

#[test]
fn one_rank_ep_forward_matches_the_device_forward() {
    let Some(g) = gpu() else { return };
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let opts = InitOptions::new(11).with_skew(Skew::Ratio(1.6));
    let model = Model::random_host(g, cfg.clone(), &opts).unwrap();
    let ids: Vec<u32> = (0..9u32).map(|i| (i * 41 + 7) % 128).collect();
    let comm = LocalComm::group(1, Duration::from_secs(60)).pop().unwrap();
    for router in [
        RouterConfig::new(2, Policy::None),
        RouterConfig::new(2, "drop:score".parse().unwrap()).with_capacity_factor(1.0),
        RouterConfig::new(2, "reroute:next-best".parse().unwrap()).with_capacity_factor(1.0),
    ] {
        let want = model.logits(&ids, &router).unwrap();
        let ep = EpMoe::new(
            &comm,
            cfg.num_local_experts,
            cfg.hidden_size,
            &router,
            ids.len(),
        )
        .unwrap();
        let got = ep_logits(&ep, &model, &ids, &router).unwrap();
        let scale = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
            assert!(
                (w - g).abs() <= 0.03 * scale,
                "{:?}: {g} vs {w}",
                router.policy
            );
        }
        // The plans: the EP layer routes on the host from the device's router logits, as the
        // oracle does; the device router must agree with it exactly.
        let fo = ForwardOptions::new(router.clone());
        let (_, a) = model.prefill(&[&ids], &fo).unwrap();
        let (_, b) = model.prefill_with(&[&ids], &fo, Some(&ep)).unwrap();
        for (l, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
            assert_eq!(x.plan, y.plan, "{:?} layer {l}", router.policy);
        }
    }
}

/// `capmoe logits --device cuda --ep local:2`: two ranks, each on its own CUDA backend holding
/// half the experts (rank r on GPU r mod count), give the one-process device run's logits within
/// the bf16 parity tolerance, and `--ep local:1`'s exactly.
#[test]
fn cli_ep_ranks_on_cuda_match_the_device_run() {
    let Some(_g) = gpu() else { return };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_capmoe"));
    if !exe.exists() {
        eprintln!("skipped: {} is not on this machine", exe.display());
        return;
    }
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(["logits", "--model", "tiny", "--ids", "3,1,4,1,5,9,2,6"])
            .args(["--device", "cuda", "--seed", "11", "--skew", "1.6"])
            .args([
                "--policy",
                "drop:score",
                "--capacity-factor",
                "1.0",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{extra:?}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(v["logits"].clone()).unwrap();
        rows
    };
    let want = run(&[]);
    let got = run(&["--ep", "local:2"]);
    // Across rank counts the EP layer is the same arithmetic (host f32 combine in plan order).
    assert_eq!(got, run(&["--ep", "local:1"]), "local:2 vs local:1");
    assert_eq!(want.len(), got.len());
    let scale = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
    for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
        assert!((w - g).abs() <= 0.03 * scale, "{g} vs {w}");
    }
}
