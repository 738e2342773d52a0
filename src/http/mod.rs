//! The HTTP surface the Functions host talks to: the readiness probe, the forwarded
//! `POST /api/ingest`, and the `POST /BlobCreated` invocation.

pub mod errors;
pub mod ingest_api;
mod routes;

pub use routes::routes;
