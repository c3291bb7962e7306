//! The CUTLASS grouped-GEMM variants compiled into this build.
//!
//! The variants are declared in [`crate::expert::variants`] (the items used
//! here are re-exported); build.rs generates and compiles one CUTLASS instantiation per
//! variant its archs can run (build/ffn.rs) and writes
//! `OUT_DIR/ffn_variants.rs`, included below: the `extern "C"` launchers and
//! [`COMPILED`]. `CAPMOE_FFN_VARIANTS` can narrow the set, down to none.
//!
//! Launcher ABI (`capmoe_gg_fn` in cuda/include/capmoe_abi.h), for each group `g < groups`:
//! `D_g[m, n] = A_g[m, k] * B_g[n, k]^T`, bf16 in and out, f32 accumulate.
//! `problems` is a device `int[3 * groups]` of `{m, n, k}` (`m` may be 0);
//! `a`, `b`, `d` are device arrays of `groups` device pointers and `lda`,
//! `ldb`, `ldd` device `int64` arrays of leading dimensions in elements (A
//! and D row-major, B row-major `[n, k]`). `max_n`/`max_k` bound every
//! group's n and k on the host (>= 8, multiples of 8). Returns 0, a
//! `cudaError_t` (> 0), -1 for a bad argument (including a workspace smaller
//! than [`CompiledVariant::workspace`] says or not 64-byte aligned), or -2
//! when CUTLASS rejects the problem.

use crate::cuda::sys;
use std::ffi::c_int;

pub use crate::expert::variants::{Schedule, Variant, VARIANTS};

/// `capmoe_gg_<name>_workspace(groups, sm_count)`: bytes of device
/// workspace the launcher needs for `groups` groups on a GPU with
/// `sm_count` SMs (0 for SM80 variants, and for arguments the launcher
/// would refuse). Pass the same `sm_count` to the launch. The function
/// pointer of `sys::capmoe_gg_workspace_fn` (checked in the generated table).
pub type GgWorkspaceFn = unsafe extern "C" fn(groups: c_int, sm_count: c_int) -> usize;

/// `capmoe_gg_<name>(args, stream)`: see the module docs and
/// `sys::capmoe_gg_args`; the function pointer of `sys::capmoe_gg_fn`.
pub type GgRunFn =
    unsafe extern "C" fn(args: *const sys::capmoe_gg_args, stream: sys::capmoe_stream_t) -> c_int;

/// A variant and its compiled launchers.
#[derive(Debug)]
pub struct CompiledVariant {
    /// Its name, architecture, tile and schedule.
    pub variant: &'static Variant,
    /// Its workspace-size query.
    pub workspace: GgWorkspaceFn,
    /// Its grouped-GEMM launcher.
    pub run: GgRunFn,
}

include!(concat!(env!("OUT_DIR"), "/ffn_variants.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_variants_are_declared_once_in_order() {
        // By value: a `const` slice may be instantiated more than once, so no pointer identity.
        let idx: Vec<usize> = COMPILED
            .iter()
            .map(|c| {
                let i = VARIANTS
                    .iter()
                    .position(|v| v.name == c.variant.name)
                    .expect("COMPILED names a declared variant");
                assert_eq!(VARIANTS[i], *c.variant);
                i
            })
            .collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "{idx:?}");
    }

    #[test]
    fn workspace_is_zero_for_refused_arguments() {
        // Host-only: the workspace queries touch no device.
        for c in COMPILED {
            // SAFETY: the query takes two ints and reads no memory.
            let (bad_groups, bad_sms) = unsafe { ((c.workspace)(0, 132), (c.workspace)(8, 0)) };
            assert_eq!((bad_groups, bad_sms), (0, 0), "{}", c.variant.name);
        }
    }
}
