//! Printing what the handler did: responses and ingestion messages, with secrets redacted
//! (`sig=<redacted>`, `authorizationContext`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kusto_dev::AzuriteHandle;
use serde_json::Value;

/// Replaces the value of every `sig=` parameter with `<redacted>`.
pub fn redact_sig(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_sig(rest) {
        let value_start = at + "sig=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("<redacted>");
        let value_len = rest[value_start..]
            .find(['&', ';', '"', '\'', ' ', '\n', '#'])
            .unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

/// Position of a `sig=` that starts a query parameter (`?sig=`, `&sig=` or at the start).
fn find_sig(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("sig=") {
        let at = from + pos;
        if at == 0 || matches!(lower.as_bytes()[at - 1], b'?' | b'&') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// Redacts a JSON value in place: `sig=` values in every string, and any `authorizationContext`.
pub fn redact(value: &mut Value) {
    match value {
        Value::String(s) if find_sig(s).is_some() => *s = redact_sig(s),
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k.eq_ignore_ascii_case("authorizationContext") {
                    *v = Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        _ => {}
    }
}

/// Pretty JSON, redacted, indented by `indent` spaces.
pub fn pretty(value: &Value, indent: usize) -> String {
    let mut v = value.clone();
    redact(&mut v);
    let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
    let pad = " ".repeat(indent);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A decoded ingestion message and the queue it sits in.
pub struct Found {
    pub account: String,
    pub queue: String,
    pub message: Value,
}

/// Peeks (without dequeuing) every ingestion queue and returns the last message `wanted`
/// accepts. Peek shows at most 32 messages per queue, the oldest first.
pub async fn find_message(
    azurite: &AzuriteHandle,
    queues: &[(String, String)],
    wanted: impl Fn(&Value) -> bool,
) -> Result<Option<Found>, String> {
    let mut found = None;
    for (account, queue) in queues {
        let texts = azurite
            .peek_messages(account, queue)
            .await
            .map_err(|e| e.to_string())?;
        for text in texts {
            let Some(message) = decode_message(&text) else {
                continue;
            };
            if wanted(&message) {
                found = Some(Found {
                    account: account.clone(),
                    queue: queue.clone(),
                    message,
                });
            }
        }
    }
    Ok(found)
}

/// A queue `MessageText`: base64 of the JSON ingestion message.
pub fn decode_message(text: &str) -> Option<Value> {
    let bytes = B64.decode(text.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Prints a found message (or why there is none).
pub fn print_message(found: Result<Option<Found>, String>, what: &str) {
    match found {
        Ok(Some(f)) => {
            println!(
                "  message on the ingestion queue {}/{} (peeked, base64-decoded):",
                f.account, f.queue
            );
            println!("{}", pretty(&f.message, 4));
        }
        Ok(None) => println!(
            "  {what}: not among the first 32 messages of each ingestion queue (peek shows the oldest)"
        ),
        Err(e) => println!("  {what}: cannot peek the ingestion queues: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sig_values_are_redacted() {
        assert_eq!(
            redact_sig("http://h/a/b?sv=1&sig=abc%2Bdef&se=2"),
            "http://h/a/b?sv=1&sig=<redacted>&se=2"
        );
        assert_eq!(redact_sig("x?sig=abc"), "x?sig=<redacted>");
        assert_eq!(redact_sig("no secret; design=1"), "no secret; design=1");
    }

    #[test]
    fn messages_lose_sig_and_authorization_context() {
        let mut m = json!({
            "BlobPath": "http://127.0.0.1:10000/a/c/b.csv?sv=x&sig=SECRET",
            "AdditionalProperties": {"authorizationContext": "SECRET", "format": "csv"}
        });
        redact(&mut m);
        let text = m.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("sig=<redacted>"));
        assert_eq!(m["AdditionalProperties"]["format"], "csv");
    }
}
