use super::*;
use capmoe::ep::gpu::LayerShape;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn parse(a: &[&str]) -> BenchArgs {
    let mut v = vec!["bench"];
    v.extend_from_slice(a);
    Cli::try_parse_from(v).unwrap().args
}

#[test]
fn gpu_defaults_are_mixtral_ep8_and_ep4_over_three_skews() {
    let s = gpu_setup(&parse(&["--device", "cuda"])).unwrap();
    assert_eq!(s.shape, LayerShape::MIXTRAL_8X7B);
    assert_eq!(s.tokens, vec![4096, 64]);
    assert_eq!(s.ranks, vec![8, 4]);
    assert_eq!(s.skews.len(), 3);
    assert_eq!(s.capacity_factors, vec![1.0, 1.25, 1.5, 2.0]);
    assert_eq!(s.a2a_gbps, GPU_A2A_GBPS);
    assert_eq!(s.iters, GPU_ITERS);
    assert_eq!(s.variants, None);
    assert!(s.policies.contains(&"reroute:optimal".parse().unwrap()));
}

#[test]
fn gpu_flags_parse_lists_and_overrides() {
    let s = gpu_setup(&parse(&[
        "--device",
        "cuda",
        "--config",
        "small",
        "--tokens",
        "256,8",
        "--ranks",
        "8,2",
        "--skew",
        "uniform,2.5",
        "--hidden",
        "256",
        "--intermediate",
        "512",
        "--iters",
        "2",
        "--gemm-variants",
        "a,b",
        "--a2a-gbps",
        "400",
    ]))
    .unwrap();
    assert_eq!(s.tokens, vec![256, 8]);
    assert_eq!(s.ranks, vec![8, 2]);
    assert_eq!(s.skews, vec![Skew::Uniform, Skew::Ratio(2.5)]);
    assert_eq!(
        (s.shape.experts, s.shape.hidden, s.shape.intermediate),
        (8, 256, 512)
    );
    assert!(s.label.contains("H 256"));
    assert_eq!(s.variants, Some(("a".into(), "b".into())));
    assert_eq!(s.a2a_gbps, 400.0);
    let s = gpu_setup(&parse(&["--device", "cuda", "--experts-per-rank", "2"])).unwrap();
    assert_eq!(s.ranks, vec![4]);
}

#[test]
fn flags_of_the_other_device_are_usage_errors() {
    let err = |a: &[&str]| match gpu_setup(&parse(a)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{a:?} should fail"),
    };
    assert!(err(&["--device", "cuda", "--batch", "4"]).contains("--batch is only for --device cpu"));
    assert!(err(&["--device", "cuda", "--ranks", "3"]).contains("divisor"));
    assert!(err(&["--device", "cuda", "--tokens", "0"]).contains("--tokens"));
    assert!(err(&["--device", "cuda", "--hidden", "100"]).contains("multiple of 8"));
    assert!(err(&["--device", "cuda", "--top-k", "9"]).contains("more than"));
    assert!(err(&["--device", "cuda", "--config", "nope"]).contains("not a built-in"));
    assert!(err(&["--device", "cuda", "--gemm-variants", "a,b,c"]).contains("one name or two"));
    assert!(err(&[
        "--device",
        "cuda",
        "--ranks",
        "8,4",
        "--experts-per-rank",
        "2"
    ])
    .contains("one EP size"));
    let e = refuse_flags(&parse(&["--tokens", "64", "--tune"])).unwrap_err();
    assert!(
        e.to_string()
            .contains("--tokens, --tune are only for --device cuda"),
        "{e}"
    );
}

#[test]
fn e2e_flags_belong_to_the_whole_model_runs() {
    let err =
        |a: &[&str]| match refuse_flags(&parse(a)).and_then(|_| e2e_flags(&parse(a)).map(|_| ())) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{a:?} should fail"),
        };
    assert!(err(&["--e2e"]).contains("--e2e is only for --device cuda"));
    assert!(err(&["--device", "cuda", "--e2e", "--tokens", "64"])
        .contains("--tokens is only for the GPU MoE-layer benchmark"));
    assert!(err(&["--device", "cuda", "--decode-steps", "2"])
        .contains("--decode-steps is only for --device cpu (or --device cuda --e2e)"));
    assert!(
        err(&["--device", "cuda", "--e2e", "--skew", "uniform,mixtral"]).contains("one --skew")
    );
    assert!(err(&["--device", "cuda", "--e2e", "--ranks", "8,4"]).contains("one EP size"));
    assert!(err(&["--device", "cuda", "--e2e", "--batch", "0"]).contains("--batch"));
    // The model flags are fine with --e2e.
    let a = parse(&[
        "--device",
        "cuda",
        "--e2e",
        "--config",
        "small",
        "--layers",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "8",
        "--decode-steps",
        "3",
        "--load-layer",
        "1",
    ]);
    assert!(refuse_flags(&a).is_ok());
    assert_eq!(mode(&a), Mode::GpuE2e);
    let d = &GPU_E2E;
    assert!(d.throughput && !d.interleave && !d.host_size_limit);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_e2e_without_the_feature_says_how_to_rebuild() {
    let mut out = Vec::new();
    let a = parse(&["--device", "cuda", "--e2e", "--config", "tiny"]);
    let e = run(&a, &mut out).unwrap_err();
    assert!(e.to_string().contains("--features cuda"), "{e}");
    assert!(out.is_empty());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_says_how_to_rebuild() {
    let mut out = Vec::new();
    let e = run(&parse(&["--device", "cuda"]), &mut out).unwrap_err();
    assert!(e.to_string().contains("--features cuda"), "{e}");
    assert!(out.is_empty());
}
