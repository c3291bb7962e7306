//! The old name of the `sys` layer: the launchers are declared in [`super::sys`],
//! generated from cuda/include/capmoe_abi.h. Only the stream type is left here
//! for existing callers; new code names [`super::launch::Stream`].

pub use super::launch::Stream;
