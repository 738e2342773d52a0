//! Describing untrusted or secret-bearing input safely in log lines, messages and responses.

use serde_json::Value;

/// Removes the query string (SAS) and `;` credential suffix from any URL-ish string, for messages
/// that must mention a storage URL without leaking its credentials.
pub(crate) fn redact_url(raw: &str) -> String {
    match raw.find(['?', ';', '#']) {
        Some(at) => format!("{}?<redacted>", &raw[..at]),
        None => raw.to_owned(),
    }
}

/// Replaces the query string of every URL inside free text (an error message from a client
/// library, say) with `<redacted>`, so a SAS can't leak through an error we did not write.
pub(crate) fn scrub_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<' | ','))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        match url.find(['?', ';']) {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?<redacted>");
            }
            None => out.push_str(url),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Untrusted text for a log line: at most 256 characters, control characters escaped.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 256;
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How a JSON value is named in messages ("a string", "an array", …).
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_secrets_redacts_urls_in_text() {
        assert_eq!(
            scrub_secrets(
                "error sending request for url (https://a.queue.core.windows.net/q/messages?sv=1&sig=abc): refused"
            ),
            "error sending request for url (https://a.queue.core.windows.net/q/messages?<redacted>): refused"
        );
        assert_eq!(scrub_secrets("no url here"), "no url here");
    }

    #[test]
    fn redact_url_strips_query() {
        assert_eq!(redact_url("https://a/q?sig=x"), "https://a/q?<redacted>");
        assert_eq!(redact_url("https://a/q"), "https://a/q");
    }
}
