//! kusto-ingest-api: Azure Data Explorer queued ingestion behind one HTTP call and one Event Grid
//! trigger, as an Azure Functions custom handler. `docs/architecture.md` maps the modules.

pub mod app;
pub mod eventgrid;
pub mod settings;

mod authorization;
mod backends;
mod data;
mod dm;
mod domain;
mod http;
mod identity;
mod ingest;
mod local;
mod properties;
mod queued;
mod request_log;
mod rest_v2;
mod routing;
mod transport;
