//! Local stack for kusto-ingest-api tests and benchmarks:
//!
//! * [`azurite::Azurite`] — installs (npm, pinned) and runs Azurite, plus storage REST
//!   helpers ([`storage::AzuriteHandle`]) signing their own SAS ([`sas`]).
//! * [`dm::DmEmulator`] — a Kusto Data Management endpoint (`POST /v1/rest/mgmt`) and a
//!   managed-identity token endpoint (`GET /msi/token`) with request logs and fault injection.

pub mod azurite;
pub mod dm;
pub mod error;
pub mod sas;
mod spawn;
pub use spawn::tie_to_parent;
pub mod storage;
pub mod tool;
mod xml;

pub use azurite::Azurite;
pub use dm::{
    BreakMode, Catalog, DmEmulator, EmulatorConfig, FakeStorageCounts, Faults, IngestionOutcome,
    IngestionStatus, RestV2Config, RestV2Endpoint, RestV2Request,
};
pub use error::{Error, Result};
pub use storage::{AzuriteHandle, DequeuedMessage, StorageAccount};
