//! Policies that give overflow to experts with room.

pub(crate) mod next_best;
pub(crate) mod optimal;
