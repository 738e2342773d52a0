//! Describing untrusted or secret-bearing input safely in log lines, messages and responses.

use serde_json::Value;

/// Removes the query string (SAS), the `;` credential suffix and any user info (`user:password@`)
/// from a URL-ish string, for messages that must mention a URL without leaking its credentials.
pub(crate) fn redact_url(raw: &str) -> String {
    let without_user = strip_userinfo(raw);
    match without_user.find(['?', ';', '#']) {
        Some(at) => format!("{}?<redacted>", &without_user[..at]),
        None => without_user,
    }
}

/// `scheme://user:password@host/…` → `scheme://host/…`.
fn strip_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|at| at + 3) else {
        return raw.to_owned();
    };
    let authority_end = raw[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(raw.len(), |at| scheme_end + at);
    match raw[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &raw[..scheme_end], &raw[scheme_end + at + 1..]),
        None => raw.to_owned(),
    }
}

/// Parameters whose values are secrets wherever they appear (a SAS pasted into an error message
/// outside any URL, say).
const SECRET_PARAMETERS: &[&str] = &["sig=", "signature=", "access_token=", "bearer "];

/// Text written by others (a DM's error body, a client library's error) made safe to echo: the
/// query string and user info of every URL, every `sig=`/`signature=`/`access_token=` value,
/// every bearer token and every JWT-shaped token are replaced with `<redacted>`.
pub(crate) fn scrub_secrets(text: &str) -> String {
    let urls_scrubbed = scrub_urls(text);
    let params_scrubbed = scrub_parameters(&urls_scrubbed);
    scrub_jwts(&params_scrubbed)
}

/// `name=value` (case-insensitively) → `name=<redacted>`, up to the next delimiter.
fn scrub_parameters(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some((start, name)) = SECRET_PARAMETERS
        .iter()
        .filter_map(|name| lower[at..].find(name).map(|i| (at + i, name)))
        .min_by_key(|(i, _)| *i)
    {
        let value_start = start + name.len();
        let value_end = text[value_start..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '&' | '"' | '\'' | ')' | ',' | ';' | '<' | '>')
            })
            .map_or(text.len(), |i| value_start + i);
        out.push_str(&text[at..value_start]);
        if value_end > value_start {
            out.push_str("<redacted>");
        }
        at = value_end;
    }
    out.push_str(&text[at..]);
    out
}

/// Three base64url segments starting with `eyJ` (a JSON header): a JWT, replaced whole.
fn scrub_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        let (before, candidate) = rest.split_at(at);
        out.push_str(before);
        let len = candidate
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(candidate.len());
        let token = &candidate[..len];
        if token.split('.').count() >= 3 && len >= 20 {
            out.push_str("<redacted>");
        } else {
            out.push_str(token);
        }
        rest = &candidate[len..];
    }
    out.push_str(rest);
    out
}

/// Replaces the query string and user info of every URL inside free text with `<redacted>`.
fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<' | ','))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        let url = strip_userinfo(url);
        match url.find(['?', ';']) {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?<redacted>");
            }
            None => out.push_str(&url),
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

/// An error and every `source()` under it, on one line, with any URL's query string removed.
pub(crate) fn describe_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    scrub_secrets(&text)
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

    #[test]
    fn redact_url_strips_user_info() {
        assert_eq!(
            redact_url("https://user:hunter2@ingest-x.kusto.windows.net/"),
            "https://ingest-x.kusto.windows.net/"
        );
        assert_eq!(redact_url("https://a@b/c?d"), "https://b/c?<redacted>");
    }

    #[test]
    fn scrub_secrets_redacts_signatures_tokens_and_user_info_anywhere() {
        let text = "Storage said: sig=AbC%2Bdef&se=2030 and SIGNATURE=xyz; Authorization: Bearer abc.def             token eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJrIn0.c2lnbmF0dXJl at https://u:pw@host/p";
        let scrubbed = scrub_secrets(text);
        for secret in [
            "AbC",
            "xyz",
            "abc.def",
            "eyJhbGciOiJSUzI1NiJ9",
            "c2lnbmF0dXJl",
            "pw@",
        ] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("se=2030"), "{scrubbed}");
        assert!(scrubbed.contains("https://host/p"), "{scrubbed}");
    }
}
