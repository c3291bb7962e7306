//! The .cu files to build (the hand-written ones under cuda/ and the generated CUTLASS variants),
//! their cache keys, compiling one into a static library with cc (skipped when the library for its
//! key is already in the shared cache), and PTX for ptx/.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// FNV-1a, 64 bit: a stable cache key without a build dependency.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// Feeds a length-prefixed item, so that ("ab","c") and ("a","bc") differ.
    pub fn item(&mut self, bytes: &[u8]) -> &mut Self {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Folders of cuda/ that nvcc never sees: `emu` holds the CPU emulation layer (its own build),
/// so that editing it neither compiles it with nvcc nor invalidates the cached libraries.
const NOT_NVCC: &[&str] = &["emu"];

/// Folders under cuda/ whose .cu files are no kernels of their own: vendored `cutlass` trees and
/// the CUTLASS `templates` (cuda/expert/templates/) that build/ffn.rs instantiates into OUT_DIR.
const NOT_KERNELS: &[&str] = &["cutlass", "templates"];

/// Every file under `dir`, sorted, skipping the `NOT_KERNELS` folders when `skip_cutlass`.
fn walk(dir: &Path, skip_cutlass: bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            let named = |n: &std::ffi::OsStr| NOT_KERNELS.iter().any(|k| n == *k);
            if !(skip_cutlass && p.file_name().is_some_and(named)) {
                walk(&p, skip_cutlass, out);
            }
        } else {
            out.push(p);
        }
    }
}

/// One .cu file to build.
pub struct Source {
    pub path: PathBuf,
    /// Relative to cuda/ (`routing/gate.cu`), or to OUT_DIR for generated files (`ffn/<name>.cu`),
    /// with `/`. Part of the key, and the name in the ptxas report.
    pub rel: String,
    /// The file as messages name it: `cuda/routing/gate.cu`, `OUT_DIR/ffn/<name>.cu`.
    pub label: String,
    /// The static library's name: `capmoe_routing_gate`.
    pub lib: String,
    /// This file's `-gencode` flags (toolchain::gencode for the hand-written kernels).
    pub gencode: Vec<String>,
    /// Extra include folders (CUTLASS for the generated variants).
    pub includes: Vec<PathBuf>,
    /// Stands for the contents of `includes` in the cache key (see `tree_stamp`).
    pub includes_key: String,
}

/// The hand-written kernels: cuda/**/*.cu except files whose name starts with `_` (scratch) and
/// the `NOT_KERNELS` folders, each for `gencode`. The CUTLASS instantiations are generated into
/// OUT_DIR instead (build/ffn.rs).
pub fn sources(cuda_dir: &Path, gencode: &[String]) -> Vec<Source> {
    let mut files = Vec::new();
    walk(cuda_dir, true, &mut files);
    files.retain(|p| !emulation_only(cuda_dir, p));
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .map(|path| {
            let rel = path
                .strip_prefix(cuda_dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let stem = rel.trim_end_matches(".cu");
            let lib = format!(
                "capmoe_{}",
                stem.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect::<String>()
            );
            Source {
                path,
                label: format!("cuda/{rel}"),
                rel,
                lib,
                gencode: gencode.to_vec(),
                includes: Vec::new(),
                includes_key: String::new(),
            }
        })
        .collect()
}

/// Every file under cuda/ that is not a .cu source (headers): a change to any of them rebuilds all.
pub fn headers(cuda_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(cuda_dir, false, &mut files);
    files.retain(|p| {
        !emulation_only(cuda_dir, p)
            && matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("cuh" | "h" | "hpp" | "inl")
            )
    });
    files
}

/// Whether `p` lies in a folder of cuda/ that only the emulation build reads (`NOT_NVCC`).
fn emulation_only(cuda_dir: &Path, p: &Path) -> bool {
    p.strip_prefix(cuda_dir)
        .ok()
        .and_then(|r| r.components().next())
        .is_some_and(|c| NOT_NVCC.iter().any(|n| c.as_os_str() == *n))
}

/// A fingerprint of every file under `dir`: relative path, size and modification time. Used for
/// large read-only trees (CUTLASS: 800 files, 27 MB) where hashing the contents on every build
/// would cost more than it protects: a reinstall or an edit changes the times.
pub fn tree_stamp(dir: &Path) -> String {
    let mut files = Vec::new();
    walk(dir, false, &mut files);
    let mut h = Fnv::new();
    h.item(dir.to_string_lossy().as_bytes());
    for p in files {
        h.item(p.strip_prefix(dir).unwrap().to_string_lossy().as_bytes());
        if let Ok(m) = fs::metadata(&p) {
            h.item(&m.len().to_le_bytes());
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.item(&t.to_le_bytes());
        }
    }
    h.hex()
}

/// Hash of the headers' paths and contents (mistral.rs-style: one key for all includes).
pub fn headers_hash(cuda_dir: &Path) -> String {
    let mut h = Fnv::new();
    for p in headers(cuda_dir) {
        h.item(
            p.strip_prefix(cuda_dir)
                .unwrap()
                .to_string_lossy()
                .as_bytes(),
        );
        h.item(&fs::read(&p).unwrap_or_default());
    }
    h.hex()
}

/// Collects the stderr lines cc forwards from nvcc (ptxas -v output and errors).
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl cc::BuildMessageLogger for Lines {
    fn log(
        &self,
        kind: cc::BuildMessageKind,
        msg: cc::BuildMessage<'_>,
        _extra: &dyn std::any::Any,
    ) {
        if !matches!(kind, cc::BuildMessageKind::CompileCommand) {
            self.0.lock().unwrap().push(msg.to_string());
        }
    }
}

/// What one source needs for compiling: the shared flags and the part of the key they make.
pub struct Job<'a> {
    pub src: &'a Source,
    /// The flags of every file (toolchain::nvcc_flags); the source adds its gencode and includes.
    pub flags: &'a [String],
    /// Hash of nvcc's version, the shared flags and the headers under cuda/.
    pub common_key: &'a str,
    /// `--threads N` for nvcc (not part of the key: it doesn't change the output).
    pub nvcc_threads: usize,
}

/// A built (or cached) library: where it is and what ptxas said.
pub struct Built {
    pub dir: PathBuf,
    pub ptxas: Vec<String>,
    pub cached: bool,
    pub seconds: f64,
}

/// The cc::Build for one file. NVCC is set in the environment by the caller (cc reads it).
fn cc_build(job: &Job, out: &Path, logger: Arc<Lines>, threads: bool) -> cc::Build {
    let mut b = cc::Build::new();
    b.cuda(true)
        .cudart("none") // build.rs links cudart_static itself, once
        .file(&job.src.path)
        .out_dir(out)
        .debug(false) // cc would add -G (device debug) in dev builds
        .opt_level(3)
        .warnings(false)
        .cargo_metadata(false) // build.rs prints the link lines, also for cached libraries
        .cargo_warnings(false) // ptxas -v would flood the warnings; the logger keeps it
        .message_logger(Some(logger));
    for f in job.flags.iter().chain(&job.src.gencode) {
        b.flag(f);
    }
    for dir in &job.src.includes {
        b.include(dir);
    }
    if threads {
        b.flag("--threads").flag(job.nvcc_threads.to_string());
    }
    b
}

/// The full cache key of a job: the common key, the file's path and contents, its gencode, include
/// folders and their stamp, and cc's own view of the compiler (path and default args, which pick up
/// CXX and CXXFLAGS, and the include flags).
pub fn key(job: &Job) -> String {
    let probe = cc_build(job, Path::new("."), Arc::default(), false);
    let tool = probe.get_compiler();
    let mut h = Fnv::new();
    h.item(job.common_key.as_bytes())
        .item(job.src.rel.as_bytes());
    h.item(&fs::read(&job.src.path).unwrap_or_default());
    for f in &job.src.gencode {
        h.item(f.as_bytes());
    }
    h.item(job.src.includes_key.as_bytes());
    h.item(tool.path().to_string_lossy().as_bytes());
    for a in tool.args() {
        h.item(a.to_string_lossy().as_bytes());
    }
    h.hex()
}

/// The library cache: `capmoe-cuda-cache/` next to the profile folders (`target/` or
/// `target/<triple>/`), shared by every profile: dev, test, bench and release compile the same
/// kernels, and the keys hold everything that differs. OUT_DIR is
/// `<target>/[<triple>/]<profile>/build/capmoe-<hash>/out`; when it is laid out otherwise, the
/// cache falls back to `OUT_DIR/cuda-cache`.
pub fn cache_dir(out: &Path) -> PathBuf {
    let build = out.parent().and_then(Path::parent);
    let target = build
        .filter(|b| b.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent) // the profile folder
        .and_then(Path::parent);
    match target {
        Some(t) => t.join("capmoe-cuda-cache"),
        None => out.join("cuda-cache"),
    }
}

/// Marks a cached library as used now (prune keeps the most recently used ones).
const USED_STAMP: &str = "used";

/// Builds `job` into `cache/<lib>-<key>/lib<lib>.a` unless that exists. The ptxas output is stored
/// next to the library so that a cached library still reports (and fails on) its spills.
///
/// The cache is shared by every profile and may be filled by two build scripts at once (`cargo
/// test` next to `cargo bench`): each compiles into its own temporary folder and renames it into
/// place; when another one got there first, its library is used.
pub fn build(job: &Job, cache: &Path) -> Result<Built, String> {
    let start = std::time::Instant::now();
    let key = key(job);
    let dir = cache.join(format!("{}-{key}", job.src.lib));
    let cached = |dir: &Path| -> Option<Vec<String>> {
        let lib = dir.join(format!("lib{}.a", job.src.lib));
        let log = fs::read_to_string(dir.join("ptxas.log")).ok()?;
        lib.is_file()
            .then(|| log.lines().map(String::from).collect())
    };
    if let Some(ptxas) = cached(&dir) {
        let _ = fs::write(dir.join(USED_STAMP), "");
        return Ok(Built {
            dir,
            ptxas,
            cached: true,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let tmp = cache.join(format!("{}-{key}.tmp-{}", job.src.lib, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let lines = Arc::new(Lines::default());
    let result = cc_build(job, &tmp, lines.clone(), true).try_compile(&job.src.lib);
    let lines = std::mem::take(&mut *lines.0.lock().unwrap());
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(format!(
            "nvcc failed on {}: {e}\n{}",
            job.src.label,
            lines.join("\n")
        ));
    }
    let ptxas: Vec<String> = lines
        .into_iter()
        .filter(|l| l.contains("ptxas") || l.contains("bytes"))
        .collect();
    fs::write(tmp.join("ptxas.log"), ptxas.join("\n")).map_err(|e| e.to_string())?;
    let _ = fs::write(tmp.join(USED_STAMP), "");
    // A complete library of the same key is as good as ours (same inputs): keep it, since
    // another build may be linking against it right now.
    if cached(&dir).is_some() {
        let _ = fs::remove_dir_all(&tmp);
    } else {
        let _ = fs::remove_dir_all(&dir); // an incomplete leftover
        if let Err(e) = fs::rename(&tmp, &dir) {
            if cached(&dir).is_none() {
                return Err(format!("{}: {e}", dir.display()));
            }
            let _ = fs::remove_dir_all(&tmp);
        }
    }
    Ok(Built {
        dir,
        ptxas,
        cached: false,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// How many libraries of one file the cache keeps: the one just used and the previous one, so
/// that two builds alternating between settings (profiles with different CXXFLAGS, two
/// CAPMOE_CUDA_ARCHS) do not evict each other on every run.
const KEEP_PER_LIB: usize = 2;

/// Removes cached libraries of `lib` (old keys of the same file) beyond the `KEEP_PER_LIB` most
/// recently used, never `keep`, and temporary folders of `lib` left by a build killed over a day ago.
pub fn prune(cache: &Path, lib: &str, keep: &Path) {
    let Ok(rd) = fs::read_dir(cache) else { return };
    let day = std::time::Duration::from_secs(24 * 3600);
    let age = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or(std::time::Duration::MAX) // missing: oldest
    };
    let mut old: Vec<(std::time::Duration, PathBuf)> = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(lib).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let (key, tail) = rest.split_at(rest.len().min(16));
        if key.len() != 16 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        if tail.is_empty() {
            if p != keep {
                old.push((age(&p.join(USED_STAMP)), p));
            }
        } else if tail.starts_with(".tmp") && age(&p) > day {
            let _ = fs::remove_dir_all(&p);
        }
    }
    old.sort();
    for (_, p) in old.into_iter().skip(KEEP_PER_LIB - 1) {
        let _ = fs::remove_dir_all(&p);
    }
}

/// `nvcc -ptx` of `src` into `ptx/<rel>.ptx`, written only when the text changed.
pub fn write_ptx(
    nvcc: &Path,
    root: &Path,
    src: &Source,
    flags: &[String],
    tmp: &Path,
) -> Result<(), String> {
    let dest = root.join("ptx").join(src.rel.replace(".cu", ".ptx"));
    let tmp_out = tmp.join(format!("{}.ptx", src.lib));
    let status = Command::new(nvcc)
        .current_dir(root)
        .args(flags)
        .arg(format!("cuda/{}", src.rel))
        .arg("-o")
        .arg(&tmp_out)
        .status()
        .map_err(|e| format!("cannot run nvcc -ptx: {e}"))?;
    if !status.success() {
        return Err(format!("nvcc -ptx failed on cuda/{}", src.rel));
    }
    let text = fs::read(&tmp_out).map_err(|e| e.to_string())?;
    let text = normalize_ptx(text, &src.rel);
    if fs::read(&dest).ok().as_deref() != Some(&text[..]) {
        fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
        fs::write(&dest, text).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    Ok(())
}

/// nvcc names internal-linkage symbols `_INTERNAL_<8 hex>_<len>_<file>_<8 hex>` (anonymous
/// namespaces `_GLOBAL__N__<8 hex>_...`), where the first hash depends on the checkout's absolute
/// path (`-frandom-seed` doesn't fix it). Replace it with a hash of the path under cuda/ (same
/// length, so the mangled lengths hold), so that ptx/ is identical from every checkout. These
/// names are local to the module: renaming them consistently keeps the PTX loadable.
fn normalize_ptx(text: Vec<u8>, rel: &str) -> Vec<u8> {
    const TAGS: [&[u8]; 2] = [b"_INTERNAL_", b"_GLOBAL__N__"];
    let mut h = Fnv::new();
    h.item(rel.as_bytes());
    let stable = &h.hex().into_bytes()[..8];
    let mut out = text;
    let mut i = 0;
    while i < out.len() {
        let tag = TAGS.iter().find(|t| out[i..].starts_with(t));
        let Some(tag) = tag else {
            i += 1;
            continue;
        };
        let j = i + tag.len();
        if j + 9 <= out.len()
            && out[j..j + 8].iter().all(u8::is_ascii_hexdigit)
            && out[j + 8] == b'_'
        {
            out[j..j + 8].copy_from_slice(stable);
        }
        i = j;
    }
    out
}

/// Deletes .ptx files under ptx/ whose source is gone (so the freshness check sees removals).
pub fn prune_ptx(root: &Path, sources: &[Source]) {
    let mut files = Vec::new();
    walk(&root.join("ptx"), false, &mut files);
    for f in files {
        let rel = f
            .strip_prefix(root.join("ptx"))
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with(".ptx") && !sources.iter().any(|s| s.rel.replace(".cu", ".ptx") == rel) {
            let _ = fs::remove_file(f);
        }
    }
}
