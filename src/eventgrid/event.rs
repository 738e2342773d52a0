//! One Event Grid event, in Event Grid schema or CloudEvents 1.0, parsed into what the trigger
//! needs. Only `Microsoft.Storage.BlobCreated` events are parsed beyond their id and type.

use crate::domain::{clip, json_kind};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

pub(crate) const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";

/// Event ids are GUID-like; anything this long is not a real event.
const MAX_ID: usize = 1024;
/// Blob names are at most 1024 characters; percent-encoding can triple that, plus the
/// `/blobServices/default/containers/<container>/blobs/` part.
const MAX_SUBJECT: usize = 4096;
const MAX_URL: usize = 8192;
const MAX_TYPE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    EventGrid,
    CloudEvents,
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Schema::EventGrid => "Event Grid schema",
            Schema::CloudEvents => "CloudEvents 1.0",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) schema: Schema,
    pub(crate) kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EventKind {
    BlobCreated(BlobCreated),
    /// Any other event type (subscription validation, BlobDeleted, …): acknowledged, not ingested.
    Other {
        event_type: String,
    },
}

/// The parts of a `Microsoft.Storage.BlobCreated` event the trigger uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlobCreated {
    /// `data.api`: `PutBlob`, `PutBlockList`, `FlushWithClose`, `CopyBlob`, `CreateFile`, …
    pub(crate) api: String,
    /// Container, from the subject, percent-decoded.
    pub(crate) container: String,
    /// Blob path inside the container, from the subject, percent-decoded.
    pub(crate) path: String,
    /// `data.url` as delivered (no credentials).
    pub(crate) url: String,
    /// `data.contentLength`, the stored (possibly compressed) size.
    pub(crate) content_length: Option<u64>,
}

impl BlobCreated {
    /// A directory rather than a file: an ADLS Gen2 directory or a "folder" placeholder blob.
    pub(crate) fn is_folder(&self) -> bool {
        self.path.ends_with('/') || self.url.ends_with('/')
    }
}

/// Why an event could not be understood. Redelivering it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    #[error("the event is {0}, not a JSON object")]
    NotAnObject(&'static str),
    #[error(
        "the event has neither `eventType` (Event Grid schema) nor `specversion` (CloudEvents 1.0)"
    )]
    UnknownSchema,
    #[error("CloudEvents specversion {0} is not supported (only \"1.0\")")]
    UnsupportedSpecVersion(String),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{field}` is {len} bytes long, more than the {max} a blob event can have")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("subject {0} is not /blobServices/default/containers/<container>/blobs/<path>")]
    BadSubject(String),
}

/// The event's id, if it has a usable one, for log lines about an event that failed to parse.
pub(crate) fn peek_id(value: &Value) -> Option<String> {
    value.get("id").and_then(Value::as_str).map(clip)
}

pub(crate) fn parse_event(value: &Value) -> Result<Event, EventError> {
    let obj = value
        .as_object()
        .ok_or(EventError::NotAnObject(json_kind(value)))?;
    let (schema, type_field) = match obj.get("specversion") {
        Some(Value::String(v)) if v == "1.0" => (Schema::CloudEvents, "type"),
        Some(other) => return Err(EventError::UnsupportedSpecVersion(clip(&other.to_string()))),
        None if obj.contains_key("eventType") => (Schema::EventGrid, "eventType"),
        None => return Err(EventError::UnknownSchema),
    };

    let id = required_str(obj, "id", MAX_ID)?;
    if id.trim().is_empty() {
        return Err(EventError::Missing("id"));
    }
    let event_type = required_str(obj, type_field, MAX_TYPE)?;
    if !event_type.eq_ignore_ascii_case(BLOB_CREATED) {
        return Ok(Event {
            id: id.to_owned(),
            schema,
            kind: EventKind::Other {
                event_type: event_type.to_owned(),
            },
        });
    }

    let subject = required_str(obj, "subject", MAX_SUBJECT)?;
    let (container, path) = parse_subject(subject)?;
    let data = data_object(obj)?;
    let api = required_str(&data, "data.api", MAX_TYPE)?.to_owned();
    let url = required_str(&data, "data.url", MAX_URL)?.to_owned();
    let content_length = match data.get("contentLength") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(EventError::WrongType {
            field: "data.contentLength",
            expected: "a non-negative integer",
        })?),
    };
    Ok(Event {
        id: id.to_owned(),
        schema,
        kind: EventKind::BlobCreated(BlobCreated {
            api,
            container,
            path,
            url,
            content_length,
        }),
    })
}

/// `data` is an object; tolerate it arriving as a JSON string holding one.
fn data_object(obj: &Map<String, Value>) -> Result<Cow<'_, Map<String, Value>>, EventError> {
    match obj.get("data") {
        Some(Value::Object(map)) => Ok(Cow::Borrowed(map)),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => Ok(Cow::Owned(map)),
            _ => Err(EventError::WrongType {
                field: "data",
                expected: "a JSON object",
            }),
        },
        None | Some(Value::Null) if obj.contains_key("data_base64") => Err(EventError::WrongType {
            field: "data",
            expected: "a JSON object (data_base64 is not supported for blob events)",
        }),
        None | Some(Value::Null) => Err(EventError::Missing("data")),
        Some(_) => Err(EventError::WrongType {
            field: "data",
            expected: "a JSON object",
        }),
    }
}

/// A string field, `field` being its name in messages (`data.url` is looked up as `url`).
fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<&'a str, EventError> {
    let key = field.rsplit('.').next().unwrap_or(field);
    match obj.get(key) {
        None | Some(Value::Null) => Err(EventError::Missing(field)),
        Some(Value::String(s)) if s.len() > max => Err(EventError::TooLong {
            field,
            len: s.len(),
            max,
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(EventError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// `/blobServices/default/containers/<container>/blobs/<path>`, with or without the leading slash
/// (the CloudEvents samples omit it), into percent-decoded container and path.
pub(crate) fn parse_subject(subject: &str) -> Result<(String, String), EventError> {
    let bad = || EventError::BadSubject(format!("'{}'", clip(subject)));
    let rest = subject.strip_prefix('/').unwrap_or(subject);
    let rest = rest
        .strip_prefix("blobServices/default/containers/")
        .ok_or_else(bad)?;
    let (container, rest) = rest.split_once('/').ok_or_else(bad)?;
    let path = rest.strip_prefix("blobs/").ok_or_else(bad)?;
    let container = decode(container);
    let path = decode(path);
    if container.is_empty() || path.is_empty() {
        return Err(bad());
    }
    Ok((container, path))
}

/// Percent-decodes; a sequence that does not decode to UTF-8 is kept as delivered.
fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(Cow::into_owned)
        .unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_grid() -> Value {
        json!({
            "topic": "/subscriptions/s/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": "2017-06-26T18:41:00.9584103Z",
            "id": "831e1650-001e-001b-66ab-eeb76e069631",
            "data": {
                "api": "PutBlockList",
                "contentLength": 524288,
                "blobType": "BlockBlob",
                "url": "https://acct.blob.core.windows.net/testcontainer/new-file.txt"
            },
            "dataVersion": "",
            "metadataVersion": "1"
        })
    }

    fn blob(event: Event) -> BlobCreated {
        match event.kind {
            EventKind::BlobCreated(b) => b,
            other => panic!("not a blob event: {other:?}"),
        }
    }

    #[test]
    fn event_grid_schema() {
        let e = parse_event(&event_grid()).unwrap();
        assert_eq!(e.schema, Schema::EventGrid);
        assert_eq!(e.id, "831e1650-001e-001b-66ab-eeb76e069631");
        let b = blob(e);
        assert_eq!(b.api, "PutBlockList");
        assert_eq!(b.container, "test-container");
        assert_eq!(b.path, "new-file.txt");
        assert_eq!(b.content_length, Some(524288));
        assert!(!b.is_folder());
    }

    #[test]
    fn cloud_events_schema_without_leading_slash() {
        let v = json!({
            "specversion": "1.0",
            "type": "Microsoft.Storage.BlobCreated",
            "source": "/subscriptions/s/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/acct",
            "id": "e1",
            "time": "2017-06-26T18:41:00.9584103Z",
            "subject": "blobServices/default/containers/c1/blobs/dir/a%20b.csv",
            "data": {"api": "PutBlob", "url": "https://acct.blob.core.windows.net/c1/dir/a%20b.csv"}
        });
        let e = parse_event(&v).unwrap();
        assert_eq!(e.schema, Schema::CloudEvents);
        let b = blob(e);
        assert_eq!(b.path, "dir/a b.csv");
        assert_eq!(b.content_length, None);
    }

    #[test]
    fn other_event_types_are_recognised_without_data() {
        let v = json!({"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "subject": "", "data": {"validationCode": "x"}});
        assert_eq!(
            parse_event(&v).unwrap().kind,
            EventKind::Other {
                event_type: "Microsoft.EventGrid.SubscriptionValidationEvent".into()
            }
        );
    }

    #[test]
    fn data_as_a_json_string_is_accepted() {
        let mut v = event_grid();
        let data = v["data"].to_string();
        v["data"] = Value::String(data);
        assert_eq!(blob(parse_event(&v).unwrap()).api, "PutBlockList");
    }

    #[test]
    fn folders() {
        let mut v = event_grid();
        v["subject"] = json!("/blobServices/default/containers/c/blobs/dir/sub/");
        assert!(blob(parse_event(&v).unwrap()).is_folder());
        let mut v = event_grid();
        v["data"]["url"] = json!("https://acct.dfs.core.windows.net/c/dir/");
        assert!(blob(parse_event(&v).unwrap()).is_folder());
    }

    #[test]
    fn subjects() {
        assert_eq!(
            parse_subject("/blobServices/default/containers/c/blobs/a/b/c.csv").unwrap(),
            ("c".into(), "a/b/c.csv".into())
        );
        assert_eq!(
            parse_subject("blobServices/default/containers/c/blobs/%E2%82%AC.csv").unwrap(),
            ("c".into(), "€.csv".into())
        );
        // Invalid UTF-8 after decoding: kept as delivered.
        assert_eq!(
            parse_subject("/blobServices/default/containers/c/blobs/%FF.csv")
                .unwrap()
                .1,
            "%FF.csv"
        );
        for bad in [
            "",
            "/",
            "/blobServices/default/containers/c",
            "/blobServices/default/containers/c/blobs/",
            "/blobServices/default/containers//blobs/a.csv",
            "/blobServices/default/containers/c/files/a.csv",
            "/tableServices/default/tables/t",
        ] {
            assert!(
                matches!(parse_subject(bad), Err(EventError::BadSubject(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_events_are_errors() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = event_grid();
            f(&mut v);
            parse_event(&v).unwrap_err()
        };
        assert_eq!(
            parse_event(&json!("x")).unwrap_err(),
            EventError::NotAnObject("a string")
        );
        assert_eq!(
            parse_event(&json!({"id": "1"})).unwrap_err(),
            EventError::UnknownSchema
        );
        assert!(matches!(
            parse_event(&json!({"specversion": "0.3", "id": "1", "type": BLOB_CREATED}))
                .unwrap_err(),
            EventError::UnsupportedSpecVersion(_)
        ));
        assert_eq!(
            with(&|v| v["id"] = json!(7)),
            EventError::WrongType {
                field: "id",
                expected: "a string"
            }
        );
        assert_eq!(with(&|v| v["id"] = json!(" ")), EventError::Missing("id"));
        assert_eq!(
            with(&|v| v["eventType"] = json!(null)),
            EventError::Missing("eventType")
        );
        assert_eq!(
            with(&|v| v["data"].as_object_mut().unwrap().clear()),
            EventError::Missing("data.api")
        );
        assert_eq!(
            with(&|v| {
                v["data"].as_object_mut().unwrap().remove("url");
            }),
            EventError::Missing("data.url")
        );
        assert_eq!(
            with(&|v| v["data"]["url"] = json!(["u"])),
            EventError::WrongType {
                field: "data.url",
                expected: "a string"
            }
        );
    }

    #[test]
    fn malformed_data_and_oversized_fields_are_errors() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = event_grid();
            f(&mut v);
            parse_event(&v).unwrap_err()
        };
        assert!(matches!(
            with(&|v| v["data"]["contentLength"] = json!(-1)),
            EventError::WrongType {
                field: "data.contentLength",
                ..
            }
        ));
        assert!(matches!(
            with(&|v| v["data"]["contentLength"] = json!("12")),
            EventError::WrongType { .. }
        ));
        assert_eq!(
            with(&|v| {
                v.as_object_mut().unwrap().remove("data");
            }),
            EventError::Missing("data")
        );
        assert!(matches!(
            with(&|v| v["data"] = json!("not json")),
            EventError::WrongType { field: "data", .. }
        ));
        assert!(matches!(
            with(&|v| v["data"] = json!(3)),
            EventError::WrongType { field: "data", .. }
        ));
        let huge = format!(
            "/blobServices/default/containers/c/blobs/{}",
            "a".repeat(1 << 20)
        );
        assert!(matches!(
            with(&|v| v["subject"] = json!(huge)),
            EventError::TooLong {
                field: "subject",
                ..
            }
        ));
        assert!(matches!(
            with(&|v| v["id"] = json!("i".repeat(5000))),
            EventError::TooLong { field: "id", .. }
        ));
    }

    #[test]
    fn error_messages_do_not_echo_huge_input() {
        let huge = format!("/nope/{}", "x".repeat(100_000));
        let message = parse_subject(&huge).unwrap_err().to_string();
        assert!(message.len() < 400, "{}", message.len());
    }
}
