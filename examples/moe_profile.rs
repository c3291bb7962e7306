//! Times the parts of a `small` prefill: per-layer expert FFN (replayed from
//! the recorded plans) vs the whole forward.
//!
//!     cargo run --release --example moe_profile -- [POLICY] [GAMMA]

use capmoe::backend::CpuBackend;
use capmoe::ep::RankReplay;
use capmoe::model::{ForwardOptions, InitOptions, LogitsMode, MixtralConfig, Model};
use capmoe::routing::{Policy, RouterConfig};
use capmoe::trace::Skew;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let policy: Policy = args.first().map_or(Ok(Policy::None), |s| s.parse())?;
    let cfg = MixtralConfig::builtin("small")?;
    let model = Model::random(
        CpuBackend,
        cfg.clone(),
        &InitOptions::new(1).with_skew(Skew::Mixtral),
    )?;
    let mut router = RouterConfig::new(2, policy);
    if policy.has_capacity() {
        router = router.with_capacity_factor(args.get(1).map_or(Ok(1.5), |s| s.parse())?);
    }
    let ids: Vec<u32> = (0..512)
        .map(|i| (i * 7919 % cfg.vocab_size) as u32)
        .collect();
    let opts = ForwardOptions::new(router)
        .with_logits(LogitsMode::Last)
        .with_moe_inputs(true);
    let (_, out) = model.prefill_ranks(&[&ids], &opts)?;
    let t = Instant::now();
    let (_, out2) = model.prefill_ranks(&[&ids], &opts)?;
    let total = t.elapsed().as_secs_f64();
    drop(out2);
    let mut ffn = 0.0;
    for (l, rec) in out.layers.iter().enumerate() {
        let w = model.rank_work(l, rec, 0, 1)?;
        let t = Instant::now();
        model.run_rank_work(&w)?;
        let dt = t.elapsed().as_secs_f64();
        ffn += dt;
        println!(
            "layer {l}: load {:?}, expert FFN {:.1} ms",
            rec.totals.load,
            dt * 1e3
        );
    }
    println!(
        "forward {:.1} ms, expert FFN {:.1} ms, rest {:.1} ms",
        total * 1e3,
        ffn * 1e3,
        (total - ffn) * 1e3
    );
    Ok(())
}
