//! Progress of long library calls (model init, benchmarks), reported through a trait so that the
//! library carries no UI crate. The CLI implements it with a progress bar.

/// Receives progress ticks. Every method has an empty default, so an implementation picks what
/// it shows. Calls come from the thread running the work.
pub trait Progress {
    /// The total number of ticks the work will make (may be called again as it learns more).
    fn set_length(&self, _len: u64) {}
    /// `delta` ticks done.
    fn inc(&self, _delta: u64) {}
    /// What the work is doing now.
    fn set_message(&self, _message: &str) {}
    /// A sign of life with no count (e.g. inside one long step).
    fn tick(&self) {}
}

/// Shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Count(Cell<u64>);
    impl Progress for Count {
        fn inc(&self, d: u64) {
            self.0.set(self.0.get() + d);
        }
    }

    #[test]
    fn defaults_are_silent_and_overrides_are_called() {
        let p: &dyn Progress = &NoProgress;
        p.set_length(3);
        p.inc(1);
        p.set_message("x");
        p.tick();
        let c = Count(Cell::new(0));
        (&c as &dyn Progress).inc(2);
        assert_eq!(c.0.get(), 2);
    }
}
