//! The emulator's ingestion side (off by default, `EmulatorConfig::ingest`): a worker that
//! consumes the ready-for-aggregation queues like the DM, an in-memory catalog of tables,
//! and the outcome of every message.
//!
//! * [`worker`] — the pipeline, message by message;
//! * [`message`] — reading the queued JSON; [`download`] — `BlobPath` to bytes;
//!   [`parse`] (+ [`csv`]) — bytes to rows; [`store`] — catalog, rows, tags, outcomes;
//! * [`status`] — the status-table row; [`notify`] — success/failure queue messages.

mod csv;
mod download;
mod message;
mod notify;
mod outcome;
mod parse;
mod status;
mod store;
mod worker;

#[cfg(test)]
pub(crate) use message::read as read_message;
pub use outcome::{FailureStatus, IngestionOutcome, IngestionStatus, Report};
pub use store::Catalog;
pub(crate) use store::Store;
pub(crate) use worker::spawn as spawn_worker;
