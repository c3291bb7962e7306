//! Whether a CUDA library can be loaded, asked before cudarc's first call into it: with cudarc's
//! dynamic loading a missing library is a panic inside cudarc, and cudarc's own probe exists only
//! under that linking mode. Under dynamic linking the library is already mapped, so the probe
//! finds it.

/// Whether `lib<name>.so` (or a versioned name for CUDA 13, 12 or 11, or `.so.1`) loads.
pub(crate) fn library_present(name: &str) -> bool {
    let base = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let candidates = [
        base.clone(),
        format!("{base}.1"),
        format!("{base}.13"),
        format!("{base}.12"),
        format!("{base}.11"),
    ];
    candidates.iter().any(|c| {
        // SAFETY: loading a CUDA library runs only its initialisers, which touch no state of
        // ours; the handle is closed again when it drops.
        unsafe { libloading::Library::new(c) }.is_ok()
    })
}

/// The NCCL names probed before cudarc's `nccl` module loads the library: each one is among the
/// names cudarc 0.19's loader tries for any CUDA version (its list also has `.so.{CUDA major}`
/// and Windows-style names, but no NCCL release is installed under those), so when one of these
/// loads, cudarc's own dlopen finds a library too and cannot panic.
#[cfg(feature = "nccl")]
pub(crate) const NCCL_NAMES: [&str; 4] = [
    "libnccl.so",
    "libnccl.so.12",
    "libnccl.so.11",
    "libnccl.so.1",
];

/// The name NCCL's own packages and the NVIDIA wheel (`nvidia-nccl-cu12/13`) install: NCCL 2's
/// soname. cudarc's loader never tries it.
#[cfg(feature = "nccl")]
pub(crate) const NCCL_SONAME: &str = "libnccl.so.2";

/// What the NCCL probe found when cudarc could not load the library.
#[cfg(feature = "nccl")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NcclMissing {
    /// None of [`NCCL_NAMES`] loads, but [`NCCL_SONAME`] does: NCCL is installed, under a name
    /// cudarc does not try.
    OnlySoname,
    /// Nothing loads.
    Absent,
}

/// Whether cudarc's `nccl` module can load NCCL, asked before its first call (which would panic
/// otherwise).
///
/// The `libnccl.so.2` case is reported, not worked around. Loading `libnccl.so.2` here would not
/// help: cudarc opens its library by its own names, and the dynamic loader matches an open
/// library by file name or soname (`libnccl.so.2`), never by the `libnccl.so` cudarc asks for.
/// Making the name resolvable (a `libnccl.so` symlink in a folder on `LD_LIBRARY_PATH`, or a
/// package that ships the dev symlink) is the caller's environment, which the library does not
/// touch. The symlink is ABI-safe: cudarc's bindings are NCCL 2's, which is what `.so.2` is.
/// Under cudarc's dynamic linking the probe is conservative: the library is mapped already, and
/// `libnccl.so` was resolvable at link time.
#[cfg(feature = "nccl")]
pub(crate) fn nccl_library() -> Result<(), NcclMissing> {
    probe_names(&NCCL_NAMES, NCCL_SONAME)
}

/// `Ok` when one of `names` loads, else whether `soname` does.
#[cfg(feature = "nccl")]
fn probe_names(names: &[&str], soname: &str) -> Result<(), NcclMissing> {
    let loads = |name: &str| {
        // SAFETY: loading NCCL (or, in the tests, a system library) runs only its initialisers,
        // which touch no state of ours; the handle is closed again when it drops.
        unsafe { libloading::Library::new(name) }.is_ok()
    };
    if names.iter().any(|n| loads(n)) {
        Ok(())
    } else if loads(soname) {
        Err(NcclMissing::OnlySoname)
    } else {
        Err(NcclMissing::Absent)
    }
}

#[cfg(all(test, feature = "nccl"))]
mod tests {
    use super::*;

    #[test]
    fn nccl_probe_tells_absent_from_soname_only() {
        let none = ["libcapmoe-no-such-nccl.so"];
        assert_eq!(
            probe_names(&none, "libcapmoe-no-such-nccl.so.2"),
            Err(NcclMissing::Absent)
        );
        // A library that loads stands in for libnccl.so.2 (glibc's libm is on every Linux).
        assert_eq!(
            probe_names(&none, "libm.so.6"),
            Err(NcclMissing::OnlySoname)
        );
        assert_eq!(probe_names(&["libm.so.6"], "libm.so.6"), Ok(()));
    }
}
