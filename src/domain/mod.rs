//! Parsed domain values. Once a value of one of these types exists it is valid: the HTTP edge, the
//! settings and the Event Grid decoder parse untrusted input into them, and everything after that
//! relies on the type.

mod blob_uri;
mod dm_endpoint;
mod names;
mod source_id;
mod text;

pub(crate) use blob_uri::BlobUri;
pub(crate) use dm_endpoint::{AllowedDms, DmEndpoint};
pub(crate) use names::{DatabaseName, TableName};
pub(crate) use source_id::{SourceId, random_uuid};
pub(crate) use text::{clip, describe_error, json_kind, redact_url, scrub_secrets};

/// Why a domain value was rejected; the caller adds which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DomainError(pub(crate) String);

fn err(message: impl Into<String>) -> DomainError {
    DomainError(message.into())
}
