//! Printing what the handler did: responses, and what the DM emulator's ingestion worker made
//! of the queued messages, with secrets redacted (`sig=<redacted>`, `authorizationContext`).

use std::time::{Duration, Instant};

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

/// Waits up to `timeout` until the DM emulator's ingestion worker has processed a message
/// `wanted` accepts (`GET {control_url}/ingestions`), and returns that outcome.
pub async fn wait_for_ingestion(
    control_url: &str,
    wanted: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Result<Option<Value>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{control_url}/ingestions");
    let deadline = Instant::now() + timeout;
    loop {
        let outcomes: Value = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let found = outcomes
            .as_array()
            .and_then(|all| all.iter().rev().find(|o| wanted(&o["message"])));
        if let Some(o) = found {
            return Ok(Some(o.clone()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line for an outcome: `Succeeded: 8 rows into localdb.Employees` or
/// `Failed: Download_SourceNotFound (Permanent) ...`.
pub fn outcome_line(o: &Value) -> String {
    let target = format!(
        "{}.{}",
        o["database"].as_str().unwrap_or_default(),
        o["table"].as_str().unwrap_or_default()
    );
    match o["status"].as_str().unwrap_or_default() {
        "Succeeded" => format!("Succeeded: {} rows into {target}", o["rows"]),
        status => format!(
            "{status}: {} ({}) {} [{target}]",
            o["error_code"].as_str().unwrap_or_default(),
            o["failure_status"].as_str().unwrap_or_default(),
            redact_sig(o["details"].as_str().unwrap_or_default())
        ),
    }
}

/// Prints what the ingestion worker did with a message, and the message (redacted).
pub fn print_ingestion(found: Result<Option<Value>, String>, what: &str) {
    match found {
        Ok(Some(o)) => {
            println!("  the DM emulator ingested {what}: {}", outcome_line(&o));
            println!("  the message it took off the ingestion queue (base64-decoded):");
            println!("{}", pretty(&o["message"], 4));
        }
        Ok(None) => println!(
            "  {what}: the DM emulator has not ingested it yet (GET /_emulator/ingestions shows it later)"
        ),
        Err(e) => println!("  {what}: cannot read the DM emulator's ingestions: {e}"),
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
