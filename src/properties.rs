//! Ingestion properties: layered (settings < request < blob), case-insensitive like the DM reads
//! them, and split into the message's typed top-level fields and its `AdditionalProperties`.

use serde_json::Value;
use std::fmt;

/// One ingestion property was given a value Kusto would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct PropertyError {
    /// The key as the caller spelled it.
    pub(crate) key: String,
    pub(crate) message: String,
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

/// Ingestion properties in the order they were given, at most one entry per property group, as
/// a caller, a setting or blob metadata gave them: unchecked. [`PropertyBag::parse`] turns a bag
/// into [`Properties`].
#[derive(Clone, Default, PartialEq)]
pub(crate) struct PropertyBag {
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
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn from_map(map: serde_json::Map<String, Value>) -> Self {
        let mut bag = Self::new();
        for (key, value) in map {
            bag.set(key, value);
        }
        bag
    }

    /// Sets a property, replacing any earlier value of the same property under any spelling.
    pub(crate) fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        let group = property_group(&key);
        self.entries.retain(|(k, _)| property_group(k) != group);
        self.entries.push((key, value));
    }

    fn overlay(&mut self, other: &PropertyBag) {
        for (key, value) in &other.entries {
            self.set(key.clone(), value.clone());
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
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

    /// Checks every value of a property the handler interprets, so a bad value is reported against
    /// the layer (and field) it came from, and puts the values the DM parses from strings (`tags`,
    /// `ingestIfNotExists`) in that form. The caller's `authorizationContext` is dropped: it is
    /// always ours, never the caller's, because it is what authorizes the ingestion.
    pub(crate) fn parse(mut self) -> Result<Properties, PropertyError> {
        self.take("authorizationContext");
        for (key, value) in &mut self.entries {
            let checked = match property_group(key).as_str() {
                "retainblobonsuccess" | "flushimmediately" | "ignoresizelimit" => {
                    parse_bool(key, value).map(|b| b.map_or(Value::Null, Value::Bool))?
                }
                "reportlevel" => Value::from(parse_report_level(key, value)? as u8),
                "reportmethod" => Value::from(parse_report_method(key, value)? as u8),
                "format" => {
                    parse_format(key, value)?;
                    value.take()
                }
                "tags" | "ingestifnotexists" => json_array_string(key, value.take())?,
                "creationtime" => check_datetime(key, value.take())?,
                _ => continue,
            };
            *value = checked;
        }
        Ok(Properties(self))
    }
}

/// Ingestion properties whose every value was checked ([`PropertyBag::parse`]): any layering of
/// them is valid, so the [`IngestionSpec`] of a layering cannot fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Properties(PropertyBag);

impl Properties {
    /// Only a data format: what a blob's name implies. `format` is one of [`DATA_FORMATS`].
    pub(crate) fn format(format: &'static str) -> Self {
        debug_assert!(DATA_FORMATS.contains(&format), "{format}");
        let mut bag = PropertyBag::new();
        bag.set("format", Value::String(format.to_owned()));
        Self(bag)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }

    /// Applies `other` on top of `self`: its properties win, under any spelling of their key.
    pub(crate) fn overlay(&mut self, other: &Properties) {
        self.0.overlay(&other.0);
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Makes a retried blob safe: tags its data `ingest-by:<tag>` and has Kusto skip the blob
    /// when the table already holds an extent with that tag (`ingestIfNotExists`), keeping any
    /// tags already given.
    pub(crate) fn ingest_once(&mut self, tag: &str) {
        for (key, value) in [
            ("tags", format!("ingest-by:{tag}")),
            ("ingestIfNotExists", tag.to_owned()),
        ] {
            let mut list = self.string_list(key);
            if !list.contains(&value) {
                list.push(value);
            }
            let json = Value::Array(list.into_iter().map(Value::String).collect()).to_string();
            self.0.set(key, Value::String(json));
        }
    }

    /// A checked list property (`tags`, `ingestIfNotExists`): its strings.
    fn string_list(&self, key: &str) -> Vec<String> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
            .unwrap_or_default()
    }

    /// What the ingestion message says with these properties.
    pub(crate) fn spec(&self) -> IngestionSpec {
        IngestionSpec::from_checked(self.0.clone())
    }
}

/// `ReportLevel` of the ingestion message (integer on the wire, as the Python SDK sends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportLevel {
    FailuresOnly = 0,
    DoNotReport = 1,
    FailuresAndSuccesses = 2,
}

/// `ReportMethod` of the ingestion message. `Table` and `QueueAndTable` track the blob in the
/// DM's status table: the backend writes its row before queuing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportMethod {
    Queue = 0,
    Table = 1,
    QueueAndTable = 2,
}

impl ReportMethod {
    /// Whether the blob is tracked in the status table.
    pub(crate) fn tracked(self) -> bool {
        !matches!(self, ReportMethod::Queue)
    }
}

/// Data formats the DM accepts in `AdditionalProperties.format`.
pub(crate) const DATA_FORMATS: &[&str] = &[
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
pub(crate) const DEFAULT_FORMAT: &str = "csv";

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
pub(crate) struct IngestionSpec {
    pub(crate) retain_blob_on_success: bool,
    pub(crate) flush_immediately: bool,
    pub(crate) ignore_size_limit: bool,
    pub(crate) report_level: ReportLevel,
    pub(crate) report_method: ReportMethod,
    pub(crate) additional: Vec<(String, Value)>,
}

impl IngestionSpec {
    /// Splits checked properties into the message's fields. Top-level message fields
    /// (`flushImmediately`, `reportLevel`, …) may be given anywhere a property can; everything
    /// else passes through to `AdditionalProperties` as given (`tags` and `ingestIfNotExists` as
    /// the JSON-array strings the DM parses).
    fn from_checked(mut bag: PropertyBag) -> Self {
        let mut flag = |key: &str, default: bool| {
            bag.take(key)
                .and_then(|(_, v)| v.as_bool())
                .unwrap_or(default)
        };
        let retain_blob_on_success = flag("retainBlobOnSuccess", true);
        let flush_immediately = flag("flushImmediately", false);
        let ignore_size_limit = flag("ignoreSizeLimit", false);
        let report_method = match bag.take("reportMethod").and_then(|(_, v)| v.as_u64()) {
            Some(1) => ReportMethod::Table,
            Some(2) => ReportMethod::QueueAndTable,
            _ => ReportMethod::Queue,
        };
        let report_level = match bag.take("reportLevel").and_then(|(_, v)| v.as_u64()) {
            // A tracked blob's row must learn of successes too, or it stays Pending.
            _ if report_method.tracked() => ReportLevel::FailuresAndSuccesses,
            Some(1) => ReportLevel::DoNotReport,
            Some(2) => ReportLevel::FailuresAndSuccesses,
            _ => ReportLevel::FailuresOnly,
        };

        let format = match bag.get("format").and_then(Value::as_str) {
            Some(format) => format.to_ascii_lowercase(),
            None => {
                bag.set("format", Value::String(DEFAULT_FORMAT.to_owned()));
                DEFAULT_FORMAT.to_owned()
            }
        };
        let has_mapping =
            bag.get("ingestionMappingReference").is_some() || bag.get("ingestionMapping").is_some();
        if has_mapping && bag.get("ingestionMappingType").is_none() {
            bag.set(
                "ingestionMappingType",
                Value::String(mapping_kind(&format).to_owned()),
            );
        }
        Self {
            retain_blob_on_success,
            flush_immediately,
            ignore_size_limit,
            report_level,
            report_method,
            additional: bag.entries,
        }
    }
}

impl IngestionSpec {
    /// The data format (`AdditionalProperties.format`), always present in a spec.
    pub(crate) fn format(&self) -> &str {
        self.additional
            .iter()
            .find(|(k, _)| property_group(k) == "format")
            .and_then(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_FORMAT)
    }
}

fn parse_format(key: &str, value: &Value) -> Result<(), PropertyError> {
    match value {
        Value::String(s) if DATA_FORMATS.contains(&s.to_ascii_lowercase().as_str()) => Ok(()),
        Value::String(s) => Err(invalid(
            key,
            format!(
                "'{}' is not a Kusto data format (expected one of {})",
                crate::domain::clip(s),
                DATA_FORMATS.join(", ")
            ),
        )),
        _ => Err(invalid(key, "must be a string such as \"csv\"")),
    }
}

/// Booleans arrive as JSON booleans or, from the Logic App, as the strings "true"/"false"; null
/// means unset.
fn parse_bool(key: &str, value: &Value) -> Result<Option<bool>, PropertyError> {
    match value {
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Value::Null => Ok(None),
        _ => Err(invalid(key, "must be true or false")),
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
    let method = match value {
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(ReportMethod::Queue),
            Some(1) => Some(ReportMethod::Table),
            Some(2) => Some(ReportMethod::QueueAndTable),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "queue" | "0" => Some(ReportMethod::Queue),
            "table" | "1" => Some(ReportMethod::Table),
            "queueandtable" | "2" => Some(ReportMethod::QueueAndTable),
            _ => None,
        },
        _ => None,
    };
    method.ok_or_else(|| {
        invalid(
            key,
            "must be one of \"queue\", \"table\", \"queueAndTable\" (or 0, 1, 2)",
        )
    })
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

    fn spec_of(bag: PropertyBag) -> Result<IngestionSpec, PropertyError> {
        bag.parse().map(|p| p.spec())
    }

    fn additional(spec: &IngestionSpec) -> Value {
        Value::Object(spec.additional.iter().cloned().collect())
    }

    #[test]
    fn later_layer_wins_case_insensitively_and_across_aliases() {
        let mut merged = bag(json!({"format": "csv", "ingestionMappingReference": "req"}));
        merged.overlay(&bag(json!({"Format": "json", "mappingReference": "blob"})));
        let spec = spec_of(merged).unwrap();
        assert_eq!(
            additional(&spec),
            json!({"Format": "json", "mappingReference": "blob", "ingestionMappingType": "Json"})
        );
    }

    #[test]
    fn strings_pass_through_untouched() {
        let spec = spec_of(bag(
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
        let spec = spec_of(PropertyBag::new()).unwrap();
        assert!(spec.retain_blob_on_success);
        assert!(!spec.flush_immediately);
        assert_eq!(spec.report_level, ReportLevel::FailuresOnly);
        let spec = spec_of(bag(json!({
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
        let spec = spec_of(bag(json!({"authorizationContext": "evil"}))).unwrap();
        assert_eq!(additional(&spec), json!({"format": "csv"}));
    }

    #[test]
    fn tag_arrays_become_json_array_strings() {
        let spec = spec_of(bag(
            json!({"tags": ["a", "drop-by:x"], "ingestIfNotExists": ["b"]}),
        ))
        .unwrap();
        assert_eq!(
            additional(&spec),
            json!({"tags": "[\"a\",\"drop-by:x\"]", "ingestIfNotExists": "[\"b\"]", "format": "csv"})
        );
    }

    #[test]
    fn ingest_once_adds_the_ingest_by_tag_and_keeps_other_tags() {
        let mut p = bag(json!({"Tags": ["a"], "format": "csv"}))
            .parse()
            .unwrap();
        p.ingest_once("id-1");
        p.ingest_once("id-1");
        assert_eq!(
            additional(&p.spec()),
            json!({"format": "csv", "tags": "[\"a\",\"ingest-by:id-1\"]", "ingestIfNotExists": "[\"id-1\"]"})
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        for (input, key) in [
            (json!({"format": "xlsx"}), "format"),
            (json!({"flushImmediately": "yes"}), "flushImmediately"),
            (json!({"reportLevel": "sometimes"}), "reportLevel"),
            (json!({"reportMethod": "email"}), "reportMethod"),
            (json!({"tags": [1]}), "tags"),
            (json!({"creationTime": "yesterday"}), "creationTime"),
        ] {
            let e = spec_of(bag(input)).unwrap_err();
            assert_eq!(e.key, key);
        }
    }
}
