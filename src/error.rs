//! The crate's error type: every failure a user can cause gets a clear message.
use std::fmt;

/// Errors reported by dreamdist.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A weight file is unreadable, truncated, or does not match the model architecture.
    #[error("weights: {0}")]
    Weights(String),
    /// A device could not be created or failed while running.
    #[error("device: {0}")]
    Device(String),
    /// Reading a tensor back from the device failed (device lost, out of memory...).
    #[error("reading a tensor back from the device failed: {0}")]
    Readback(String),
    /// Local storage (the browser's quota, a cache directory) cannot hold what is needed.
    #[error("storage: {0}")]
    Storage(String),
    /// The user cancelled the operation.
    #[error("cancelled")]
    Cancelled,
    /// Input given by the user is invalid.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A `.ddist` file is malformed, or made for another model.
    #[error("distribution file: {0}")]
    File(#[from] crate::distribution::file::FileError),
    /// An I/O error with the path or resource involved.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io { context: context.to_string(), source }
    }

    /// The same error with `what` (a file, a URL, a component) in front of its message, under
    /// one prefix: `weights: unet: ...`, never `weights: unet: weights: ...`.
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Error::Weights(m) => Error::Weights(format!("{what}: {m}")),
            Error::Device(m) => Error::Device(format!("{what}: {m}")),
            Error::Readback(m) => Error::Readback(format!("{what}: {m}")),
            Error::Storage(m) => Error::Storage(format!("{what}: {m}")),
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            Error::Io { context, source } => Error::Io { context: format!("{what}: {context}"), source },
            e @ (Error::Cancelled | Error::File(_)) => e,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
