//! Reading router traces and checkpoint metadata; writing files atomically;
//! host tensors (the f32 weight format every backend takes).

pub mod atomic;
pub mod file;
mod header;
pub mod json;
pub mod npy;
mod tensor;

pub use tensor::{HostTensor, ShapeError, Storage};
