//! Build script. Without feature `cuda` it only declares the cfgs: nothing CUDA is needed or run.
//!
//! With `--features cuda`:
//! - nvcc comes from `NVCC`, `CUDA_HOME`, `PATH`, then `.cuda/` (what `tools/setup-cuda.sh`
//!   installs); CUTLASS from `CUTLASS_DIR`, then `.cuda/` (build/toolchain.rs).
//! - Each `cuda/**/*.cu` (not `_*.cu`, not under a `cutlass/` folder) becomes its own static library
//!   through its own `cc::Build`, for `CAPMOE_CUDA_ARCHS` (default `80;90a`; PTX embedded for the
//!   newest). The flags live in one place: `toolchain::nvcc_flags`.
//! - Rebuilds: cargo reruns this script when a file under cuda/ or build/ or one of
//!   `toolchain::ENV_VARS` changes. A file's library is then reused from `OUT_DIR/cuda/<lib>-<key>/`
//!   when its key matches: a hash of nvcc's version, the flags, every header under cuda/, the
//!   file itself and cc's compiler command (build/kernels.rs). Only changed files reach nvcc.
//! - ptxas `-v` output goes to `OUT_DIR/ptxas.txt`; a table is printed as cargo warnings when a
//!   kernel spills (or `CAPMOE_PTXAS_REPORT=1`), and a spill in cuda/routing/ fails the build.
//! - `CAPMOE_WRITE_PTX=1` rewrites ptx/ (committed; CI checks it is fresh). Otherwise the source
//!   tree is never written.
//! - cfgs: `capmoe_cuda` (kernels compiled and linked), `capmoe_sm90` (90a among the archs);
//!   `CAPMOE_CUDA_ARCHS` is passed to rustc as an env var, and `OUT_DIR/cuda_sources.rs` lists
//!   the compiled .cu files (`include!` it if useful).

#[cfg(feature = "cuda")]
#[path = "build/cuda.rs"]
mod cuda;
#[cfg(feature = "cuda")]
#[path = "build/kernels.rs"]
mod kernels;
#[cfg(feature = "cuda")]
#[path = "build/ptxas.rs"]
mod ptxas;
#[cfg(feature = "cuda")]
#[path = "build/toolchain.rs"]
mod toolchain;

fn main() {
    // Declared always, so `unexpected_cfgs` never fires with or without the feature.
    println!("cargo::rustc-check-cfg=cfg(capmoe_cuda)");
    println!("cargo::rustc-check-cfg=cfg(capmoe_sm90)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    // Without the feature: nothing else (cc is an optional build-dependency of `cuda`).
    #[cfg(feature = "cuda")]
    if let Err(e) = cuda::build() {
        eprintln!("\nerror: {e}\n");
        std::process::exit(1);
    }
}
