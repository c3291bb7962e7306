//! Reading router traces and checkpoint metadata; writing files atomically.

pub mod atomic;
pub mod file;
mod header;
pub mod json;
pub mod npy;
