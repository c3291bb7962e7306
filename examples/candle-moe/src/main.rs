//! capmoe's capacity routing inside a candle MoE block, on the CPU.
//!
//! A Mixtral-style sparse MoE block (router -> softmax -> top-k -> renormalised
//! weights -> SwiGLU experts -> weighted combine) is routed two ways: by
//! candle's own top-k, and by `capmoe::routing::route`. Under `none` the two
//! must agree (checked; the program exits 1 if not). Then capacity policies
//! run on the same skewed batch.

mod block;
mod routes;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

use candle_core::{Device, Tensor};
use capmoe::routing::{Policy, RouterConfig, RoutingPlan};

use block::{BlockConfig, MoeBlock, Routing, Uniform};
use routes::{candle_topk, capmoe_route, compare, output_diff, Agreement, TOL};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Relative L2 difference allowed between the two block outputs under `none`.
pub const OUT_TOL: f32 = 1e-5;
pub const TOKENS: usize = 64;
pub const GAMMA: f64 = 1.0;

/// The demo block: 8 experts, top-2, experts 0 and 1 favoured by the router.
pub fn demo_config(seed: u64) -> BlockConfig {
    BlockConfig {
        hidden: 32,
        ffn: 64,
        experts: 8,
        top_k: 2,
        seed,
        router_bias: vec![0.8, 0.4],
    }
}

/// A batch of `tokens` random hidden states `[T, D]`.
pub fn batch(cfg: &BlockConfig, tokens: usize, dev: &Device) -> Res<Tensor> {
    Uniform::new(cfg.seed ^ 0x5EED_BA7C).tensor(tokens, cfg.hidden, 1.0, dev)
}

/// The outcome of the `none` check.
pub struct NoneCheck {
    pub agreement: Agreement,
    /// Max relative difference of candle's and capmoe's `p[t, e]` over the
    /// served assignments.
    pub max_prob_rel: f32,
    pub out_max_abs: f32,
    pub out_rel: f32,
    pub candle_routing: Routing,
    pub probs: Vec<Vec<f32>>,
    pub plan: RoutingPlan,
    pub output: Tensor,
}

/// Routes `x` by candle's top-k and by capmoe's `none` and checks that they
/// serve the same experts with the same weights and give the same output.
pub fn check_none(block: &MoeBlock, x: &Tensor) -> Res<NoneCheck> {
    let k = block.cfg.top_k;
    let logits = block.router_logits(x)?;
    let (probs, ra) = candle_topk(&logits, k)?;
    let (plan, rb) = capmoe_route(&logits, &RouterConfig::new(k, Policy::None))?;
    let agreement = compare(&probs, &ra, &rb, k, TOL).map_err(|e| format!("routing: {e}"))?;
    let mut max_prob_rel = 0.0f32;
    for (t, p) in probs.iter().enumerate() {
        for a in plan.assignments(t) {
            let (pc, pm) = (p[a.expert as usize], a.prob);
            let r = (pc - pm).abs() / pc.abs().max(pm.abs());
            if r.is_nan() || r > TOL.weight {
                return Err(format!("token {t} expert {}: p {pc:e} vs {pm:e}", a.expert).into());
            }
            max_prob_rel = max_prob_rel.max(r);
        }
    }
    let ya = block.forward_experts(x, &ra)?;
    let yb = block.forward_experts(x, &rb)?;
    let (out_max_abs, out_rel) = output_diff(&ya, &yb)?;
    if out_rel.is_nan() || out_rel > OUT_TOL {
        return Err(format!("block outputs differ: rel L2 {out_rel:.2e} > {OUT_TOL:.0e}").into());
    }
    Ok(NoneCheck {
        agreement,
        max_prob_rel,
        out_max_abs,
        out_rel,
        candle_routing: ra,
        probs,
        plan,
        output: yb,
    })
}

fn print_none(c: &NoneCheck) {
    let a = &c.agreement;
    println!("(a) candle top-k vs (b) capmoe `none`, same router logits:");
    println!(
        "  expert sets: identical on {t}/{t} tokens ({} near-ties at the k-th place)",
        a.near_ties,
        t = a.tokens
    );
    println!(
        "  weights:     {} assignments, max rel diff {:.1e} (tol {:.0e}); probs max rel diff {:.1e}",
        a.assignments, a.max_weight_rel, TOL.weight, c.max_prob_rel
    );
    println!(
        "  block output: max |a-b| {:.1e}, rel L2 {:.1e} (tol {OUT_TOL:.0e})",
        c.out_max_abs, c.out_rel
    );
    println!("  OK: under `none` capmoe's routing equals candle's top-k routing\n");
}

fn run() -> Res<()> {
    let dev = Device::Cpu;
    let cfg = demo_config(7);
    let (e, k) = (cfg.experts, cfg.top_k);
    println!(
        "candle MoE block (CPU): T={TOKENS}, E={e}, top-{k}, hidden {}, SwiGLU ffn {}, seed {}",
        cfg.hidden, cfg.ffn, cfg.seed
    );
    println!("router bias (skew): {:?}\n", cfg.router_bias);
    let block = MoeBlock::new(cfg, &dev)?;
    let x = batch(&block.cfg, TOKENS, &dev)?;
    let none = check_none(&block, &x)?;
    print_none(&none);

    let logits = block.router_logits(&x)?;
    let mut rows = Vec::new();
    for policy in ["drop:score", "reroute:next-best"] {
        let rc = RouterConfig::new(k, policy.parse()?).with_capacity_factor(GAMMA);
        let (plan, routing) = capmoe_route(&logits, &rc)?;
        let y = block.forward_experts(&x, &routing)?;
        let diff = output_diff(&none.output, &y)?;
        rows.push((policy, plan, routing, diff));
    }
    let c = rows[0].1.capacity().map_or(0, |c| c.per_expert);
    println!(
        "capacity gamma {GAMMA:.1}: C = ceil({GAMMA:.1} * {TOKENS} * {k} / {e}) = {c} per expert"
    );
    print!("{:<22}", "load per expert");
    (0..e).for_each(|i| print!("{i:>5}"));
    println!("{:>7}", "max");
    let load_row = |name: &str, load: &[u64]| {
        print!("{name:<22}");
        load.iter().for_each(|l| print!("{l:>5}"));
        println!("{:>7}", load.iter().max().unwrap_or(&0));
    };
    load_row("before (top-k, none)", &none.plan.stats().load);
    for (policy, plan, _, _) in &rows {
        load_row(policy, &plan.stats().load);
    }
    println!(
        "\n{:<20}{:>8}{:>9}{:>10}{:>11}{:>12}{:>12}",
        "policy", "dropped", "rerouted", "residual", "mass kept", "out max|d|", "out rel L2"
    );
    for (policy, plan, routing, (max_abs, rel)) in &rows {
        let s = plan.stats();
        let residual = routing.iter().filter(|l| l.is_empty()).count();
        println!(
            "{policy:<20}{:>8}{:>9}{residual:>10}{:>11.4}{max_abs:>12.3e}{rel:>12.3e}",
            s.dropped, s.rerouted, s.gate_mass_kept
        );
    }
    println!("(residual: tokens left with no expert, which pass through the residual only;");
    println!(" out: block output vs `none`)");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("MISMATCH or error: {e}");
            ExitCode::FAILURE
        }
    }
}
