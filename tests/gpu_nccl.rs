//! The NCCL communicator (`capmoe::ep::comm::NcclComm`, feature `nccl`) with one rank: device
//! all-to-all-v and all-gather return exact data, bad counts and shapes are typed errors before
//! anything is queued, the unique id travels through a host communicator, and the one-rank EP
//! forward through NCCL equals the one through the in-process communicator, bit for bit.
//!
//! Under `tools/emulate.sh` this runs on the fake driver and the fake one-rank libnccl
//! (cuda/emu/fake_nccl.cpp): emulated, not verified on a GPU. On a machine without a GPU it skips;
//! on a GPU machine without a loadable libnccl it reports the typed [`CommError::NoNccl`] and
//! skips (that is the expected outcome there, not a pass of the NCCL path). Multi-GPU EP over NCCL
//! is unverified until a machine with several GPUs runs it.
#![cfg(feature = "nccl")]

use capmoe::backend::CudaBackend;
use capmoe::cuda::GpuContext;
use capmoe::ep::comm::{
    all_gather, all_to_all_v, gather_to_root, CommError, Communicator, LocalComm, NcclComm,
};
use capmoe::ep::dist::{ep_generate, ep_logits, EpMoe};
use capmoe::model::{GenerateOptions, InitOptions, MixtralConfig, Model};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::Skew;
use std::time::Duration;

#[allow(dead_code)]
mod gpu_lock;

/// The GPU and a one-rank NCCL communicator on it, or `None` (with the reason printed) where
/// either is missing. Under emulation both must open.
fn nccl() -> Option<(GpuContext, NcclComm)> {
    gpu_lock::shared();
    let gpu = match GpuContext::new(0) {
        Ok(g) => g,
        Err(why) => {
            if cfg!(feature = "emulate") {
                panic!("emulated GPU did not open: {why}");
            }
            eprintln!("skipped: no GPU ({why})");
            return None;
        }
    };
    match NcclComm::single(&gpu) {
        Ok(c) => Some((gpu, c)),
        Err(e @ CommError::NoNccl { .. }) if !cfg!(feature = "emulate") => {
            eprintln!("skipped: NCCL unavailable, the typed error: {e}");
            None
        }
        Err(e) => panic!("one-rank NCCL communicator: {e}"),
    }
}

#[test]
fn device_all_to_all_v_and_all_gather_move_exact_data() {
    let Some((gpu, c)) = nccl() else { return };
    assert_eq!((c.rank(), c.size()), (0, 1));
    let st = gpu.stream();
    // Views at an offset inside larger buffers: the segments are the views', not the slices'.
    let host: Vec<u32> = (0..40u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let send = st.clone_htod(&host).unwrap();
    let mut recv = st.alloc_zeros::<u32>(50).unwrap();
    {
        let mut out = recv.slice_mut(7..37);
        c.device_all_to_all_v(&send.slice(5..35), &[30], &mut out, &[30])
            .unwrap();
    }
    let got = st.clone_dtoh(&recv).unwrap();
    assert_eq!(&got[7..37], &host[5..35]);
    assert!(got[..7].iter().chain(&got[37..]).all(|&v| v == 0));

    let f: Vec<f32> = (0..13).map(|i| i as f32 * 0.25 - 1.0).collect();
    let df = st.clone_htod(&f).unwrap();
    let mut dg = st.alloc_zeros::<f32>(13).unwrap();
    c.device_all_gather(&df.as_view(), &mut dg.as_view_mut())
        .unwrap();
    assert_eq!(st.clone_dtoh(&dg).unwrap(), f);

    // Zero counts: nothing is queued, nothing fails.
    let mut none = recv.slice_mut(0..0);
    c.device_all_to_all_v(&send.slice(0..0), &[0], &mut none, &[0])
        .unwrap();
}

#[test]
fn bad_counts_and_shapes_are_typed_errors() {
    let Some((gpu, c)) = nccl() else { return };
    let st = gpu.stream();
    let send = st.clone_htod(&[1u32, 2, 3, 4, 5]).unwrap();
    let mut recv = st.alloc_zeros::<u32>(5).unwrap();
    // Sends 5 to itself but expects 4 from itself: both lists fit their buffers, the pair does not.
    let e = c
        .device_all_to_all_v(&send.as_view(), &[5], &mut recv.slice_mut(0..4), &[4])
        .unwrap_err();
    assert!(
        matches!(
            e,
            CommError::Mismatch {
                rank: 0,
                peer: 0,
                ..
            }
        ),
        "{e}"
    );
    // Counts that do not sum to the buffer, and a count list of the wrong length.
    let e = c
        .device_all_to_all_v(&send.as_view(), &[4], &mut recv.as_view_mut(), &[4])
        .unwrap_err();
    assert!(matches!(e, CommError::Shape { .. }), "{e}");
    let e = c
        .device_all_to_all_v(&send.as_view(), &[5, 0], &mut recv.as_view_mut(), &[5])
        .unwrap_err();
    assert!(matches!(e, CommError::Shape { .. }), "{e}");
    // An all-gather output that is not size x input.
    let e = c
        .device_all_gather(&send.as_view(), &mut recv.slice_mut(0..4))
        .unwrap_err();
    assert!(matches!(e, CommError::Shape { .. }), "{e}");
    // The same through the host Communicator (bytes staged through the device).
    let mut out = [0u8; 3];
    let e = all_to_all_v(&c, &[1u8, 2, 3, 4], &[4], &mut out, &[3]).unwrap_err();
    assert!(matches!(e, CommError::Mismatch { .. }), "{e}");
    let e = all_to_all_v(&c, &[1u8, 2, 3, 4], &[3], &mut out, &[3]).unwrap_err();
    assert!(matches!(e, CommError::Shape { .. }), "{e}");
    // Nothing was queued by the refusals: the buffers still hold what they held.
    assert_eq!(st.clone_dtoh(&recv).unwrap(), vec![0; 5]);
    // An aborted communicator refuses every later call.
    c.abort("test");
    let e = c.barrier().unwrap_err();
    assert!(
        matches!(
            e,
            CommError::Transport {
                transport: "nccl",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn host_collectives_stage_through_the_device() {
    let Some((_gpu, c)) = nccl() else { return };
    let v: Vec<u64> = (0..9).map(|i| i * 1_000_003).collect();
    assert_eq!(all_gather(&c, &v).unwrap(), v);
    let mut out = vec![0u64; 9];
    all_to_all_v(&c, &v, &[9], &mut out, &[9]).unwrap();
    assert_eq!(out, v);
    assert_eq!(gather_to_root(&c, &v).unwrap(), Some(v.clone()));
    c.barrier().unwrap();
    // Empty buffers are valid collectives too.
    assert!(all_gather::<u32, _>(&c, &[]).unwrap().is_empty());
}

#[test]
fn unique_id_travels_through_a_host_communicator() {
    let Some((gpu, _)) = nccl() else { return };
    // One rank of the in-process communicator stands in for MPI: rank 0's id goes through the
    // host all-gather (the fake libnccl refuses an id ncclGetUniqueId did not make).
    let host = LocalComm::group(1, Duration::from_secs(30)).pop().unwrap();
    let c = NcclComm::from_host(&host, &gpu).unwrap();
    assert_eq!((c.rank(), c.size()), (0, 1));
    assert_eq!(all_gather(&c, &[7u32, 8]).unwrap(), vec![7, 8]);
}

#[test]
fn one_rank_ep_forward_through_nccl_equals_local() {
    let Some((gpu, nccl)) = nccl() else { return };
    // The backend on the communicator's context and stream (the device path requires it).
    let g = CudaBackend::new(&gpu).expect("the GPU opened, so the CUDA backend must");
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let opts = InitOptions::new(11).with_skew(Skew::Ratio(1.6));
    let model = Model::random_host(g, cfg.clone(), &opts).unwrap();
    let ids: Vec<u32> = (0..9u32).map(|i| (i * 41 + 7) % 128).collect();
    let local = LocalComm::group(1, Duration::from_secs(60)).pop().unwrap();
    for router in [
        RouterConfig::new(2, Policy::None),
        RouterConfig::new(2, "drop:score".parse().unwrap()).with_capacity_factor(1.0),
        RouterConfig::new(2, "reroute:next-best".parse().unwrap()).with_capacity_factor(0.75),
        RouterConfig::new(2, "expand:local".parse().unwrap()).with_capacity_factor(1.25),
    ] {
        let (e, h, t) = (cfg.num_local_experts, cfg.hidden_size, ids.len());
        let host = EpMoe::new(&local, e, h, &router, t).unwrap();
        let want = ep_logits(&host, &model, &ids, &router).unwrap();
        let device = EpMoe::new(&nccl, e, h, &router, t).unwrap();
        let got = ep_logits(&device, &model, &ids, &router).unwrap();
        // The in-process communicator stages rows through the host; NCCL moves them on the
        // device, every MoE layer of the forward.
        assert_eq!(host.device_layers(), 0);
        assert_eq!(
            device.device_layers(),
            cfg.num_hidden_layers,
            "{:?}",
            router.policy
        );
        // The same rows in the same order through a different transport: bit-identical.
        assert_eq!(want, got, "{:?}", router.policy);
        // And both equal the single-process forward's logits, to the bf16 tolerance of a
        // device forward whose routing and dispatch run on other kernels.
        let whole = model.logits(&ids, &router).unwrap();
        for (a, b) in whole.iter().flatten().zip(got.iter().flatten()) {
            assert!(
                (a - b).abs() <= 0.05 + 0.02 * a.abs(),
                "{a} vs {b}, {:?}",
                router.policy
            );
        }
        let _ = device.take_times();
    }
}

#[test]
fn one_rank_ep_decode_through_nccl_equals_local() {
    let Some((gpu, nccl)) = nccl() else { return };
    let g = CudaBackend::new(&gpu).expect("the GPU opened, so the CUDA backend must");
    let cfg = MixtralConfig::builtin("tiny").unwrap();
    let model = Model::random_host(g, cfg.clone(), &InitOptions::new(5)).unwrap();
    let local = LocalComm::group(1, Duration::from_secs(60)).pop().unwrap();
    let router = RouterConfig::new(2, "drop:score".parse().unwrap()).with_capacity_factor(1.0);
    let opts = GenerateOptions {
        max_new_tokens: 4,
        eos: Vec::new(),
        router: router.clone(),
    };
    let prompts: [&[u32]; 2] = [&[3, 9, 27], &[5]];
    let (e, h) = (cfg.num_local_experts, cfg.hidden_size);
    let host = EpMoe::new(&local, e, h, &router, 16).unwrap();
    let device = EpMoe::new(&nccl, e, h, &router, 16).unwrap();
    let want = ep_generate(&host, &model, &prompts, &opts).unwrap();
    let got = ep_generate(&device, &model, &prompts, &opts).unwrap();
    assert_eq!(want, got);
    // Prefill and every decode step moved rows on the device.
    assert!(
        device.device_layers() >= cfg.num_hidden_layers * 4,
        "{}",
        device.device_layers()
    );

    // A backend on another stream than the communicator's is a typed error of the rank, not a
    // forward whose transfers and timing events sit on two streams.
    let other = CudaBackend::open().unwrap();
    let theirs = Model::random_host(other, cfg.clone(), &InitOptions::new(5)).unwrap();
    let ep = EpMoe::new(&nccl, e, h, &router, 16).unwrap();
    let err = ep_generate(&ep, &theirs, &prompts, &opts).unwrap_err();
    assert!(err.to_string().contains("stream"), "{err}");
}

/// `capmoe logits --device cuda --ep local:1 --ep-rows nccl|host|auto`: the CLI takes the device
/// path on request (auto keeps the host path under `local:R`), and all three give the same bits.
/// A CPU run refuses `--ep-rows nccl`, and so do thread ranks (`local:2`).
#[test]
fn cli_ep_rows_nccl_equals_host() {
    let Some(_) = nccl() else { return };
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_capmoe"));
    if !exe.exists() {
        eprintln!("skipped: {} is not on this machine", exe.display());
        return;
    }
    let run_on = |ep: &str, extra: &[&str]| {
        std::process::Command::new(exe)
            .args(["logits", "--model", "tiny", "--ids", "3,1,4,1,5,9,2,6"])
            .args(["--seed", "11", "--skew", "1.6", "--policy", "drop:score"])
            .args(["--capacity-factor", "1.0", "--json", "--ep", ep])
            .args(extra)
            .output()
            .unwrap()
    };
    let run = |extra: &[&str]| run_on("local:1", extra);
    let logits = |extra: &[&str]| {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{extra:?}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        serde_json::from_value::<Vec<Vec<f32>>>(v["logits"].clone()).unwrap()
    };
    let host = logits(&["--device", "cuda", "--ep-rows", "host"]);
    assert_eq!(host, logits(&["--device", "cuda", "--ep-rows", "nccl"]));
    assert_eq!(host, logits(&["--device", "cuda"]));
    let out = run(&["--ep-rows", "nccl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--device cuda"),
        "{err}"
    );
    // Thread ranks over NCCL could wait forever on a failed peer: refused, with the way out.
    let out = run_on("local:2", &["--device", "cuda", "--ep-rows", "nccl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mpirun -n 2"),
        "{err}"
    );
}
