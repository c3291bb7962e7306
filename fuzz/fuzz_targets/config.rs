#![no_main]
//! Fuzz target `config`: see tests/fuzz_harness/mod.rs.

#[path = "../../tests/fuzz_harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::config(data));
