//! Routing rules from the `INGEST_ROUTES` setting: an ordered list; the first rule whose container,
//! path prefix and path suffix match a blob decides where it is ingested and with which properties.
//!
//! ```json
//! [{"container": "landing", "prefix": "sales/", "suffix": ".csv",
//!   "database": "db", "table": "Sales", "format": "csv", "ingestionMappingReference": "m",
//!   "properties": {"ignoreFirstRecord": true}}]
//! ```
//! `container`, `database` and `table` are required: a rule always names a complete destination,
//! which blob metadata (`kustoTable`, and `kustoDatabase` when `databaseRouting` is `"multi"`) may
//! then override. Everything is checked at start-up; an error names the rule ("rule 2 (container
//! 'x'): ...").

use crate::domain::{DatabaseName, TableName};
use crate::properties::{Properties, PropertyBag};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Ordered routing rules; the first match wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

/// Whether blob metadata may choose the database (Azure Data Explorer's `databaseRouting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum DatabaseRouting {
    /// Only the rule's database; a blob whose `kustoDatabase` names another one is not ingested.
    #[default]
    Single,
    /// `kustoDatabase` metadata replaces the rule's database.
    Multi,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// 1-based position in `INGEST_ROUTES`, for log lines.
    pub(crate) number: usize,
    pub(crate) container: String,
    /// Lower-cased; matched case-insensitively, like Event Grid's subject filters.
    prefix: String,
    suffix: String,
    pub(crate) database: DatabaseName,
    pub(crate) table: TableName,
    /// `format`, `ingestionMappingReference` and `properties`, merged.
    pub(crate) properties: Properties,
    pub(crate) database_routing: DatabaseRouting,
    /// Credential suffix appended to the blob URI in the ingestion message, so the cluster can read
    /// the blob: `;managed_identity=system` or `;managed_identity=<object id>`.
    pub(crate) blob_uri_suffix: Option<String>,
}

impl Route {
    pub(crate) fn matches(&self, container: &str, path: &str) -> bool {
        if container != self.container {
            return false;
        }
        let path = path.to_lowercase();
        path.starts_with(&self.prefix) && path.ends_with(&self.suffix)
    }

    /// How the rule is named in log lines.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("rule {} (container '{}'", self.number, self.container);
        if !self.prefix.is_empty() {
            s.push_str(&format!(", prefix '{}'", self.prefix));
        }
        if !self.suffix.is_empty() {
            s.push_str(&format!(", suffix '{}'", self.suffix));
        }
        s.push(')');
        s
    }
}

/// The JSON shape of one rule. Unknown fields are refused, so a misspelt key (`"tabel"`) stops
/// start-up instead of silently routing elsewhere.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRoute {
    container: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    database: String,
    table: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    ingestion_mapping_reference: Option<String>,
    #[serde(default)]
    properties: Option<Map<String, Value>>,
    #[serde(default)]
    database_routing: Option<String>,
    #[serde(default)]
    blob_identity: Option<String>,
    /// Track the blobs in the DM's status table (`"reportMethod": "table"`).
    #[serde(default)]
    tracking: Option<bool>,
}

impl RouteTable {
    /// Parses and validates `INGEST_ROUTES`: a JSON array of rules.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(raw).map_err(|e| format!("is not valid JSON: {e}"))?;
        let Value::Array(items) = value else {
            return Err(
                "must be a JSON array of rules, e.g. [{\"container\":\"landing\",\"database\":\"db\",\"table\":\"T\"}]"
                    .to_owned(),
            );
        };
        let routes = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| parse_rule(i + 1, item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { routes })
    }

    #[cfg(test)]
    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first rule matching the blob `path` (relative to the container) in `container`.
    pub(crate) fn find(&self, container: &str, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(container, path))
    }
}

fn parse_rule(number: usize, item: Value) -> Result<Route, String> {
    let container_hint = item
        .get("container")
        .and_then(Value::as_str)
        .map(|c| format!(" (container '{}')", c.chars().take(80).collect::<String>()))
        .unwrap_or_default();
    let fail = |message: String| format!("rule {number}{container_hint}: {message}");
    if !item.is_object() {
        return Err(fail("must be a JSON object".to_owned()));
    }
    let raw: RawRoute = serde_json::from_value(item).map_err(|e| fail(e.to_string()))?;

    let container = raw.container.trim().to_owned();
    check_container(&container).map_err(fail)?;
    let prefix = raw
        .prefix
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_lowercase();
    let suffix = raw.suffix.unwrap_or_default().to_lowercase();
    let database = DatabaseName::parse(&raw.database).map_err(|e| fail(e.to_string()))?;
    let table = TableName::parse(&raw.table).map_err(|e| fail(e.to_string()))?;

    let mut properties = PropertyBag::from_map(raw.properties.unwrap_or_default());
    if let Some(format) = raw.format {
        // Checked with the other properties below.
        properties.set("format", Value::String(format.trim().to_ascii_lowercase()));
    }
    if let Some(mapping) = raw.ingestion_mapping_reference {
        if mapping.trim().is_empty() {
            return Err(fail(
                "ingestionMappingReference must not be empty".to_owned(),
            ));
        }
        properties.set("ingestionMappingReference", Value::String(mapping));
    }
    if raw.tracking == Some(true) && properties.get("reportMethod").is_none() {
        properties.set("reportMethod", Value::String("table".to_owned()));
    }
    let properties = properties
        .parse()
        .map_err(|e| fail(format!("property {e}")))?;

    let database_routing = match raw.database_routing.as_deref().map(str::to_ascii_lowercase) {
        None => DatabaseRouting::Single,
        Some(v) if v == "single" => DatabaseRouting::Single,
        Some(v) if v == "multi" => DatabaseRouting::Multi,
        Some(v) => {
            return Err(fail(format!(
                "databaseRouting '{v}' must be \"single\" or \"multi\""
            )));
        }
    };
    let blob_uri_suffix = match raw.blob_identity.as_deref().map(str::trim) {
        None | Some("") | Some("none") => None,
        Some("system") => Some(";managed_identity=system".to_owned()),
        Some(id) => match Uuid::try_parse(id) {
            Ok(id) => Some(format!(";managed_identity={id}")),
            Err(_) => {
                return Err(fail(format!(
                    "blobIdentity '{id}' must be \"system\", \"none\" or the object id (GUID) of a managed identity"
                )));
            }
        },
    };

    Ok(Route {
        number,
        container,
        prefix,
        suffix,
        database,
        table,
        properties,
        database_routing,
        blob_uri_suffix,
    })
}

/// Azure container names: 3-63 characters of lower-case letters, digits and single hyphens, or
/// the special `$root` / `$web`.
fn check_container(name: &str) -> Result<(), String> {
    if name == "$root" || name == "$web" {
        return Ok(());
    }
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "container '{}' is not a valid container name (3-63 lower-case letters, digits and hyphens)",
            name.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(v: Value) -> RouteTable {
        RouteTable::parse(&v.to_string()).expect("valid rules")
    }

    fn error(v: Value) -> String {
        RouteTable::parse(&v.to_string()).expect_err("invalid rules")
    }

    #[test]
    fn parses_the_documented_example() {
        let t = table(json!([{
            "container": "landing", "prefix": "sales/", "suffix": ".csv",
            "database": "db", "table": "Sales", "format": "csv",
            "ingestionMappingReference": "m", "properties": {"ignoreFirstRecord": true}
        }]));
        let r = &t.routes()[0];
        assert_eq!(r.number, 1);
        assert_eq!(r.database.as_str(), "db");
        assert_eq!(r.table.as_str(), "Sales");
        assert_eq!(r.properties.get("format"), Some(&json!("csv")));
        assert_eq!(
            r.properties.get("ingestionMappingReference"),
            Some(&json!("m"))
        );
        assert_eq!(r.properties.get("ignoreFirstRecord"), Some(&json!(true)));
        assert_eq!(r.database_routing, DatabaseRouting::Single);
        assert_eq!(r.blob_uri_suffix, None);
        assert_eq!(
            r.describe(),
            "rule 1 (container 'landing', prefix 'sales/', suffix '.csv')"
        );
    }

    #[test]
    fn first_match_wins_on_container_prefix_and_suffix() {
        let t = table(json!([
            {"container": "landing", "prefix": "sales/", "suffix": ".csv", "database": "db", "table": "A"},
            {"container": "landing", "prefix": "/sales/", "database": "db", "table": "B"},
            {"container": "landing", "database": "db", "table": "C"},
            {"container": "other", "database": "db", "table": "D"}
        ]));
        let table_for = |c: &str, p: &str| t.find(c, p).map(|r| r.table.as_str().to_owned());
        assert_eq!(
            table_for("landing", "sales/2024/a.csv").as_deref(),
            Some("A")
        );
        assert_eq!(
            table_for("landing", "Sales/2024/A.CSV").as_deref(),
            Some("A")
        );
        assert_eq!(
            table_for("landing", "sales/2024/a.json").as_deref(),
            Some("B")
        );
        assert_eq!(table_for("landing", "hr/a.csv").as_deref(), Some("C"));
        assert_eq!(table_for("other", "x").as_deref(), Some("D"));
        assert_eq!(table_for("nothing", "sales/a.csv"), None);
        assert!(RouteTable::default().find("landing", "a.csv").is_none());
    }

    #[test]
    fn options_are_parsed() {
        let t = table(json!([
            {"container": "a-b", "database": "db", "table": "T", "databaseRouting": "Multi", "blobIdentity": "system"},
            {"container": "$root", "database": "db", "table": "T",
             "blobIdentity": "3F2B8C1E-5D4A-4F6B-9C1D-2E3F4A5B6C7D"}
        ]));
        assert_eq!(t.routes()[0].database_routing, DatabaseRouting::Multi);
        assert_eq!(
            t.routes()[0].blob_uri_suffix.as_deref(),
            Some(";managed_identity=system")
        );
        assert_eq!(
            t.routes()[1].blob_uri_suffix.as_deref(),
            Some(";managed_identity=3f2b8c1e-5d4a-4f6b-9c1d-2e3f4a5b6c7d")
        );
    }

    #[test]
    fn errors_name_the_rule_and_container() {
        let cases = [
            (json!({"container": "x"}), "must be a JSON array"),
            (
                json!([{"container": "landing", "table": "T"}]),
                "rule 1 (container 'landing'): missing field `database`",
            ),
            (
                json!([{"container": "ok1", "database": "d", "table": "T"}, {"container": "x", "database": "d", "table": "T"}]),
                "rule 2 (container 'x'): container 'x' is not a valid container name",
            ),
            (
                json!([{"container": "Landing", "database": "d", "table": "T"}]),
                "rule 1 (container 'Landing'): container",
            ),
            (
                json!([{"database": "d", "table": "T"}]),
                "rule 1: missing field `container`",
            ),
            (
                json!([{"container": "abc", "database": "d", "tabel": "T"}]),
                "rule 1 (container 'abc'): unknown field `tabel`",
            ),
            (
                json!([{"container": "abc", "database": " ", "table": "T"}]),
                "rule 1 (container 'abc'): database name must not be empty",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "format": "xlsx"}]),
                "rule 1 (container 'abc'): property format: 'xlsx' is not a Kusto data format",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "properties": {"flushImmediately": "maybe"}}]),
                "rule 1 (container 'abc'): property flushImmediately: must be true or false",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "properties": []}]),
                "rule 1 (container 'abc'): invalid type",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "databaseRouting": "all"}]),
                "databaseRouting 'all'",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "blobIdentity": "me"}]),
                "blobIdentity 'me'",
            ),
            (
                json!([{"container": "abc", "database": "d", "table": "T", "ingestionMappingReference": ""}]),
                "must not be empty",
            ),
            (json!([42]), "rule 1: must be a JSON object"),
        ];
        for (input, expected) in cases {
            let e = error(input.clone());
            assert!(
                e.contains(expected),
                "{input}: got {e:?}, expected {expected:?}"
            );
        }
        assert!(
            RouteTable::parse("[{")
                .unwrap_err()
                .starts_with("is not valid JSON")
        );
    }

    #[test]
    fn empty_list_is_allowed() {
        assert!(table(json!([])).is_empty());
    }
}
