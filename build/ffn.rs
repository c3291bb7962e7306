//! The CUTLASS grouped-GEMM variants of the expert FFN (declared in src/expert/variants.rs): which
//! ones this build compiles, their generated .cu files (`OUT_DIR/ffn/<name>.cu`, from the templates
//! in cuda/expert/templates/) and the Rust table of what was compiled (`OUT_DIR/ffn_variants.rs`).
//!
//! - SM90 variants: `sm_90a` SASS only, when `90a` is among the archs (wgmma and TMA are
//!   arch-specific, so no PTX: it could not run anywhere else).
//! - SM80 variants: when any arch >= 80 is listed. One front-end pass for `compute_80`, then ptxas
//!   for every listed arch's generation (`sm_80`, `sm_90`, ...; the SM80 kernel needs no
//!   arch-specific feature), plus the `compute_80` PTX, which costs no extra pass and lets a newer
//!   GPU JIT it.
//! - `CAPMOE_FFN_VARIANTS=a,b` builds only those (fast development builds); `none` builds none.
//!   Unknown names fail the build with the list of valid ones.

use crate::kernels::{self, Source};
use crate::toolchain::{Arch, Toolchain};
use crate::variants::{self, Variant, VARIANTS};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

const SM90_TEMPLATE: &str = include_str!("../cuda/expert/templates/gg_sm90.cu");
const SM80_TEMPLATE: &str = include_str!("../cuda/expert/templates/gg_sm80.cu");

/// A variant chosen for this build: its index in `VARIANTS` and its source file.
pub struct Planned {
    pub index: usize,
    pub variant: &'static Variant,
    pub source: Source,
}

/// The `-gencode` flags of `v` for `archs`, or None when none of them can run it.
fn gencode(v: &Variant, archs: &[Arch]) -> Option<Vec<String>> {
    let code = match v.arch {
        variants::Arch::Sm90 => {
            let has_90a = archs.iter().any(|a| a.num == 90 && a.suffix == "a");
            has_90a.then(|| "arch=compute_90a,code=sm_90a".to_string())?
        }
        variants::Arch::Sm80 => {
            let mut sass: Vec<String> = Vec::new();
            for a in archs.iter().filter(|a| a.num >= 80) {
                let s = format!("sm_{}", a.num);
                if !sass.contains(&s) {
                    sass.push(s);
                }
            }
            if sass.is_empty() {
                return None;
            }
            format!("arch=compute_80,code=[{},compute_80]", sass.join(","))
        }
    };
    Some(vec!["-gencode".into(), code])
}

/// Checks what the templates rely on: names that can be C symbols and file names, unique, and a
/// schedule that belongs to the arch.
fn check_declarations() -> Result<(), String> {
    for (i, v) in VARIANTS.iter().enumerate() {
        let ok_name = !v.name.is_empty()
            && v.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok_name {
            return Err(format!(
                "src/expert/variants.rs: variant name `{}` must be non-empty [a-z0-9_]",
                v.name
            ));
        }
        if VARIANTS[..i].iter().any(|w| w.name == v.name) {
            return Err(format!(
                "src/expert/variants.rs: variant name `{}` is declared twice",
                v.name
            ));
        }
        let fits = matches!(
            (v.arch, v.schedule),
            (
                variants::Arch::Sm90,
                variants::Schedule::Cooperative | variants::Schedule::Pingpong
            ) | (variants::Arch::Sm80, variants::Schedule::Multistage { .. })
        );
        if !fits {
            return Err(format!(
                "src/expert/variants.rs: variant `{}`: schedule {:?} is not one of {:?}",
                v.name, v.schedule, v.arch
            ));
        }
    }
    Ok(())
}

/// The variants `CAPMOE_FFN_VARIANTS` asks for (all when unset or empty), in `VARIANTS` order.
fn requested() -> Result<Vec<usize>, String> {
    let Some(spec) = std::env::var("CAPMOE_FFN_VARIANTS")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        return Ok((0..VARIANTS.len()).collect());
    };
    if spec.trim() == "none" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(i) = VARIANTS.iter().position(|v| v.name == name) else {
            let valid: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
            return Err(format!(
                "CAPMOE_FFN_VARIANTS: unknown variant `{name}`; valid: {} (or `none`)",
                valid.join(", ")
            ));
        };
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Fills a template: every `@KEY@` must be replaced.
fn fill(template: &str, vars: &[(&str, String)]) -> Result<String, String> {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    let left = s.match_indices('@').find_map(|(i, _)| {
        let rest = &s[i + 1..];
        let end = rest.find('@')?;
        let word = &rest[..end];
        let placeholder = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        placeholder.then(|| word.to_string())
    });
    match left {
        Some(w) => Err(format!(
            "cuda/expert/templates: placeholder @{w}@ has no value"
        )),
        None => Ok(s),
    }
}

/// The .cu text of `v`.
fn generate(v: &Variant) -> Result<String, String> {
    let [tm, tn, tk] = v.tile.map(|x| x.to_string());
    let mut vars = vec![
        ("NAME", v.name.to_string()),
        ("TM", tm),
        ("TN", tn),
        ("TK", tk),
    ];
    match v.schedule {
        variants::Schedule::Cooperative | variants::Schedule::Pingpong => {
            let [cm, cn] = v.cluster.map(|x| x.to_string());
            let sched = if v.schedule == variants::Schedule::Cooperative {
                "Cooperative"
            } else {
                "Pingpong"
            };
            vars.extend([("CM", cm), ("CN", cn), ("SCHEDULE", sched.to_string())]);
            fill(SM90_TEMPLATE, &vars)
        }
        variants::Schedule::Multistage { stages, warp } => {
            let [wm, wn, wk] = warp.map(|x| x.to_string());
            vars.extend([
                ("STAGES", stages.to_string()),
                ("WM", wm),
                ("WN", wn),
                ("WK", wk),
            ]);
            fill(SM80_TEMPLATE, &vars)
        }
    }
}

/// The variants to compile for `archs`, each written to `OUT_DIR/ffn/<name>.cu` (rewritten only
/// when its text changes). Requested variants no listed arch can run are skipped with a warning.
pub fn plan(out: &Path, tc: &Toolchain, archs: &[Arch]) -> Result<Vec<Planned>, String> {
    check_declarations()?;
    let explicit = std::env::var("CAPMOE_FFN_VARIANTS").is_ok_and(|s| !s.trim().is_empty());
    let mut chosen = Vec::new();
    for i in requested()? {
        let v = &VARIANTS[i];
        match gencode(v, archs) {
            Some(g) => chosen.push((i, v, g)),
            None if explicit => println!(
                "cargo:warning=CAPMOE_FFN_VARIANTS: `{}` ({:?}) skipped: CAPMOE_CUDA_ARCHS has no arch for it",
                v.name, v.arch
            ),
            None => {}
        }
    }
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let Some(inc) = &tc.cutlass_include else {
        return Err(
            "feature `cuda`: CUTLASS headers not found (CUTLASS_DIR, then \
             .cuda/site/cutlass_library/source) for the grouped-GEMM variants.\n  Fix: run \
             `tools/setup-cuda.sh` (or set CUTLASS_DIR to a CUTLASS 4.2 checkout), or build \
             without them: CAPMOE_FFN_VARIANTS=none"
                .into(),
        );
    };
    let stamp = kernels::tree_stamp(inc);
    let dir = out.join("ffn");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut planned = Vec::new();
    for (index, variant, gencode) in chosen {
        let text = generate(variant)?;
        let path = dir.join(format!("{}.cu", variant.name));
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let rel = format!("ffn/{}.cu", variant.name);
        planned.push(Planned {
            index,
            variant,
            source: Source {
                path,
                label: format!("OUT_DIR/{rel}"),
                rel,
                lib: format!("capmoe_gg_{}", variant.name),
                gencode,
                includes: vec![inc.clone()],
                includes_key: stamp.clone(),
            },
        });
    }
    Ok(planned)
}

/// `OUT_DIR/ffn_variants.rs`, included by src/cuda/expert/variants.rs: the launchers' declarations
/// and `COMPILED`, the compiled variants in `VARIANTS` order. The including module defines
/// `GgWorkspaceFn`, `GgRunFn` and `CompiledVariant` and imports `sys`; each declaration is checked
/// against the header's `capmoe_gg_fn` / `capmoe_gg_workspace_fn` (as generated into sys.rs), so
/// a signature that drifts fails to compile (the .cu side is checked by a static_assert).
pub fn write_rust(out: &Path, planned: &[Planned]) -> Result<(), String> {
    let mut s = String::from(
        "// Generated by build.rs (build/ffn.rs) from src/expert/variants.rs: the grouped-GEMM\n\
         // variants compiled into this build. Do not edit.\n\n",
    );
    s.push_str("extern \"C\" {\n");
    for p in planned {
        let n = p.variant.name;
        let _ = write!(
            s,
            "    fn capmoe_gg_{n}_workspace(groups: ::std::ffi::c_int, sm_count: ::std::ffi::c_int) -> usize;\n\
             \x20   fn capmoe_gg_{n}(args: *const sys::capmoe_gg_args, stream: sys::capmoe_stream_t) -> ::std::ffi::c_int;\n"
        );
    }
    s.push_str("}\n\n");
    for p in planned {
        let n = p.variant.name;
        let _ = write!(
            s,
            "const _: sys::capmoe_gg_fn = Some(capmoe_gg_{n});\n\
             const _: sys::capmoe_gg_workspace_fn = Some(capmoe_gg_{n}_workspace);\n"
        );
    }
    s.push('\n');

    s.push_str(
        "/// The variants compiled into this build (`CAPMOE_CUDA_ARCHS`, `CAPMOE_FFN_VARIANTS`), in\n\
         /// `VARIANTS` order.\n\
         pub static COMPILED: &[CompiledVariant] = &[\n",
    );
    for p in planned {
        let n = p.variant.name;
        let _ = writeln!(
            s,
            "    CompiledVariant {{\n        variant: &VARIANTS[{}],\n        workspace: capmoe_gg_{n}_workspace,\n        run: capmoe_gg_{n},\n    }},",
            p.index
        );
    }
    s.push_str("];\n");
    let path = out.join("ffn_variants.rs");
    fs::write(&path, s).map_err(|e| format!("{}: {e}", path.display()))
}
