//! The CUTLASS grouped-GEMM variants of the expert FFN, declared once.
//!
//! build.rs includes this file through `#[path]` and generates one CUTLASS
//! instantiation per entry (build/ffn.rs); the runtime includes the same file
//! and its autotuner times the variants that were compiled. The file uses
//! nothing outside `core`, so that both can include it.
//!
//! Every variant computes, for each group `g` of a grouped problem,
//! `D_g[m, n] = A_g[m, k] * B_g[n, k]^T` in bf16 with f32 accumulation
//! (A and D row-major, B row-major `[n, k]` as `nn.Linear` stores weights).

/// The GPU generation a variant's kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// CUTLASS 2.x `GemmGrouped` (cp.async multistage, `mma.sync`), device-only
    /// scheduling. Built for sm_80 and sm_90 (and PTX for newer GPUs), so it
    /// runs on every GPU from Ampere on.
    Sm80,
    /// CUTLASS 3.x ptr-array TMA warp-specialized grouped GEMM (`wgmma`).
    /// Built for `sm_90a` only: runs on compute capability 9.0 exactly.
    Sm90,
}

/// The kernel schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// SM90: two consumer warp groups share one output tile.
    Cooperative,
    /// SM90: two consumer warp groups alternate tiles (overlaps epilogue and
    /// mainloop; suits small tiles).
    Pingpong,
    /// SM80: a multistage pipeline with `stages` shared-memory buffers and
    /// warps of `warp` (m, n, k) each.
    Multistage {
        /// Shared-memory pipeline stages.
        stages: u32,
        /// Warp tile (m, n, k).
        warp: [u32; 3],
    },
}

/// One compiled kernel configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Unique, `[a-z0-9_]`: names the generated file and its `extern "C"`
    /// symbols (`capmoe_gg_<name>` and `capmoe_gg_<name>_workspace`).
    pub name: &'static str,
    /// The GPU generation the kernel is written for.
    pub arch: Arch,
    /// Threadblock tile (m, n, k).
    pub tile: [u32; 3],
    /// SM90 thread-block cluster (m, n); `[1, 1]` for SM80.
    pub cluster: [u32; 2],
    /// The kernel schedule.
    pub schedule: Schedule,
}

impl Variant {
    /// Whether the variant's kernel runs on a GPU of compute capability
    /// `major.minor`.
    pub const fn runs_on(&self, major: u32, minor: u32) -> bool {
        match self.arch {
            Arch::Sm80 => major >= 8,
            Arch::Sm90 => major == 9 && minor == 0,
        }
    }
}

/// Every variant capmoe builds. Small M tiles and pingpong serve decode
/// (a few rows per expert, bound by reading the weights); large tiles and
/// clusters serve prefill (bound by tensor-core rate). Each SM90 entry costs
/// 45-70 s of nvcc and ~3.4 GB on a 2-core machine, so the set is
/// kept to what the autotuner has reason to pick.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "sm90_coop_128x128x64_c1x1",
        arch: Arch::Sm90,
        tile: [128, 128, 64],
        cluster: [1, 1],
        schedule: Schedule::Cooperative,
    },
    Variant {
        name: "sm90_coop_128x256x64_c2x1",
        arch: Arch::Sm90,
        tile: [128, 256, 64],
        cluster: [2, 1],
        schedule: Schedule::Cooperative,
    },
    Variant {
        name: "sm90_pp_64x128x64_c1x1",
        arch: Arch::Sm90,
        tile: [64, 128, 64],
        cluster: [1, 1],
        schedule: Schedule::Pingpong,
    },
    Variant {
        name: "sm90_pp_64x256x64_c1x2",
        arch: Arch::Sm90,
        tile: [64, 256, 64],
        cluster: [1, 2],
        schedule: Schedule::Pingpong,
    },
    // Decode GEMM2 (n = H = 4096): 64-wide n tiles double the CTAs per
    // expert, so a few active experts still cover the SMs; deep k tiles keep
    // each load large.
    Variant {
        name: "sm90_pp_64x64x128_c1x1",
        arch: Arch::Sm90,
        tile: [64, 64, 128],
        cluster: [1, 1],
        schedule: Schedule::Pingpong,
    },
    Variant {
        name: "sm80_128x128x32_s4",
        arch: Arch::Sm80,
        tile: [128, 128, 32],
        cluster: [1, 1],
        schedule: Schedule::Multistage {
            stages: 4,
            warp: [64, 64, 32],
        },
    },
    Variant {
        name: "sm80_64x128x64_s3",
        arch: Arch::Sm80,
        tile: [64, 128, 64],
        cluster: [1, 1],
        schedule: Schedule::Multistage {
            stages: 3,
            warp: [32, 64, 64],
        },
    },
];

/// The variant named `name`.
pub fn by_name(name: &str) -> Option<&'static Variant> {
    VARIANTS.iter().find(|v| v.name == name)
}
