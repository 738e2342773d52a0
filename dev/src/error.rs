//! One error type for the whole dev crate, so tests can `?` everything.

use std::path::PathBuf;

/// Errors raised by the Azurite launcher, the storage helpers and the DM emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `node` or `npm` could not be executed.
    #[error(
        "Node.js is required to run Azurite: install Node.js 20+ (`{program}` failed: {detail})"
    )]
    NodeMissing { program: String, detail: String },

    /// `npm ci` in dev/azurite failed.
    #[error("installing Azurite with `npm ci` in {dir} failed: {detail}")]
    Install { dir: PathBuf, detail: String },

    /// Azurite exited early or never opened its ports.
    #[error("Azurite did not start: {reason}\n--- Azurite output (last lines) ---\n{tail}")]
    AzuriteStart { reason: String, tail: String },

    /// A local I/O operation (spawn, bind, lock file) failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP request itself failed (connection refused, timeout, ...).
    #[error("HTTP request `{op}` failed: {source}")]
    Http {
        op: String,
        #[source]
        source: reqwest::Error,
    },

    /// The storage emulator answered with an unexpected status.
    #[error("storage call `{op}` answered HTTP {status}: {body}")]
    Storage {
        op: String,
        status: u16,
        body: String,
    },

    /// The account is not one Azurite was started with.
    #[error("unknown storage account `{0}` (not configured in this Azurite instance)")]
    UnknownAccount(String),

    /// Invalid emulator configuration.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Anything else going wrong inside the emulator machinery.
    #[error("emulator: {0}")]
    Emulator(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn http(op: impl Into<String>, source: reqwest::Error) -> Self {
        Error::Http {
            op: op.into(),
            source,
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
