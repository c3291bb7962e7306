//! Finding the CUDA toolchain and CUTLASS, and the one place where the nvcc flags live.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables that change what the build script does; cargo reruns it when one changes.
/// PATH is deliberately absent (it changes between shells); set NVCC or CUDA_HOME to pin nvcc.
pub const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUTLASS_DIR",
    "CAPMOE_CUDA_ARCHS",
    "CAPMOE_PTXAS_REPORT",
    "CAPMOE_WRITE_PTX",
    "CAPMOE_FFN_VARIANTS",
    "CXX",
    "CXXFLAGS",
];

pub const DEFAULT_ARCHS: &str = "80;90a";

pub struct Toolchain {
    pub nvcc: PathBuf,
    /// Where libcudart_static.a lives.
    pub lib_dir: PathBuf,
    /// `<cutlass>/include` when CUTLASS was found (only CUTLASS instantiations need it).
    pub cutlass_include: Option<PathBuf>,
    /// `nvcc --version`, part of every cache key.
    pub version: String,
}

/// The project-local toolchain that tools/setup-cuda.sh installs.
fn project_nvcc(root: &Path) -> PathBuf {
    root.join(".cuda/site/nvidia/cu13/bin/nvcc")
}

fn nonempty_env(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// nvcc through `NVCC`, then `CUDA_HOME`, then `PATH`, then the project folder `.cuda`.
fn find_nvcc(root: &Path) -> Result<PathBuf, String> {
    if let Some(nvcc) = nonempty_env("NVCC") {
        let p = PathBuf::from(&nvcc);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NVCC={nvcc} is not a file"))
        };
    }
    if let Some(home) = nonempty_env("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CUDA_HOME={home} has no bin/nvcc"))
        };
    }
    if let Some(path) = env::var_os("PATH") {
        if let Some(p) = env::split_paths(&path)
            .map(|d| d.join("nvcc"))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    let p = project_nvcc(root);
    if p.is_file() {
        return Ok(p);
    }
    Err("no nvcc in NVCC, CUDA_HOME, PATH or .cuda/".into())
}

/// CUTLASS through `CUTLASS_DIR`, then the project folder `.cuda`.
fn find_cutlass(root: &Path) -> Option<PathBuf> {
    let dir = nonempty_env("CUTLASS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cuda/site/cutlass_library/source"));
    let inc = dir.join("include");
    inc.join("cutlass/cutlass.h").is_file().then_some(inc)
}

/// The folder holding libcudart_static.a: the wheel keeps it in `lib/`, a system install in
/// `lib64/` or `targets/<arch>-linux/lib/`.
fn find_lib_dir(nvcc: &Path) -> Option<PathBuf> {
    let home = nvcc.parent()?.parent()?;
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let arch = if arch == "aarch64" {
        "sbsa".into()
    } else {
        arch
    };
    [
        home.join("lib"),
        home.join("lib64"),
        home.join(format!("targets/{arch}-linux/lib")),
    ]
    .into_iter()
    .find(|d| d.join("libcudart_static.a").is_file())
}

pub fn find(root: &Path) -> Result<Toolchain, String> {
    let help =
        "install the pinned toolchain with `tools/setup-cuda.sh` (build.rs then finds .cuda/ \
                itself), or `eval \"$(tools/setup-cuda.sh)\"` to also export NVCC, CUDA_HOME and \
                CUTLASS_DIR; or build without `--features cuda`";
    let nvcc = find_nvcc(root).map_err(|e| format!("feature `cuda`: {e}.\n  Fix: {help}"))?;
    let out = Command::new(&nvcc).arg("--version").output().map_err(|e| {
        format!(
            "feature `cuda`: cannot run {}: {e}.\n  Fix: {help}",
            nvcc.display()
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "feature `cuda`: `{} --version` failed.\n  Fix: {help}",
            nvcc.display()
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib_dir = find_lib_dir(&nvcc).ok_or_else(|| {
        format!(
            "feature `cuda`: no libcudart_static.a next to {} (looked in lib/, lib64/, targets/*/lib/).\n  Fix: {help}",
            nvcc.display()
        )
    })?;
    Ok(Toolchain {
        nvcc,
        lib_dir,
        cutlass_include: find_cutlass(root),
        version,
    })
}

/// One CUDA architecture such as `80` or `90a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    pub num: u32,
    pub suffix: String,
}

impl Arch {
    pub fn name(&self) -> String {
        format!("{}{}", self.num, self.suffix)
    }
}

/// `CAPMOE_CUDA_ARCHS` (`;`, `,` or space separated, `sm_` prefixes allowed), sorted oldest first.
pub fn archs() -> Result<Vec<Arch>, String> {
    let spec = nonempty_env("CAPMOE_CUDA_ARCHS").unwrap_or_else(|| DEFAULT_ARCHS.into());
    let mut out = Vec::new();
    for tok in spec
        .split([';', ',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let t = tok.trim_start_matches("sm_").trim_start_matches("compute_");
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        let suffix = &t[digits.len()..];
        let num = digits
            .parse::<u32>()
            .ok()
            .filter(|_| matches!(suffix, "" | "a" | "f"));
        let Some(num) = num else {
            return Err(format!(
                "CAPMOE_CUDA_ARCHS: `{tok}` is not an architecture like 80 or 90a"
            ));
        };
        let arch = Arch {
            num,
            suffix: suffix.into(),
        };
        if !out.contains(&arch) {
            out.push(arch);
        }
    }
    if out.is_empty() {
        return Err("CAPMOE_CUDA_ARCHS is empty".into());
    }
    out.sort_by(|a, b| (a.num, &a.suffix).cmp(&(b.num, &b.suffix)));
    Ok(out)
}

/// The flags every .cu file is compiled with, whatever its architectures (cc adds `-c`, `-o`,
/// `-ccbin` and host flags). They are part of each file's cache key.
pub fn nvcc_flags(root: &Path) -> Vec<String> {
    let mut f: Vec<String> = [
        "-std=c++17",
        "-O3",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        // Routing numerics are bit-exact twins of the CPU oracle: keep
        // subnormals and IEEE division (p = e / sum can be subnormal).
        "-ftz=false",
        "-prec-div=true",
        "-Xptxas",
        "-v",
    ]
    .map(String::from)
    .to_vec();
    f.push(format!("-I{}", root.join("cuda").display()));
    f
}

/// The newest arch without an arch-specific suffix (`90a` -> `90`): the PTX that newer GPUs can
/// JIT. `compute_90a` PTX runs on sm_90 only; the hand-written kernels use no 90a feature.
pub fn portable_ptx_arch(archs: &[Arch]) -> u32 {
    archs.last().expect("at least one arch").num
}

/// `-gencode` flags of the hand-written kernels: SASS for every arch, and portable PTX of the
/// newest (`compute_90` for `90a`) in the fatbin, so that a newer GPU can JIT them.
pub fn gencode(archs: &[Arch]) -> Vec<String> {
    let ptx = portable_ptx_arch(archs);
    let mut f = Vec::new();
    let mut ptx_done = false;
    for a in archs {
        let n = a.name();
        f.push("-gencode".into());
        if a.suffix.is_empty() && a.num == ptx {
            f.push(format!("arch=compute_{n},code=[sm_{n},compute_{n}]"));
            ptx_done = true;
        } else {
            f.push(format!("arch=compute_{n},code=sm_{n}"));
        }
    }
    if !ptx_done {
        f.push("-gencode".into());
        f.push(format!("arch=compute_{ptx},code=compute_{ptx}"));
    }
    f
}

/// The flags for `nvcc -ptx` (ptx/ is committed, so nothing that holds a path of this checkout:
/// no `-lineinfo`, which records absolute file names).
pub fn ptx_flags(archs: &[Arch]) -> Vec<String> {
    let newest = portable_ptx_arch(archs);
    [
        "-std=c++17",
        "-O3",
        "--expt-relaxed-constexpr",
        "-ftz=false",
        "-prec-div=true",
        "-ptx",
        "-Icuda",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("-arch=compute_{newest}")])
    .collect()
}
