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
