//! The library's [`Progress`] shown as an indicatif bar on stderr (hidden unless stderr is a
//! terminal).

use capmoe::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar the library can tick.
pub struct Bar(pub ProgressBar);

impl Bar {
    /// A bar of `len_hint` steps with elapsed time, position and ETA.
    pub fn new(len_hint: u64) -> Self {
        let pb = ProgressBar::with_draw_target(Some(len_hint), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        Self(pb)
    }
}

impl std::ops::Deref for Bar {
    type Target = ProgressBar;
    fn deref(&self) -> &ProgressBar {
        &self.0
    }
}

impl Progress for Bar {
    fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    fn inc(&self, delta: u64) {
        self.0.inc(delta);
    }
    fn set_message(&self, message: &str) {
        self.0.set_message(message.to_string());
    }
    fn tick(&self) {
        self.0.tick();
    }
}
