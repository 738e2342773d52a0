//! The id Kusto reports a blob's ingestion under.

use super::{DomainError, err};
use std::fmt;
use uuid::Uuid;

/// A random (v4) UUID from the thread's RNG, which the OS seeds: `Uuid::new_v4` makes a
/// `getrandom` system call each time, and ids are made per blob and per queue post.
pub(crate) fn random_uuid() -> Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// `IngestionSourceId` of the ingestion message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(Uuid);

impl SourceId {
    pub(crate) fn new_random() -> Self {
        Self(random_uuid())
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, DomainError> {
        Uuid::try_parse(raw.trim())
            .map(Self)
            .map_err(|_| err("source id must be a GUID, e.g. 3f2b8c1e-5d4a-4f6b-9c1d-2e3f4a5b6c7d"))
    }

    /// A stable id derived from a name, so that the same input (an Event Grid event id) always maps
    /// to the same source id and a redelivery can be matched with the first delivery.
    pub(crate) fn derived_from(namespace: &Uuid, name: &str) -> Self {
        Self(Uuid::new_v5(namespace, name.as_bytes()))
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_id_parses_guid_and_derives_stably() {
        assert!(SourceId::parse("not-a-guid").is_err());
        let id = SourceId::parse("11111111-2222-4333-8444-555555555555").unwrap();
        assert_eq!(id.to_string(), "11111111-2222-4333-8444-555555555555");
        let ns = Uuid::nil();
        assert_eq!(
            SourceId::derived_from(&ns, "e1"),
            SourceId::derived_from(&ns, "e1")
        );
        assert_ne!(
            SourceId::derived_from(&ns, "e1"),
            SourceId::derived_from(&ns, "e2")
        );
    }

    #[test]
    fn random_ids_are_distinct_v4_uuids() {
        let (a, b) = (SourceId::new_random(), SourceId::new_random());
        assert_ne!(a, b);
        assert_eq!(a.0.get_version_num(), 4);
    }
}
