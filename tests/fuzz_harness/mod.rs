//! The fuzz targets' bodies, shared by the fuzz crate (fuzz/, coverage
//! guided) and by `cargo test` (tests/fuzz_regressions.rs replays the seed
//! corpora and every crash found). Each takes arbitrary bytes; any error is
//! fine, a panic is a bug.
#![allow(dead_code)]

use capmoe::io::npy;
use capmoe::model::{MixtralConfig, WeightFiles};
use capmoe::routing::{route, CapacityScope, Logits, Policy, RouterConfig};
use std::path::{Path, PathBuf};

/// `.npy` bytes through the reader.
pub fn npy(data: &[u8]) {
    if let Ok(m) = npy::parse_matrix(data, Path::new("fuzz.npy")) {
        assert_eq!(m.data.len(), m.rows * m.cols);
    }
}

/// config.json text through the parser and its checks.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = MixtralConfig::from_json_str(text) {
        c.validate().expect("a parsed config validates");
        let _ = c.param_count();
        let _ = c.check_generation(usize::MAX, usize::MAX);
        let _ = c.check_positions(c.max_position_embeddings, 1);
        let back = MixtralConfig::from_json_str(&c.to_hf_json().to_string());
        assert!(back.is_ok(), "{back:?}");
    }
}

/// A one-layer, one-expert config whose checkpoint holds 10 tiny tensors,
/// so a fuzzer's inputs stay small.
pub fn micro_config() -> MixtralConfig {
    let mut c = MixtralConfig::builtin("tiny").expect("builtin");
    c.vocab_size = 4;
    c.hidden_size = 2;
    c.intermediate_size = 2;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 1;
    c.num_key_value_heads = 1;
    c.head_dim = 2;
    c.num_local_experts = 1;
    c.num_experts_per_tok = 1;
    c.bos_token_id = Some(1);
    c.eos_token_ids = vec![2];
    c
}

/// A scratch directory for one harness thread, made once and reused (the
/// fuzzer runs millions of inputs; creating a directory each time halves
/// the rate).
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let d = std::env::temp_dir().join(format!(
                "capmoe-fuzz-st-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&d).expect("scratch dir");
            d
        };
    }
    DIR.with(|d| d.clone())
}

/// Removes this thread's scratch directory (tests call it when done).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch());
}

fn take_all(mut files: WeightFiles, cfg: &MixtralConfig) {
    let _ = files.dtypes();
    if files.check(cfg).is_ok() {
        for (name, shape) in capmoe::model::names::expected(cfg) {
            if let Ok(t) = files.take(&name, &shape) {
                assert!(t.data().iter().all(|v| v.is_finite()), "{name}");
            }
        }
        files.finish().expect("checked tensors are all taken");
    } else {
        for name in files.names() {
            let _ = files.take(&name, &[2, 2]);
        }
    }
}

/// Splits `data` at a 2-byte little-endian length prefix.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let n = match data {
        [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
        _ => return (&[], &[]),
    };
    let rest = &data[2..];
    rest.split_at(n.min(rest.len()))
}

/// Safetensors bytes and a shard index. The first byte picks the layout:
/// even, `rest` is one `model.safetensors`; odd, `rest` is
/// `[u16 n][index json: n bytes][u16 m][a.safetensors: m bytes][b.safetensors]`.
pub fn safetensors(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    let (single, index) = (
        dir.join("model.safetensors"),
        dir.join("model.safetensors.index.json"),
    );
    if mode % 2 == 0 {
        let _ = std::fs::remove_file(&index);
        std::fs::write(&single, rest).expect("write");
    } else {
        let _ = std::fs::remove_file(&single);
        let (text, rest) = split(rest);
        let (a, b) = split(rest);
        std::fs::write(&index, text).expect("write");
        std::fs::write(dir.join("a.safetensors"), a).expect("write");
        std::fs::write(dir.join("b.safetensors"), b).expect("write");
    }
    if let Ok(files) = WeightFiles::open(&dir) {
        take_all(files, &micro_config());
    }
}

const POLICIES: [&str; 9] = [
    "none",
    "drop:score",
    "drop:order",
    "drop:reverse-order",
    "drop:random",
    "drop:random:7",
    "reroute:next-best",
    "reroute:optimal",
    "expand:local",
];

/// `route` over logits and flags decoded from the bytes:
/// `[experts u16][top_k u8][policy u8][flags u8][ranks u8][gamma f64][logits f32...]`.
pub fn routing(data: &[u8]) {
    if data.len() < 14 {
        return;
    }
    let experts = u16::from_le_bytes([data[0], data[1]]) as usize % 600;
    let top_k = data[2] as usize;
    let policy: Policy = POLICIES[data[3] as usize % POLICIES.len()]
        .parse()
        .expect("known policy");
    let flags = data[4];
    let ranks = data[5] as usize % 9;
    let gamma = f64::from_le_bytes(data[6..14].try_into().expect("8 bytes"));
    let values: Vec<f32> = data[14..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take(8192)
        .collect();
    let tokens = values.len().checked_div(experts).unwrap_or(0);
    let len = if flags & 8 != 0 {
        values.len() // a length that need not match tokens x experts
    } else {
        tokens * experts
    };
    let mut cfg = RouterConfig::new(top_k, policy)
        .with_ranks(ranks)
        .with_renormalize(flags & 1 != 0);
    if flags & 2 != 0 {
        cfg = cfg.with_scope(CapacityScope::Rank);
    }
    if flags & 4 != 0 {
        cfg = cfg.with_capacity_factor(gamma);
    }
    let Ok(logits) = Logits::new(&values[..len], tokens, experts) else {
        return;
    };
    if let Ok(plan) = route(&logits, &cfg) {
        let _ = plan.stats();
        // Outputs never hold NaN or Inf (issue 11, item 3).
        let bad = plan.weights().iter().position(|w| !w.is_finite());
        assert!(
            bad.is_none(),
            "combine weight {bad:?} is not finite: {cfg:?}"
        );
    }
}
