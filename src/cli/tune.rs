//! `capmoe tune`: runs the expert FFN's autotuner ahead of time, so that
//! serving never times variants: every compiled grouped-GEMM variant that
//! runs on the GPU is timed for GEMM1 and GEMM2 at each token bucket, and
//! the fastest is cached on disk (JSON keyed by GPU name and crate version).

use super::CliError;
use clap::Args;
use std::io::Write;

/// `capmoe tune --help`'s closing text: where the cache lives, how timing
/// works, the declared variants and examples.
pub fn tune_help() -> String {
    use capmoe::expert::variants::{Schedule, VARIANTS};
    let mut s = String::from(TUNE_HELP_HEAD);
    s.push_str("\nDeclared grouped-GEMM variants (a build compiles those its archs can run; CAPMOE_FFN_VARIANTS narrows it):\n");
    for v in VARIANTS {
        let kind = match v.schedule {
            Schedule::Cooperative => "cooperative".to_string(),
            Schedule::Pingpong => "pingpong".to_string(),
            Schedule::Multistage { stages, .. } => format!("{stages}-stage"),
        };
        let [m, n, k] = v.tile;
        s.push_str(&format!(
            "  {:<28} {:?}, tile {m}x{n}x{k}, cluster {}x{}, {kind}\n",
            v.name, v.arch, v.cluster[0], v.cluster[1]
        ));
    }
    s.push_str(TUNE_HELP_EXAMPLES);
    s
}

const TUNE_HELP_HEAD: &str = "\
The cache file is $CAPMOE_TUNE_CACHE if set, else $XDG_CACHE_HOME/capmoe/ or ~/.cache/capmoe/, named \
tune-<gpu>-<version>.json. ExpertFfn reads it at construction; a batch uses the entry of its token \
bucket (T rounded up to a power of two) and falls back to a shape heuristic when there is none.\n\n\
Each timing is the mean of 10 runs after 3 warm-up runs, on a balanced load of ceil(T k / E) rows \
per expert, with CUDA events.\n";

const TUNE_HELP_EXAMPLES: &str = "\nExamples:\n  capmoe tune                                  # Mixtral-8x7B experts, T = 1 .. 16384\n  \
capmoe tune --tokens 1,64,4096 --json\n  \
capmoe tune --hidden 2048 --intermediate 5632 --experts 64 --top-k 6\n";

#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Hidden size H (a multiple of 8).
    #[arg(long, default_value_t = 4096, value_name = "H")]
    pub hidden: usize,
    /// Expert intermediate size I (a multiple of 8).
    #[arg(long, default_value_t = 14336, value_name = "I")]
    pub intermediate: usize,
    /// Experts E.
    #[arg(long, default_value_t = 8, value_name = "E")]
    pub experts: usize,
    /// Experts per token k (sets the rows per expert: ceil(T k / E)).
    #[arg(long, default_value_t = 2, value_name = "K")]
    pub top_k: usize,
    /// Batch sizes T to tune, comma-separated; each is rounded up to its
    /// power-of-two bucket.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64,256,1024,4096,16384",
        value_name = "T,T,..."
    )]
    pub tokens: Vec<usize>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub gpu: usize,
    /// Time again even where the cache has an entry.
    #[arg(long)]
    pub force: bool,
    /// Print the outcome as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl TuneArgs {
    fn check(&self) -> Result<(), CliError> {
        if self.experts == 0 {
            return Err(CliError::Usage(
                "--experts is 0; expected at least 1 expert".into(),
            ));
        }
        if let Some(t) = self
            .tokens
            .iter()
            .find(|&&t| t > capmoe::ep::MAX_BENCH_TOKENS)
        {
            return Err(CliError::Usage(format!(
                "--tokens {t} is too large; expected at most {} per batch (capmoe's bound on one benchmark batch)",
                capmoe::ep::MAX_BENCH_TOKENS
            )));
        }
        if self.top_k == 0 || self.top_k > self.experts {
            return Err(CliError::Usage(format!(
                "--top-k is {}; expected 1..={} (the number of experts)",
                self.top_k, self.experts
            )));
        }
        if self.tokens.is_empty() || self.tokens.contains(&0) {
            return Err(CliError::Usage(
                "--tokens needs at least one batch size, each >= 1".into(),
            ));
        }
        capmoe::expert::FfnShape::new(self.experts, self.hidden, self.intermediate)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(())
    }
}

pub fn run(args: &TuneArgs, out: &mut dyn Write) -> Result<(), CliError> {
    args.check()?;
    run_checked(args, out)
}

#[cfg(not(feature = "cuda"))]
fn run_checked(_args: &TuneArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Usage(
        "capmoe tune needs the CUDA backend, and this binary was built without it; rebuild with \
         `cargo build --release --features cuda` (eval \"$(tools/setup-cuda.sh)\" installs nvcc) \
         and run it on a machine with an NVIDIA GPU"
            .into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_checked(args: &TuneArgs, out: &mut dyn Write) -> Result<(), CliError> {
    use capmoe::cuda::{ExpertFfn, GpuContext};
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    let gpu = GpuContext::new(args.gpu)?;
    let shape = capmoe::expert::FfnShape::new(args.experts, args.hidden, args.intermediate)?;
    eprintln!(
        "capmoe tune: {} (E={} H={} I={} k={}), drawing random weights",
        gpu.name()?,
        shape.experts,
        shape.hidden,
        shape.intermediate,
        args.top_k
    );
    let ffn = ExpertFfn::random(&gpu, shape, 0)?.with_tune_cache(open_cache(&gpu.name()?)?);
    let steps = (args.tokens.len() * 2 * ffn.variants().len()) as u64;
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} timings  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outcomes = Vec::new();
    for &t in &args.tokens {
        let o = ffn.tune(t, args.top_k, args.force, &mut |what| {
            bar.set_message(what.to_string());
            bar.inc(1);
        })?;
        outcomes.push(o);
    }
    bar.finish_and_clear();
    ffn.tune_cache().save()?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &outcomes)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:>6} {:>6}  {:<28} {:>10}  {:<28} {:>10}",
            "T", "bucket", "GEMM1 (x W13^T)", "us", "GEMM2 (h W2^T)", "us"
        )?;
        for o in &outcomes {
            writeln!(
                out,
                "{:>6} {:>6}  {:<28} {:>10.1}  {:<28} {:>10.1}",
                o.tokens,
                o.bucket,
                o.gemm1.variant,
                o.gemm1.micros,
                o.gemm2.variant,
                o.gemm2.micros
            )?;
        }
        if let Some(path) = outcomes.first().and_then(|o| o.cache.clone()) {
            writeln!(out, "cache: {path}")?;
        }
    }
    Ok(())
}

/// The tune cache file that the environment names (`capmoe tune --help`), or an in-memory cache
/// when there is no cache directory. A corrupt file is reported and replaced on the next save.
#[cfg(feature = "cuda")]
pub fn open_cache(gpu: &str) -> Result<capmoe::expert::TuneCache, CliError> {
    use capmoe::expert::{tune::resolve_path, ExpertError, TuneCache};
    let path = match resolve_path(|k| std::env::var_os(k), gpu) {
        Ok(p) => p,
        Err(ExpertError::NoCacheDir) => {
            eprintln!("capmoe: no cache directory ($CAPMOE_TUNE_CACHE, $XDG_CACHE_HOME, $HOME); tuning results are kept in memory only");
            return Ok(TuneCache::in_memory(gpu));
        }
        Err(e) => return Err(e.into()),
    };
    let cache = match TuneCache::load(&path, gpu) {
        Ok(c) => c,
        Err(e @ ExpertError::CacheCorrupt { .. }) => {
            eprintln!("capmoe: {e}; starting from an empty cache that replaces it");
            TuneCache::empty(path, gpu)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = cache.ignored() {
        eprintln!("capmoe: {why}");
    }
    Ok(cache)
}
