//! Bounded reads of small text files (configs, indexes).

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// Reads `path`, which must be a regular file of at most `limit` bytes.
///
/// A FIFO, a device (`/dev/zero`) or a directory is refused before any read,
/// so a hostile path can neither block nor stream without end; the size is
/// checked from the metadata and again while reading (the file may grow).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO or device?); expected a file",
        ));
    }
    let too_big = |size: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!("the file holds {size} bytes; expected at most {limit}"),
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_regular`], as UTF-8 text.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, Error> {
    String::from_utf8(read_regular(path, limit)?)
        .map_err(|e| Error::new(ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}
