//! Policies that give overflow to experts with room.

mod flow;
mod guide;
pub(crate) mod next_best;
pub(crate) mod optimal;
mod repair;
#[cfg(test)]
pub(crate) mod ssp;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_guided;
