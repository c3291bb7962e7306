//! Which model the model subcommands (`logits`, `generate`) run.

use super::tokenizer::Tok;
use super::CliError;
use capmoe::backend::CpuBackend;
use capmoe::ep::EpBackend;
use capmoe::model::{InitOptions, MixtralConfig, Model, BUILTIN_NAMES};
use capmoe::progress::NoProgress;
use capmoe::trace::Skew;
use clap::{Args, ValueEnum};
use std::ops::Range;
use std::path::Path;

/// Largest random model the CLI builds in host memory (f32 weights).
pub const MAX_RANDOM_BYTES: u64 = 16 << 30;

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face Mixtral checkpoint directory (config.json plus
    /// model.safetensors or model.safetensors.index.json; f32, bf16 or f16),
    /// or a built-in shape with seeded random weights: tiny, small,
    /// mixtral-8x7b (too large for random weights on the CPU).
    #[arg(long, value_name = "DIR|NAME")]
    pub model: String,
    /// Seed of the random weights of a built-in model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic router skew, a per-layer logit bias on the router (busiest
    /// expert's load over the mean under plain top-k): uniform (no bias),
    /// mixtral (~2.75x), olmoe (~7x) or a number >= 1. Applies to
    /// checkpoints too.
    #[arg(long, default_value = "uniform", value_name = "SKEW")]
    pub skew: Skew,
    /// Where the model runs: `cpu` (f32) or `cuda` (bf16 on GPU 0; needs a
    /// build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: ModelDevice,
}

/// The backend of the model subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelDevice {
    Cpu,
    Cuda,
}

/// Runs `f` on the model of `args`, on the backend `args.device` names.
/// Without the `cuda` feature, `--device cuda` is a usage error.
pub fn with_model<R>(args: &ModelArgs, f: impl ModelTask<Output = R>) -> Result<R, CliError> {
    match args.device {
        ModelDevice::Cpu => f.run(args.load_on(CpuBackend)?),
        #[cfg(feature = "cuda")]
        ModelDevice::Cuda => {
            // The CLI's own context (capture rights: decode graphs).
            let be = capmoe::backend::CudaBackend::open()?.with_decode_graphs()?;
            f.run(args.load_on(be)?)
        }
        #[cfg(not(feature = "cuda"))]
        ModelDevice::Cuda => Err(CliError::Usage(
            "--device cuda needs a capmoe built with `--features cuda`; this build has the CPU backend only".into(),
        )),
    }
}

/// A subcommand's work on a model of any backend.
pub trait ModelTask {
    type Output;
    fn run<B: EpBackend>(self, model: Model<B>) -> Result<Self::Output, CliError>;
}

/// Refuses random f32 weights beyond [`MAX_RANDOM_BYTES`], naming the model,
/// the size and what to do instead.
pub fn check_random_size(name: &str, cfg: &MixtralConfig, instead: &str) -> Result<(), CliError> {
    let bytes = cfg.param_count() * 4;
    if bytes <= MAX_RANDOM_BYTES {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "random f32 weights for `{name}` with {} layers need {:.0} GiB of memory (limit {} GiB); {instead}",
        cfg.num_hidden_layers,
        bytes as f64 / (1u64 << 30) as f64,
        MAX_RANDOM_BYTES >> 30
    )))
}

impl ModelArgs {
    /// The checkpoint's tokenizer.json, for `--prompt` (a model of `vocab` ids).
    pub fn tokenizer(&self, vocab: usize) -> Result<Tok, CliError> {
        let path = Path::new(&self.model);
        if !path.is_dir() {
            return Err(CliError::Usage(format!(
                "--prompt needs a checkpoint directory with a tokenizer.json; `{}` is a built-in random model without one (give --ids)",
                self.model
            )));
        }
        Ok(Tok::load(path, vocab)?)
    }

    /// The prompt's ids: `--ids` as given, or `--prompt` through the tokenizer.
    pub fn prompt_ids(
        &self,
        ids: &[u32],
        prompt: Option<&str>,
        vocab: usize,
    ) -> Result<Vec<u32>, CliError> {
        let Some(text) = prompt else {
            return Ok(ids.to_vec());
        };
        let ids = self.tokenizer(vocab)?.encode(text)?;
        if ids.is_empty() {
            return Err(CliError::Usage(format!(
                "--prompt {text:?} gives no tokens"
            )));
        }
        Ok(ids)
    }

    /// The model's config: the checkpoint's config.json, or the built-in's.
    pub fn config(&self) -> Result<MixtralConfig, CliError> {
        let path = Path::new(&self.model);
        if path.is_dir() {
            return Ok(MixtralConfig::from_path(path)?);
        }
        self.builtin()
    }

    fn builtin(&self) -> Result<MixtralConfig, CliError> {
        if !BUILTIN_NAMES.contains(&self.model.as_str()) {
            return Err(CliError::Usage(format!(
                "--model `{}` is neither a checkpoint directory nor a built-in model ({})",
                self.model,
                BUILTIN_NAMES.join(", ")
            )));
        }
        let cfg = MixtralConfig::builtin(&self.model)?;
        check_random_size(&self.model, &cfg, "use a smaller built-in or a checkpoint")?;
        Ok(cfg)
    }

    /// [`ModelArgs::load_on`] holding only experts `group` (an EP rank's).
    pub fn load_group_on<B: EpBackend>(
        &self,
        backend: B,
        group: Range<usize>,
    ) -> Result<Model<B>, CliError> {
        let path = Path::new(&self.model);
        let mut m = if path.is_dir() {
            Model::load_expert_group(backend, path, group)?
        } else {
            let opts = InitOptions::new(self.seed);
            Model::random_group(backend, self.builtin()?, &opts, group, &NoProgress)?
        };
        // The skew is the same on every rank: the router is whole everywhere.
        if self.skew != Skew::Uniform {
            m.apply_skew(self.skew, self.seed)?;
        }
        Ok(m)
    }

    /// Loads the checkpoint directory, or builds the named random model, on `backend`.
    pub fn load_on<B: EpBackend>(&self, backend: B) -> Result<Model<B>, CliError> {
        let path = Path::new(&self.model);
        if path.is_dir() {
            if self.skew != Skew::Uniform {
                let mut m = Model::load(backend, path)?;
                m.apply_skew(self.skew, self.seed)?;
                return Ok(m);
            }
            return Ok(Model::load(backend, path)?);
        }
        let opts = InitOptions::new(self.seed).with_skew(self.skew);
        Ok(Model::random(backend, self.builtin()?, &opts)?)
    }
}
