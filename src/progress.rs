//! How the library reports progress without printing: the caller passes a [`Progress`] and
//! decides what to show (the binary draws a bar on a terminal and nothing on a pipe).

/// Receives progress events. Every method has an empty default so a caller implements only what
/// it shows.
pub trait Progress: Sync {
    /// A new stage starts, moving `total` bytes when that is known.
    fn stage(&self, _name: &str, _total: Option<u64>) {}
    /// `bytes` more of the current stage are done.
    fn advance(&self, _bytes: u64) {}
    /// A line worth logging (what is happening, a warning).
    fn note(&self, _message: &str) {}
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {}
