//! The CPU forward pass against a plain f32 GEMM roofline measured in the
//! same run: total GEMM FLOPs of the forward / the `gemm` crate's rate on a
//! big square product (see `capmoe::model::roofline`).
//!
//!     cargo run --release --example roofline -- [CONFIG] [TOKENS] [POLICY] [GAMMA] [SKEW]
//!
//! Defaults: `small` (8 experts, hidden 1024, intermediate 3584, 4 layers),
//! 512 tokens in one sequence, policy none, mixtral skew, logits at the last
//! position only.

use capmoe::backend::CpuBackend;
use capmoe::model::roofline::measure;
use capmoe::model::{ForwardOptions, InitOptions, LogitsMode, MixtralConfig, Model};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::Skew;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("small", String::as_str);
    let tokens: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let policy: Policy = args.get(2).map_or(Ok(Policy::None), |s| s.parse())?;
    let skew: Skew = args.get(4).map_or(Ok(Skew::Mixtral), |s| s.parse())?;
    let cfg = MixtralConfig::builtin(name)?;
    let t0 = Instant::now();
    let model = Model::random(
        CpuBackend,
        cfg.clone(),
        &InitOptions::new(1).with_skew(skew),
    )?;
    eprintln!("init {name}: {:.2} s", t0.elapsed().as_secs_f64());
    let mut router = RouterConfig::new(cfg.num_experts_per_tok, policy);
    if policy.has_capacity() {
        router = router.with_capacity_factor(args.get(3).map_or(Ok(1.5), |s| s.parse())?);
    }
    let ids: Vec<u32> = (0..tokens)
        .map(|i| (i * 7919 % cfg.vocab_size) as u32)
        .collect();
    let opts = ForwardOptions::new(router).with_logits(LogitsMode::Last);
    let r = measure(&model, &[&ids], &opts, 5)?;
    println!(
        "{name}, {tokens} tokens, policy {policy}, skew {skew}: forward {:.3} s, {:.1} GFLOP; \
         GEMM {:.1} GFLOP/s; ratio to roofline {:.2}x (median of {:?})",
        r.forward_s,
        r.flops / 1e9,
        r.gemm_rate / 1e9,
        r.ratio,
        r.ratios
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    Ok(())
}
