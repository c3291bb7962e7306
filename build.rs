//! Build script. Without feature `cuda` it does nothing: nothing CUDA is needed or run.
//!
//! With `--features cuda`:
//! - nvcc comes from `NVCC`, `CUDA_HOME`, `PATH`, then `.cuda/` (what `tools/setup-cuda.sh`
//!   installs); CUTLASS from `CUTLASS_DIR`, then `.cuda/` (build/toolchain.rs).
//! - Each `cuda/**/*.cu` (not `_*.cu`, not under a `cutlass/` or `templates/`
//!   folder or the emulation's `emu/` folder)
//!   becomes its own static library through its own `cc::Build`, for `CAPMOE_CUDA_ARCHS`
//!   (default `80;90a`), with portable PTX of the newest embedded (`compute_90`, not
//!   `compute_90a`, so that newer GPUs can JIT it). The shared flags live in one place:
//!   `toolchain::nvcc_flags`.
//! - The CUTLASS grouped-GEMM variants declared in src/expert/variants.rs (included here through
//!   `#[path]`) are generated from cuda/expert/templates/ into `OUT_DIR/ffn/<name>.cu` and built the
//!   same way, each with CUTLASS's include folder and its own archs: SM90 ones for `sm_90a` when
//!   `90a` is listed, SM80 ones for every listed arch >= 80 (build/ffn.rs). Each exports
//!   `capmoe_gg_<name>` and `capmoe_gg_<name>_workspace`; `OUT_DIR/ffn_variants.rs` declares them
//!   and lists them in `COMPILED` (included by src/cuda/expert/variants.rs). `CAPMOE_FFN_VARIANTS=a,b`
//!   builds only those, `none` none (an SM90 variant costs 45-70 s of nvcc and 3.4 GB on 2 cores).
//! - Rebuilds: cargo reruns this script when a file under cuda/ or build/ or one of
//!   `toolchain::ENV_VARS` changes. A file's library is then reused from
//!   `<target>/capmoe-cuda-cache/<lib>-<key>/`, shared by all profiles, when its key matches: a
//!   hash of nvcc's version, the flags, the file's archs, every header under cuda/, a stamp of the
//!   extra include folders (CUTLASS), the file itself and cc's compiler command
//!   (build/kernels.rs). Only changed files reach nvcc; the two most recently used libraries of
//!   each file are kept.
//! - ptxas `-v` output goes to `OUT_DIR/ptxas.txt`; a table is printed as cargo warnings when a
//!   kernel spills (or `CAPMOE_PTXAS_REPORT=1`), and a spill in cuda/routing/ fails the build.
//! - `CAPMOE_WRITE_PTX=1` rewrites ptx/ (committed, hand-written kernels only; CI checks it is
//!   fresh). Otherwise the source tree is never written.
//! - `CAPMOE_CUDA_ARCHS` is passed to rustc as an env var, and `OUT_DIR/cuda_sources.rs` lists
//!   the compiled .cu files under cuda/ (`include!` it if useful). No cfgs: the `cuda` feature
//!   is the only switch Rust code sees.
//! - cuda/include/capmoe_abi.h is the C ABI; src/cuda/sys.rs is generated from it by
//!   tools/gen-bindings.sh and committed, so no build needs libclang.

#[cfg(feature = "cuda")]
#[cfg_attr(feature = "emulate", allow(dead_code))]
#[path = "build/cuda.rs"]
mod cuda;
#[cfg(feature = "emulate")]
#[path = "build/emu.rs"]
mod emu;
#[cfg(feature = "cuda")]
#[cfg_attr(feature = "emulate", allow(dead_code))]
#[path = "build/ffn.rs"]
mod ffn;
#[cfg(feature = "cuda")]
#[cfg_attr(feature = "emulate", allow(dead_code))]
#[path = "build/kernels.rs"]
mod kernels;
#[cfg(feature = "cuda")]
#[cfg_attr(feature = "emulate", allow(dead_code))]
#[path = "build/ptxas.rs"]
mod ptxas;
#[cfg(feature = "cuda")]
#[cfg_attr(feature = "emulate", allow(dead_code))]
#[path = "build/toolchain.rs"]
mod toolchain;
// The variant declarations, shared with the runtime (its lookup helpers are unused here).
#[cfg(feature = "cuda")]
#[allow(dead_code)]
#[path = "src/expert/variants.rs"]
mod variants;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    // Without the feature: nothing else (cc is an optional build-dependency of `cuda`).
    println!("cargo::rustc-check-cfg=cfg(capmoe_emulate)");
    // `emulate` (which turns on `cuda`) builds the kernels with the host compiler instead of nvcc.
    #[cfg(feature = "emulate")]
    let result = emu::build();
    #[cfg(all(feature = "cuda", not(feature = "emulate")))]
    let result = cuda::build();
    #[cfg(feature = "cuda")]
    if let Err(e) = result {
        eprintln!("\nerror: {e}\n");
        std::process::exit(1);
    }
}
