//! capmoe as a library: route one batch under a capacity, then run a tiny Mixtral's MoE layer
//! through the `Backend` trait (the CPU backend here; the CUDA one with `--features cuda` on a
//! GPU), then a whole model on a backend written in this crate (`wrapped.rs`). Exits non-zero
//! when a check fails.

mod wrapped;

use capmoe::backend::{Backend, CpuBackend, MoeWeights};
use capmoe::model::{ForwardOptions, GenerateOptions, InitOptions, MixtralConfig, Model};
use capmoe::routing::{route, DispatchLayout, Logits, Policy, RouterConfig};
use capmoe::trace::{synthetic_logits, Skew};
use std::error::Error;

type Res<T> = Result<T, Box<dyn Error>>;

/// The README's library example, unchanged.
fn readme_example() -> Res<()> {
    let logits = vec![0.0f32; 16 * 8]; // [T = 16, E = 8]
    let cfg = RouterConfig::new(2, "reroute:optimal".parse()?).with_capacity_factor(1.5);
    let plan = route(&Logits::new(&logits, 16, 8)?, &cfg)?;
    let layout = DispatchLayout::new(&plan, 64)?; // expert-contiguous rows, padded to 64
    println!(
        "README example: max/mean {:.2}, mass kept {:.3}, {} padded rows",
        plan.stats().imbalance(),
        plan.stats().gate_mass_kept,
        layout.rows()
    );
    Ok(())
}

/// Routes a skewed batch under `drop:score` at gamma 1.0 and checks the capacity holds.
fn route_batch() -> Res<()> {
    let (t, e, k) = (256, 8, 2);
    let logits = synthetic_logits(t, e, k, Skew::Mixtral, 7)?;
    let none = route(
        &Logits::new(&logits, t, e)?,
        &RouterConfig::new(k, Policy::None),
    )?;
    let cfg = RouterConfig::new(k, "drop:score".parse()?).with_capacity_factor(1.0);
    let plan = route(&Logits::new(&logits, t, e)?, &cfg)?;
    let c = plan
        .capacity()
        .ok_or("a capacity policy reports its capacity")?
        .per_expert;
    let s = plan.stats();
    println!(
        "routed T={t} E={e} k={k}: busiest expert {} -> {} (C = {c}), dropped {}, mass kept {:.3}",
        none.stats().max_load,
        s.max_load,
        s.dropped,
        s.gate_mass_kept
    );
    check(s.max_load <= c, "no expert over capacity")?;
    check(
        none.stats().max_load > c,
        "the skewed batch overflows C under `none`",
    )?;
    Ok(())
}

/// One MoE layer on any backend: returns the output rows and how many tokens lost every expert.
fn moe_layer<B: Backend>(
    backend: &B,
    moe: &MoeWeights<B>,
    x: &[f32],
    tokens: usize,
    hidden: usize,
    router: &RouterConfig,
) -> Res<(Vec<f32>, Vec<bool>)> {
    let xa = backend.upload(x, tokens, hidden)?;
    let out = moe.forward(backend, &xa, router)?;
    let residual_only = (0..tokens)
        .map(|t| out.plan.assignments(t).len() == 0)
        .collect();
    Ok((backend.download(&out.out)?, residual_only))
}

fn tiny_moe() -> Res<()> {
    let cfg = MixtralConfig::builtin("tiny")?;
    let hidden = cfg.hidden_size;
    let model = Model::random(CpuBackend, cfg, &InitOptions::new(7))?;
    let moe = &model.layers()[0].moe;
    let tokens = 64;
    let x: Vec<f32> = (0..tokens * hidden)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let k = model.config().num_experts_per_tok;
    let (base, _) = moe_layer(
        &CpuBackend,
        moe,
        &x,
        tokens,
        hidden,
        &RouterConfig::new(k, Policy::None),
    )?;
    let capped = RouterConfig::new(k, "drop:score".parse()?).with_capacity_factor(0.5);
    let (y, lost) = moe_layer(&CpuBackend, moe, &x, tokens, hidden, &capped)?;
    check(
        base.iter().chain(&y).all(|v| v.is_finite()),
        "finite outputs",
    )?;
    // A token that lost every expert carries only the residual: its MoE row is zero.
    for (t, &l) in lost.iter().enumerate() {
        let row = &y[t * hidden..(t + 1) * hidden];
        if l {
            check(
                row.iter().all(|&v| v == 0.0),
                "a dropped token's MoE row is zero",
            )?;
        }
    }
    let diff = base.iter().zip(&y).filter(|(a, b)| a != b).count();
    println!(
        "tiny Mixtral MoE layer 0: T={tokens} H={hidden}; gamma 0.5 drops every expert of {} tokens and changes {diff} of {} outputs",
        lost.iter().filter(|&&l| l).count(),
        y.len()
    );
    check(diff > 0, "capacity changes the layer's output")?;
    Ok(())
}

/// A forward pass and greedy generation on a backend written here ([`wrapped::Wrapped`]): the
/// same logits and tokens as the CPU backend's, bit for bit.
fn own_backend() -> Res<()> {
    let cfg = MixtralConfig::builtin("tiny")?;
    let init = InitOptions::new(7);
    let cpu = Model::random(CpuBackend, cfg.clone(), &init)?;
    let own = Model::random(wrapped::Wrapped(CpuBackend), cfg, &init)?;
    let router = RouterConfig::new(2, "drop:score".parse()?).with_capacity_factor(1.0);
    let prompt: &[u32] = &[1, 5, 9, 2, 7];
    let opts = ForwardOptions::new(router.clone());
    let (_, a) = cpu.prefill(&[prompt], &opts)?;
    let (_, b) = own.prefill(&[prompt], &opts)?;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    check(
        bits(&a.logits) == bits(&b.logits),
        "own backend's logits equal the CPU's",
    )?;
    let gen = GenerateOptions {
        max_new_tokens: 4,
        eos: Vec::new(),
        router,
    };
    let tokens = own.generate(prompt, &gen)?;
    check(
        tokens == cpu.generate(prompt, &gen)?,
        "own backend generates the CPU's tokens",
    )?;
    println!(
        "own backend `{}`: {} logits equal the CPU's, generated {tokens:?}",
        own.backend().name(),
        b.logits.len()
    );
    Ok(())
}

fn check(ok: bool, what: &str) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

fn main() {
    let run = || -> Res<()> {
        readme_example()?;
        route_batch()?;
        tiny_moe()?;
        own_backend()?;
        #[cfg(feature = "cuda")]
        cuda_note();
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// With `cuda`, the same layer would run on `capmoe::backend::CudaBackend` (on the engine's own
/// stream: `GpuContext::from_stream`); this example only needs it to compile beside cudarc's
/// dynamic linking, so it does not open a device.
#[cfg(feature = "cuda")]
fn cuda_note() {
    let _open: fn(usize) -> Result<capmoe::cuda::GpuContext, capmoe::cuda::GpuError> =
        capmoe::cuda::GpuContext::new;
    println!("built with capmoe's CUDA backend (cudarc dynamic-linking)");
}
