//! Atomic file replacement: a reader (or a crash) sees the old file or the
//! new one, never a torn mix.

use std::io::{Error, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: into a fresh temporary file in the
/// same directory (so the rename stays on one file system), fsync'd, then
/// renamed over `path`, then the directory fsync'd (on Unix) so the rename
/// itself survives a crash. On any error the temporary file is removed and
/// `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Replaces `path` atomically with a file that `write` makes itself (for
/// writers that want a path, not bytes, such as an image encoder): `write`
/// gets a fresh hidden temporary path in `path`'s directory that keeps
/// `path`'s extension (`dir/.name.tmp.PID.N.ext`, since some writers pick
/// the format from it); the file is then fsync'd, renamed over `path`, and
/// the directory fsync'd (on Unix). On any error the temporary file is
/// removed and `path` is left as it was.
pub fn replace_with<E: From<Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let mut tmp = temp_path(path)?.into_os_string();
    if let Some(ext) = path.extension() {
        tmp.push(".");
        tmp.push(ext);
    }
    let tmp = PathBuf::from(tmp);
    let result = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)?.sync_all()?;
        Ok(std::fs::rename(&tmp, path)?)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path);
    Ok(())
}

/// `dir/.name.tmp.PID.N`: hidden, unique within and across processes.
fn temp_path(path: &Path) -> Result<PathBuf, Error> {
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{} names no file; expected a file path", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

#[cfg(unix)]
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Best effort: the data is already durable and renamed; some file
    // systems refuse to fsync a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("capmoe-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("report.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A missing directory is an error, and the target is untouched.
        assert!(write_atomic(&dir.join("no/such/x"), b"y").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A writer that leaves half a file and fails keeps the old file and no
    /// debris; one that succeeds replaces it whole, through a temporary path
    /// with the target's extension.
    #[test]
    fn replace_with_keeps_the_old_file_on_failure() {
        let dir = std::env::temp_dir().join(format!("capmoe-replace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("load.png");
        std::fs::write(&path, "old").unwrap();
        let torn = replace_with(&path, |p| -> Result<(), Error> {
            std::fs::write(p, "half")?;
            Err(Error::other("interrupted"))
        });
        assert!(torn.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no debris");
        replace_with(&path, |p| -> Result<(), Error> {
            assert_eq!(p.extension().unwrap(), "png");
            std::fs::write(p, "new")
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no debris");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
