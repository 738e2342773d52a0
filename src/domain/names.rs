//! Kusto database and table names.

use super::{DomainError, err};
use std::fmt;

/// Kusto entity names are at most 1024 characters; we also refuse control characters, which no
/// valid database or table name contains and which would otherwise end up in log lines.
const MAX_ENTITY_NAME: usize = 1024;

fn parse_entity_name(kind: &str, raw: &str) -> Result<String, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(err(format!("{kind} name must not be empty")));
    }
    if trimmed.chars().count() > MAX_ENTITY_NAME {
        return Err(err(format!(
            "{kind} name is longer than {MAX_ENTITY_NAME} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(err(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

macro_rules! entity_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub(crate) struct $name(String);

        impl $name {
            pub(crate) fn parse(raw: &str) -> Result<Self, DomainError> {
                parse_entity_name($kind, raw).map(Self)
            }
            pub(crate) fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

entity_name!(
    /// A Kusto database name.
    DatabaseName,
    "database"
);
entity_name!(
    /// A Kusto table name.
    TableName,
    "table"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(DatabaseName::parse(" db ").unwrap().as_str(), "db");
        assert!(TableName::parse("   ").is_err());
        assert!(TableName::parse("a\nb").is_err());
    }
}
