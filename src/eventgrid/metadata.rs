//! The blob metadata keys Azure Data Explorer's own Event Grid connection reads, and what they
//! change about a blob's ingestion.

use crate::domain::clip;
use crate::properties::{DATA_FORMATS, PropertyBag, PropertyError};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a blob's metadata changes about its ingestion.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    /// `kustoDatabase`.
    pub(crate) database: Option<String>,
    /// `kustoTable`.
    pub(crate) table: Option<String>,
    /// Ingestion properties from `kustoDataFormat`, `kustoIngestionMappingReference`,
    /// `kustoIgnoreFirstRecord`, `kustoExtentTags`, `kustoCreationTime`.
    pub(crate) properties: PropertyBag,
    /// `rawSizeBytes`.
    pub(crate) raw_size: Option<u64>,
    /// `hdi_isfolder=true`: an ADLS Gen2 directory.
    pub(crate) is_folder: bool,
}

/// Reads the metadata keys Azure Data Explorer's Event Grid connection reads, case-insensitively.
/// Empty values count as absent; a value Kusto would refuse is an error naming the metadata key.
pub(crate) fn overrides(metadata: &BTreeMap<String, String>) -> Result<Overrides, PropertyError> {
    let mut out = Overrides::default();
    for (key, value) in metadata {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let bad = |name: &str, message: &str| PropertyError {
            key: name.to_owned(),
            message: format!("'{}' {message}", clip(value)),
        };
        match key.as_str() {
            "kustodatabase" => out.database = Some(value.to_owned()),
            "kustotable" => out.table = Some(value.to_owned()),
            "kustodataformat" => {
                let format = value.to_ascii_lowercase();
                if !DATA_FORMATS.contains(&format.as_str()) {
                    return Err(bad("kustoDataFormat", "is not a Kusto data format"));
                }
                out.properties.set("format", Value::String(format));
            }
            "kustoingestionmappingreference" => {
                out.properties
                    .set("ingestionMappingReference", Value::String(value.to_owned()));
            }
            "kustoignorefirstrecord" => {
                let flag = parse_bool(value)
                    .ok_or_else(|| bad("kustoIgnoreFirstRecord", "must be true or false"))?;
                out.properties.set("ignoreFirstRecord", Value::Bool(flag));
            }
            "kustoextenttags" => out.properties.set("tags", Value::Array(parse_tags(value))),
            "kustocreationtime" => {
                if time::OffsetDateTime::parse(
                    value,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_err()
                {
                    return Err(bad(
                        "kustoCreationTime",
                        "must be an ISO 8601 date-time such as 2024-01-31T12:00:00Z",
                    ));
                }
                out.properties
                    .set("creationTime", Value::String(value.to_owned()));
            }
            "rawsizebytes" => {
                out.raw_size = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("rawSizeBytes", "must be a non-negative integer"))?,
                );
            }
            "hdi_isfolder" => out.is_folder = parse_bool(value).unwrap_or(false),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `kustoExtentTags`: a JSON array of strings (`["a","drop-by:b"]`), or a comma-separated list.
fn parse_tags(value: &str) -> Vec<Value> {
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(value)
        && items.iter().all(Value::is_string)
    {
        return items;
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Value::String(t.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    #[test]
    fn native_connection_keys_case_insensitively() {
        let o = overrides(&meta(&[
            ("KustoDatabase", "db2"),
            ("kustotable", "T2"),
            ("kustoDataFormat", "JSON"),
            ("kustoIngestionMappingReference", "m2"),
            ("KUSTOIGNOREFIRSTRECORD", "True"),
            ("kustoExtentTags", "[\"a\",\"drop-by:b\"]"),
            ("kustoCreationTime", "2024-01-31T12:00:00Z"),
            ("rawSizeBytes", "4096"),
            ("other", "ignored"),
        ]))
        .unwrap();
        assert_eq!(o.database.as_deref(), Some("db2"));
        assert_eq!(o.table.as_deref(), Some("T2"));
        assert_eq!(o.raw_size, Some(4096));
        assert_eq!(o.properties.get("format"), Some(&json!("json")));
        assert_eq!(
            o.properties.get("ingestionMappingReference"),
            Some(&json!("m2"))
        );
        assert_eq!(o.properties.get("ignoreFirstRecord"), Some(&json!(true)));
        assert_eq!(o.properties.get("tags"), Some(&json!(["a", "drop-by:b"])));
        assert_eq!(
            o.properties.get("creationTime"),
            Some(&json!("2024-01-31T12:00:00Z"))
        );
        assert!(!o.is_folder);
    }

    #[test]
    fn tags_as_a_comma_list_and_empty_values() {
        let o = overrides(&meta(&[
            ("kustoExtentTags", "a, b ,,c"),
            ("kustoTable", " "),
        ]))
        .unwrap();
        assert_eq!(o.properties.get("tags"), Some(&json!(["a", "b", "c"])));
        assert_eq!(o.table, None);
        assert!(
            overrides(&meta(&[("hdi_isfolder", "true")]))
                .unwrap()
                .is_folder
        );
    }

    #[test]
    fn bad_values_name_the_metadata_key() {
        for (key, value) in [
            ("kustoDataFormat", "xlsx"),
            ("kustoIgnoreFirstRecord", "yes"),
            ("kustoCreationTime", "yesterday"),
            ("rawSizeBytes", "-1"),
            ("rawSizeBytes", "12kb"),
        ] {
            let e = overrides(&meta(&[(key, value)])).unwrap_err();
            assert_eq!(e.key, key);
        }
    }
}
