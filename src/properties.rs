//! Ingestion properties: layered (settings < request < blob), case-insensitive like the DM reads
//! them, and split into the message's typed top-level fields and its `AdditionalProperties`.

use serde_json::Value;
use std::fmt;

/// One ingestion property was given a value Kusto would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PropertyError {
    /// The key as the caller spelled it.
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> PropertyError {
    PropertyError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Keys that name the same property. A later layer that sets any of them replaces an earlier layer's
/// value under any other (the Logic App used `mappingReference`; the SDKs use
/// `ingestionMappingReference`; both must not reach the DM together with different values).
fn property_group(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    match lower.as_str() {
        "mappingreference"
        | "csvmappingreference"
        | "jsonmappingreference"
        | "avromappingreference"
        | "ingestionmappingreference" => "ingestionmappingreference".to_owned(),
        "csvmapping" | "jsonmapping" | "avromapping" | "ingestionmapping" => {
            "ingestionmapping".to_owned()
        }
        _ => lower,
    }
}

/// Ingestion properties in the order they were given, at most one entry per property group.
#[derive(Clone, Default, PartialEq)]
pub struct PropertyBag {
    entries: Vec<(String, Value)>,
}

impl fmt::Debug for PropertyBag {
    // Values may hold anything a caller passed; keys are enough to debug precedence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, _)| k))
            .finish()
    }
}

impl PropertyBag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_map(map: serde_json::Map<String, Value>) -> Self {
        let mut bag = Self::new();
        for (key, value) in map {
            bag.set(key, value);
        }
        bag
    }

    /// Sets a property, replacing any earlier value of the same property under any spelling.
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        let group = property_group(&key);
        self.entries.retain(|(k, _)| property_group(k) != group);
        self.entries.push((key, value));
    }

    /// Applies `other` on top of `self`: its properties win.
    pub fn overlay(&mut self, other: &PropertyBag) {
        for (key, value) in &other.entries {
            self.set(key.clone(), value.clone());
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        let group = property_group(key);
        self.entries
            .iter()
            .find(|(k, _)| property_group(k) == group)
            .map(|(_, v)| v)
    }

    fn take(&mut self, key: &str) -> Option<(String, Value)> {
        let group = property_group(key);
        let at = self
            .entries
            .iter()
            .position(|(k, _)| property_group(k) == group)?;
        Some(self.entries.remove(at))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Checks every value this bag gives to a property the handler interprets, so a bad value is
    /// reported against the layer (and field) it came from rather than after merging.
    pub fn validate(&self) -> Result<(), PropertyError> {
        IngestionSpec::from_bag(self.clone()).map(|_| ())
    }
}

/// `ReportLevel` of the ingestion message (integer on the wire, as the Python SDK sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportLevel {
    FailuresOnly = 0,
    DoNotReport = 1,
    FailuresAndSuccesses = 2,
}

/// `ReportMethod` of the ingestion message. Only `Queue` is offered: `Table` needs a status-table
/// entity written before the message is queued, which this service does not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportMethod {
    Queue = 0,
}

/// Data formats the DM accepts in `AdditionalProperties.format`.
pub const DATA_FORMATS: &[&str] = &[
    "csv",
    "tsv",
    "scsv",
    "sohsv",
    "psv",
    "txt",
    "tsve",
    "json",
    "singlejson",
    "multijson",
    "avro",
    "apacheavro",
    "parquet",
    "sstream",
    "orc",
    "raw",
    "w3clogfile",
    "azmonstream",
];

/// Kusto's own default when a client names no format.
pub const DEFAULT_FORMAT: &str = "csv";

/// The mapping kind the DM expects next to a mapping reference (CamelCase, unlike `format`).
fn mapping_kind(format: &str) -> &'static str {
    match format {
        "json" | "singlejson" | "multijson" => "Json",
        "avro" => "Avro",
        "apacheavro" => "ApacheAvro",
        "parquet" => "Parquet",
        "sstream" => "SStream",
        "orc" => "Orc",
        "w3clogfile" => "W3CLogFile",
        "azmonstream" => "AzMonStream",
        _ => "Csv",
    }
}

/// What the ingestion message says about one blob, beyond where it goes: the typed top-level
/// fields and the `AdditionalProperties` (without `authorizationContext`, which the sender adds).
#[derive(Debug, Clone, PartialEq)]
pub struct IngestionSpec {
    pub retain_blob_on_success: bool,
    pub flush_immediately: bool,
    pub ignore_size_limit: bool,
    pub report_level: ReportLevel,
    pub report_method: ReportMethod,
    pub additional: Vec<(String, Value)>,
}

impl IngestionSpec {
    /// Splits the merged properties into the message's fields. Top-level message fields
    /// (`flushImmediately`, `reportLevel`, …) may be given anywhere a property can; everything
    /// else passes through to `AdditionalProperties` untouched, except that `tags` and
    /// `ingestIfNotExists` arrays become the JSON-array strings the DM parses.
    pub fn from_bag(mut bag: PropertyBag) -> Result<Self, PropertyError> {
        let retain_blob_on_success = take_bool(&mut bag, "retainBlobOnSuccess")?.unwrap_or(true);
        let flush_immediately = take_bool(&mut bag, "flushImmediately")?.unwrap_or(false);
        let ignore_size_limit = take_bool(&mut bag, "ignoreSizeLimit")?.unwrap_or(false);
        let report_level = match bag.take("reportLevel") {
            None => ReportLevel::FailuresOnly,
            Some((key, value)) => parse_report_level(&key, &value)?,
        };
        let report_method = match bag.take("reportMethod") {
            None => ReportMethod::Queue,
            Some((key, value)) => parse_report_method(&key, &value)?,
        };
        // Always ours, never the caller's: it is what authorizes the ingestion.
        bag.take("authorizationContext");

        let format = match bag.get("format") {
            None => DEFAULT_FORMAT.to_owned(),
            Some(Value::String(s)) if DATA_FORMATS.contains(&s.to_ascii_lowercase().as_str()) => {
                s.to_ascii_lowercase()
            }
            Some(Value::String(s)) => {
                return Err(invalid(
                    "format",
                    format!(
                        "'{s}' is not a Kusto data format (expected one of {})",
                        DATA_FORMATS.join(", ")
                    ),
                ));
            }
            Some(_) => return Err(invalid("format", "must be a string such as \"csv\"")),
        };
        if bag.get("format").is_none() {
            bag.set("format", Value::String(format.clone()));
        }
        let has_mapping =
            bag.get("ingestionMappingReference").is_some() || bag.get("ingestionMapping").is_some();
        if has_mapping && bag.get("ingestionMappingType").is_none() {
            bag.set(
                "ingestionMappingType",
                Value::String(mapping_kind(&format).to_owned()),
            );
        }

        let mut additional = Vec::with_capacity(bag.entries.len());
        for (key, value) in bag.entries {
            let value = match property_group(&key).as_str() {
                "tags" | "ingestifnotexists" => json_array_string(&key, value)?,
                "creationtime" => check_datetime(&key, value)?,
                _ => value,
            };
            additional.push((key, value));
        }
        Ok(Self {
            retain_blob_on_success,
            flush_immediately,
            ignore_size_limit,
            report_level,
            report_method,
            additional,
        })
    }
}

/// Booleans arrive as JSON booleans or, from the Logic App, as the strings "true"/"false".
fn take_bool(bag: &mut PropertyBag, key: &str) -> Result<Option<bool>, PropertyError> {
    let Some((spelled, value)) = bag.take(key) else {
        return Ok(None);
    };
    match &value {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Value::Null => Ok(None),
        _ => Err(invalid(&spelled, "must be true or false")),
    }
}

fn parse_report_level(key: &str, value: &Value) -> Result<ReportLevel, PropertyError> {
    let level = match value {
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(ReportLevel::FailuresOnly),
            Some(1) => Some(ReportLevel::DoNotReport),
            Some(2) => Some(ReportLevel::FailuresAndSuccesses),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "failuresonly" | "0" => Some(ReportLevel::FailuresOnly),
            "none" | "donotreport" | "1" => Some(ReportLevel::DoNotReport),
            "failuresandsuccesses" | "2" => Some(ReportLevel::FailuresAndSuccesses),
            _ => None,
        },
        _ => None,
    };
    level.ok_or_else(|| {
        invalid(
            key,
            "must be one of \"failuresOnly\", \"none\", \"failuresAndSuccesses\" (or 0, 1, 2)",
        )
    })
}

fn parse_report_method(key: &str, value: &Value) -> Result<ReportMethod, PropertyError> {
    let is_queue = match value {
        Value::Number(n) => n.as_u64() == Some(0),
        Value::String(s) => s.eq_ignore_ascii_case("queue") || s == "0",
        _ => false,
    };
    if is_queue {
        Ok(ReportMethod::Queue)
    } else {
        Err(invalid(
            key,
            "only \"queue\" is supported: table reporting needs a status-table entry this service does not write",
        ))
    }
}

/// The DM parses `tags` and `ingestIfNotExists` from a string holding a JSON array.
fn json_array_string(key: &str, value: Value) -> Result<Value, PropertyError> {
    match value {
        Value::Array(items) => {
            if items.iter().any(|v| !v.is_string()) {
                return Err(invalid(key, "must be an array of strings"));
            }
            Ok(Value::String(Value::Array(items).to_string()))
        }
        Value::String(s) => Ok(Value::String(s)),
        _ => Err(invalid(key, "must be an array of strings")),
    }
}

fn check_datetime(key: &str, value: Value) -> Result<Value, PropertyError> {
    let ok = value
        .as_str()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        })
        .unwrap_or(false);
    if ok {
        Ok(value)
    } else {
        Err(invalid(
            key,
            "must be an ISO 8601 date-time such as \"2024-01-31T12:00:00Z\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bag(v: Value) -> PropertyBag {
        match v {
            Value::Object(map) => PropertyBag::from_map(map),
            _ => unreachable!("test input is an object"),
        }
    }

    fn additional(spec: &IngestionSpec) -> Value {
        Value::Object(spec.additional.iter().cloned().collect())
    }

    #[test]
    fn later_layer_wins_case_insensitively_and_across_aliases() {
        let mut merged = bag(json!({"format": "csv", "ingestionMappingReference": "req"}));
        merged.overlay(&bag(json!({"Format": "json", "mappingReference": "blob"})));
        let spec = IngestionSpec::from_bag(merged).unwrap();
        assert_eq!(
            additional(&spec),
            json!({"Format": "json", "mappingReference": "blob", "ingestionMappingType": "Json"})
        );
    }

    #[test]
    fn strings_pass_through_untouched() {
        let spec = IngestionSpec::from_bag(bag(
            json!({"ignoreFirstRecord": "true", "zipPattern": "*.csv"}),
        ))
        .unwrap();
        assert_eq!(
            additional(&spec),
            json!({"ignoreFirstRecord": "true", "zipPattern": "*.csv", "format": "csv"})
        );
    }

    #[test]
    fn top_level_fields_are_lifted_with_defaults() {
        let spec = IngestionSpec::from_bag(PropertyBag::new()).unwrap();
        assert!(spec.retain_blob_on_success);
        assert!(!spec.flush_immediately);
        assert_eq!(spec.report_level, ReportLevel::FailuresOnly);
        let spec = IngestionSpec::from_bag(bag(json!({
            "flushImmediately": "true", "retainBlobOnSuccess": false, "reportLevel": "failuresAndSuccesses"
        })))
        .unwrap();
        assert!(spec.flush_immediately);
        assert!(!spec.retain_blob_on_success);
        assert_eq!(spec.report_level, ReportLevel::FailuresAndSuccesses);
        assert_eq!(additional(&spec), json!({"format": "csv"}));
    }

    #[test]
    fn callers_authorization_context_is_dropped() {
        let spec = IngestionSpec::from_bag(bag(json!({"authorizationContext": "evil"}))).unwrap();
        assert_eq!(additional(&spec), json!({"format": "csv"}));
    }

    #[test]
    fn tag_arrays_become_json_array_strings() {
        let spec = IngestionSpec::from_bag(bag(
            json!({"tags": ["a", "drop-by:x"], "ingestIfNotExists": ["b"]}),
        ))
        .unwrap();
        assert_eq!(
            additional(&spec),
            json!({"tags": "[\"a\",\"drop-by:x\"]", "ingestIfNotExists": "[\"b\"]", "format": "csv"})
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (input, key) in [
            (json!({"format": "xlsx"}), "format"),
            (json!({"flushImmediately": "yes"}), "flushImmediately"),
            (json!({"reportLevel": "sometimes"}), "reportLevel"),
            (json!({"reportMethod": "table"}), "reportMethod"),
            (json!({"tags": [1]}), "tags"),
            (json!({"creationTime": "yesterday"}), "creationTime"),
        ] {
            let e = IngestionSpec::from_bag(bag(input)).unwrap_err();
            assert_eq!(e.key, key);
        }
    }
}
