//! kusto-ingest-api: Azure Data Explorer queued ingestion behind one HTTP call and one Event Grid
//! trigger, as an Azure Functions custom handler.

pub mod app;
pub mod config;
pub mod dm;
pub mod domain;
pub mod eventgrid;
pub mod http;
pub mod identity;
pub mod ingestor;
pub mod message;
pub mod properties;
pub mod queue_pool;
pub mod resource_cache;
pub mod transport;
