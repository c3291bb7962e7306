//! Reading router traces.

pub mod npy;
