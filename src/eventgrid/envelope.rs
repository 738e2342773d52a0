//! The Functions host's invocation protocol for the Event Grid trigger: the request body
//! `{"Data": {"event": <value>}, "Metadata": {...}}` and the reply
//! `{"Outputs": {}, "Logs": [...], "ReturnValue": null}`.
//!
//! The host hands a custom handler the event as indented JSON text serialized once more, so
//! `Data.event` is usually a string holding a string holding the event. An object, a JSON string
//! and a double-encoded JSON string are all accepted, as is an array of events in any of them.

use crate::domain::{clip, json_kind};
use serde_json::{Value, json};

/// The trigger binding's `name` in `BlobCreated/function.json`.
pub(crate) const BINDING_NAME: &str = "event";

/// More layers of string encoding than the host ever adds (it adds two).
const MAX_ENCODING_DEPTH: usize = 4;

/// At most this many `Logs` lines go back to the host; the rest are counted in a last line (every
/// line still goes to the handler's own log).
pub(crate) const MAX_LOG_LINES: usize = 200;

/// Why the invocation body did not yield any event. Redelivering it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("the invocation body is not JSON ({0})")]
    NotJson(String),
    #[error("the invocation body has no `Data` object")]
    NoData,
    #[error("`Data` has no `{BINDING_NAME}` binding (found: {0})")]
    NoBinding(String),
    #[error("the event value is a string that is not JSON ({0})")]
    StringNotJson(String),
    #[error("the event value is encoded as a string more than {MAX_ENCODING_DEPTH} times")]
    TooDeep,
    #[error("the event value is {0}; expected an event object or an array of events")]
    WrongType(&'static str),
}

/// The events of one invocation, each still to be parsed (an element of an array that could not
/// be decoded is returned as it is, and rejected by the event parser).
pub(crate) fn decode_events(body: &[u8]) -> Result<Vec<Value>, EnvelopeError> {
    let envelope: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let data = envelope
        .as_object()
        .and_then(|o| find_key(o, "Data"))
        .cloned()
        .ok_or(EnvelopeError::NoData)?;
    let data = match unwrap_strings(data)? {
        Value::Object(map) => map,
        _ => return Err(EnvelopeError::NoData),
    };
    let value = match find_key(&data, BINDING_NAME) {
        Some(v) => v.clone(),
        // A differently named binding still works when it is the only one.
        None if data.len() == 1 => data.values().next().cloned().unwrap_or(Value::Null),
        None => {
            let mut names: Vec<String> = data.keys().take(10).map(|k| clip(k)).collect();
            if names.is_empty() {
                names.push("nothing".to_owned());
            }
            return Err(EnvelopeError::NoBinding(names.join(", ")));
        }
    };
    match unwrap_strings(value)? {
        Value::Array(items) => Ok(items
            .into_iter()
            .map(|item| unwrap_strings(item.clone()).unwrap_or(item))
            .collect()),
        object @ Value::Object(_) => Ok(vec![object]),
        other => Err(EnvelopeError::WrongType(json_kind(&other))),
    }
}

/// The reply body the host expects; `Logs` become the invocation's log lines.
pub(crate) fn reply_body(mut logs: Vec<String>) -> Value {
    if logs.len() > MAX_LOG_LINES {
        let dropped = logs.len() - (MAX_LOG_LINES - 1);
        logs.truncate(MAX_LOG_LINES - 1);
        logs.push(format!("... {dropped} more lines in the handler's log"));
    }
    json!({ "Outputs": {}, "Logs": logs, "ReturnValue": null })
}

/// Parses JSON text until the value is no longer a string.
fn unwrap_strings(mut value: Value) -> Result<Value, EnvelopeError> {
    for _ in 0..=MAX_ENCODING_DEPTH {
        match value {
            Value::String(text) => {
                value = serde_json::from_str(&text)
                    .map_err(|e| EnvelopeError::StringNotJson(e.to_string()))?;
            }
            other => return Ok(other),
        }
    }
    Err(EnvelopeError::TooDeep)
}

fn find_key<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "Data": { "event": event },
            "Metadata": { "sys": { "MethodName": "BlobCreated", "UtcNow": "2024-01-01T00:00:00Z", "RandGuid": "x" } }
        }))
        .unwrap()
    }

    fn event() -> Value {
        json!({"id": "1", "eventType": "Microsoft.Storage.BlobCreated", "data": {"api": "PutBlob"}})
    }

    /// What the host does: indented JSON text, then serialized again as a JSON string.
    fn host_encoded(v: &Value) -> Value {
        let indented = serde_json::to_string_pretty(v)
            .unwrap()
            .replace('\n', "\r\n");
        Value::String(serde_json::to_string(&Value::String(indented)).unwrap())
    }

    #[test]
    fn object_string_and_double_encoded() {
        let e = event();
        assert_eq!(
            decode_events(&envelope(e.clone())).unwrap(),
            vec![e.clone()]
        );
        assert_eq!(
            decode_events(&envelope(Value::String(e.to_string()))).unwrap(),
            vec![e.clone()]
        );
        assert_eq!(
            decode_events(&envelope(host_encoded(&e))).unwrap(),
            vec![e.clone()]
        );
    }

    #[test]
    fn arrays_in_every_encoding() {
        let e = event();
        let arr = json!([e.clone(), e.clone()]);
        assert_eq!(decode_events(&envelope(arr.clone())).unwrap().len(), 2);
        assert_eq!(
            decode_events(&envelope(host_encoded(&arr))).unwrap().len(),
            2
        );
        // Elements that are themselves encoded events.
        let mixed = json!([e.to_string(), host_encoded(&e), "not json", 5]);
        let out = decode_events(&envelope(mixed)).unwrap();
        assert_eq!(out[0], e);
        assert_eq!(out[1], e);
        assert_eq!(out[2], json!("not json"));
        assert_eq!(out[3], json!(5));
        assert!(decode_events(&envelope(json!([]))).unwrap().is_empty());
    }

    #[test]
    fn data_keys_are_case_insensitive_and_a_single_binding_is_used() {
        let body = serde_json::to_vec(&json!({"data": {"EVENT": event()}})).unwrap();
        assert_eq!(decode_events(&body).unwrap().len(), 1);
        let body = serde_json::to_vec(&json!({"Data": {"eventGridEvent": event()}})).unwrap();
        assert_eq!(decode_events(&body).unwrap().len(), 1);
        let body = serde_json::to_vec(&json!({"Data": event().to_string()})).unwrap();
        assert!(matches!(
            decode_events(&body),
            Err(EnvelopeError::NoBinding(_))
        ));
    }

    #[test]
    fn malformed_envelopes() {
        assert!(matches!(decode_events(b""), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(
            decode_events(b"{\"Data\":"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            decode_events(&[0xff, 0xfe]),
            Err(EnvelopeError::NotJson(_))
        ));
        assert_eq!(decode_events(b"[]"), Err(EnvelopeError::NoData));
        assert_eq!(
            decode_events(b"{\"Metadata\":{}}"),
            Err(EnvelopeError::NoData)
        );
        assert_eq!(decode_events(b"{\"Data\":7}"), Err(EnvelopeError::NoData));
        assert_eq!(
            decode_events(b"{\"Data\":{}}"),
            Err(EnvelopeError::NoBinding("nothing".into()))
        );
        let two = serde_json::to_vec(&json!({"Data": {"a": 1, "b": 2}})).unwrap();
        assert_eq!(
            decode_events(&two),
            Err(EnvelopeError::NoBinding("a, b".into()))
        );
        assert!(matches!(
            decode_events(&envelope(json!("{\"id\":"))),
            Err(EnvelopeError::StringNotJson(_))
        ));
        assert_eq!(
            decode_events(&envelope(json!(null))),
            Err(EnvelopeError::WrongType("null"))
        );
        assert_eq!(
            decode_events(&envelope(json!(12))),
            Err(EnvelopeError::WrongType("a number"))
        );
        let mut deep = event();
        for _ in 0..6 {
            deep = Value::String(deep.to_string());
        }
        assert_eq!(decode_events(&envelope(deep)), Err(EnvelopeError::TooDeep));
        // Nesting beyond serde_json's recursion limit is an error, not a stack overflow.
        let nested = format!(
            "{{\"Data\":{{\"event\":{}{}}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(
            decode_events(nested.as_bytes()),
            Err(EnvelopeError::NotJson(_))
        ));
    }

    #[test]
    fn reply_shape_and_log_cap() {
        assert_eq!(
            reply_body(vec!["a".into()]),
            json!({"Outputs": {}, "Logs": ["a"], "ReturnValue": null})
        );
        let many = reply_body((0..1000).map(|i| i.to_string()).collect());
        let logs = many["Logs"].as_array().unwrap();
        assert_eq!(logs.len(), MAX_LOG_LINES);
        assert_eq!(
            logs[MAX_LOG_LINES - 1],
            json!("... 801 more lines in the handler's log")
        );
    }
}
