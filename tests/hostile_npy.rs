//! Hostile `.npy` files: each is a typed error whose message names what was
//! wrong, found before any data is allocated or read.

use capmoe::io::npy::{self, NpyError, MAX_HEADER_LEN, MAX_VALUES};
use std::path::{Path, PathBuf};

fn npy_with(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn file(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("capmoe-hostile-{tag}-{}.npy", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn format_err(bytes: &[u8]) -> String {
    match npy::parse_matrix(bytes, Path::new("x.npy")) {
        Err(e @ NpyError::Format { .. }) => e.to_string(),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn close_paren_before_open_is_a_format_error_not_a_panic() {
    let b = npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': )2, 2(, }\n",
        &[0; 16],
    );
    let msg = format_err(&b);
    assert!(
        msg.contains("'shape'") && msg.contains("found `)`"),
        "{msg}"
    );
    // And every other placement of the parentheses.
    for shape in [
        ")", "(", "((2, 2)", "(2, 2))", "(2 2)", "(-1, 2)", "(2, 2.0)",
    ] {
        let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        assert!(npy::parse_matrix(&npy_with(&h, &[0; 16]), Path::new("x")).is_err());
    }
}

#[test]
fn duplicate_unknown_and_missing_keys_are_refused() {
    let msg = format_err(&npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'shape': (2, 2), }\n",
        &[0; 16],
    ));
    assert!(
        msg.contains("repeats the key 'shape'") && msg.contains("each once"),
        "{msg}"
    );
    let msg = format_err(&npy_with(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), 'extra': 'x'}\n",
        &[0; 4],
    ));
    assert!(msg.contains("unexpected key 'extra'"), "{msg}");
    let msg = format_err(&npy_with("{'descr': '<f4', 'shape': (1, 1)}\n", &[0; 4]));
    assert!(msg.contains("no 'fortran_order'"), "{msg}");
    let msg = format_err(&npy_with(
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (1, 1)}\n",
        &[0; 4],
    ));
    assert!(msg.contains("'fortran_order'"), "{msg}");
}

#[test]
fn a_stream_fails_on_its_magic_without_being_read() {
    // /dev/zero never ends: a reader that reads first would never return.
    let zero = Path::new("/dev/zero");
    if zero.exists() {
        let e = npy::read_matrix(zero).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
    let e = npy::read_matrix(&file("magic", b"PK\x03\x04 not numpy")).unwrap_err();
    assert!(
        matches!(e, NpyError::Format { .. }) && e.to_string().contains("magic"),
        "{e}"
    );
}

#[test]
fn a_header_longer_than_the_limit_is_refused_before_it_is_read() {
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(b"{'descr'");
    let e = npy::read_matrix(&file("hlen", &b)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("at most {MAX_HEADER_LEN}")), "{msg}");
    let msg = format_err(&b"\x93NUMPY\x09\x00\x10\x00{}"[..]);
    assert!(msg.contains("version 9"), "{msg}");
    let msg = format_err(&b"\x93NUMPY\x01\x00\x40\x00{'descr'"[..]);
    assert!(msg.contains("past the end"), "{msg}");
}

#[test]
fn claiming_more_rows_than_the_file_holds_is_an_error_before_allocation() {
    // 10^9 x 1000 f32 would be 4 TB; the file holds 16 bytes.
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 1000000), }\n";
    let e = npy::read_matrix(&file("rows", &npy_with(h, &[0; 16]))).unwrap_err();
    match &e {
        NpyError::Truncated { got, want, .. } => assert_eq!((*got, *want), (16, 4_000_000_000)),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("needs 4000000000"), "{e}");
    // More than the limit, or a product that wraps 64 bits.
    for shape in [
        "(2305843009213693952, 8)",
        "(1073741824, 2)",
        "(18446744073709551615, 2)",
    ] {
        let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
        let e = npy::read_matrix(&file("huge", &npy_with(&h, &[0; 8]))).unwrap_err();
        assert!(
            matches!(e, NpyError::TooLarge { limit, .. } if limit == MAX_VALUES),
            "{e}"
        );
        assert!(e.to_string().contains("expected at most"), "{e}");
    }
    // Too many bytes is an error too.
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1), }\n";
    let e = npy::read_matrix(&file("long", &npy_with(h, &[0; 8]))).unwrap_err();
    assert!(
        matches!(
            e,
            NpyError::Truncated {
                got: 8,
                want: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn valid_files_still_read_from_disk_in_every_version() {
    let d = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let p = file("ok", &npy::to_bytes(&d, 3, 2));
    let m = npy::read_matrix(&p).unwrap();
    assert_eq!((m.rows, m.cols, m.data), (3, 2, d.to_vec()));
    // Version 2 header of length 0 cannot hold a dict.
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    assert!(npy::read_matrix(&file("v2", &b)).is_err());
}

#[test]
fn write_matrix_checks_the_length_and_replaces_atomically() {
    let p = file("w", b"old");
    let e = npy::write_matrix(&p, &[1.0; 5], 2, 3).unwrap_err();
    assert!(
        e.to_string().contains("expected rows x cols = 2 x 3"),
        "{e}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    let e = npy::write_matrix(&p, &[], usize::MAX, 2).unwrap_err();
    assert!(matches!(e, NpyError::DataLength { .. }), "{e}");
    npy::write_matrix(&p, &[1.0, 2.0], 1, 2).unwrap();
    assert_eq!(npy::read_matrix(&p).unwrap().data, [1.0, 2.0]);
}
