//! Parsed domain values. Once a value of one of these types exists it is valid: the HTTP edge and the
//! Event Grid decoder parse untrusted input into them, and everything after that relies on the type.

use std::fmt;
use url::Url;
use uuid::Uuid;

/// Why a domain value was rejected; the caller adds which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(pub String);

fn err(message: impl Into<String>) -> DomainError {
    DomainError(message.into())
}

/// Kusto entity names are at most 1024 characters; we also refuse control characters, which no
/// valid database or table name contains and which would otherwise end up in log lines.
const MAX_ENTITY_NAME: usize = 1024;

fn parse_entity_name(kind: &str, raw: &str) -> Result<String, DomainError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(err(format!("{kind} name must not be empty")));
    }
    if trimmed.chars().count() > MAX_ENTITY_NAME {
        return Err(err(format!(
            "{kind} name is longer than {MAX_ENTITY_NAME} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(err(format!(
            "{kind} name must not contain control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A Kusto database name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatabaseName(String);

impl DatabaseName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        parse_entity_name("database", raw).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kusto table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        parse_entity_name("table", raw).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id Kusto reports a blob's ingestion under (`IngestionSourceId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId(Uuid);

impl SourceId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        Uuid::try_parse(raw.trim())
            .map(Self)
            .map_err(|_| err("source id must be a GUID, e.g. 3f2b8c1e-5d4a-4f6b-9c1d-2e3f4a5b6c7d"))
    }

    /// A stable id derived from a name, so that the same input (an Event Grid event id) always maps
    /// to the same source id and a redelivery can be matched with the first delivery.
    pub fn derived_from(namespace: &Uuid, name: &str) -> Self {
        Self(Uuid::new_v5(namespace, name.as_bytes()))
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Longest blob URI we accept; Azure caps blob names at 1024 characters and a SAS adds a few hundred.
const MAX_BLOB_URI: usize = 8 * 1024;

/// The URI of a blob to ingest, exactly as the DM must receive it (SAS query or `;managed_identity=…`
/// suffix included). `Display` and `Debug` print it without those secrets, so a `BlobUri` can go into
/// logs and responses as is.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobUri {
    full: String,
    /// Byte length of the part before the query string or `;` credential suffix.
    public_len: usize,
    has_secret: bool,
}

impl BlobUri {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.len() > MAX_BLOB_URI {
            return Err(err(format!(
                "blob URI is longer than {MAX_BLOB_URI} characters"
            )));
        }
        if raw.trim() != raw || raw.is_empty() {
            return Err(err(
                "blob URI must be a non-empty absolute URL without surrounding spaces",
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(err("blob URI must not contain control characters"));
        }
        // Kusto's storage connection strings put credentials after ';' (`;managed_identity=system`).
        let secret_at = raw.find(['?', ';', '#']).unwrap_or(raw.len());
        let url = Url::parse(raw).map_err(|e| err(format!("blob URI is not a valid URL: {e}")))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("blob URI must name a host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(host) => {}
            "http" => {
                return Err(err(
                    "blob URI must use https (http is accepted only for loopback hosts)",
                ));
            }
            other => {
                return Err(err(format!(
                    "blob URI scheme '{other}' is not supported; use https"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("blob URI must not carry user info"));
        }
        let path = url.path().trim_start_matches('/');
        if path.is_empty() || !path.contains('/') {
            return Err(err("blob URI must name a container and a blob"));
        }
        Ok(Self {
            full: raw.to_owned(),
            public_len: secret_at,
            has_secret: secret_at < raw.len(),
        })
    }

    /// The URI with its credentials, for the ingestion message only.
    pub fn expose_with_credentials(&self) -> &str {
        &self.full
    }

    /// The URI without query string or credential suffix.
    pub fn without_credentials(&self) -> &str {
        &self.full[..self.public_len]
    }

    /// The last path segment, lower-cased, for compression and format inference.
    pub fn file_name(&self) -> &str {
        self.without_credentials()
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }

    /// True when the blob name says the content is compressed, so its stored size is not the raw size.
    pub fn is_compressed(&self) -> bool {
        let name = self.file_name().to_ascii_lowercase();
        [".gz", ".zip", ".gzip", ".zst", ".bz2", ".lz4", ".snappy"]
            .iter()
            .any(|ext| name.ends_with(ext))
    }
}

impl fmt::Display for BlobUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.without_credentials())?;
        if self.has_secret {
            f.write_str("?<redacted>")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobUri({self})")
    }
}

/// Loopback hosts are the only ones where plain http is acceptable (the local stack, Azurite).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Removes the query string (SAS) and `;` credential suffix from any URL-ish string, for messages
/// that must mention a storage URL without leaking its credentials.
pub fn redact_url(raw: &str) -> String {
    match raw.find(['?', ';', '#']) {
        Some(at) => format!("{}?<redacted>", &raw[..at]),
        None => raw.to_owned(),
    }
}

/// Replaces the query string of every URL inside free text (an error message from a client
/// library, say) with `<redacted>`, so a SAS can't leak through an error we did not write.
pub fn scrub_secrets(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_uri_display_hides_sas() {
        let uri = BlobUri::parse("https://acct.blob.core.windows.net/c/a.csv?sv=2021&sig=SECRET")
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://acct.blob.core.windows.net/c/a.csv?<redacted>"
        );
        assert_eq!(
            format!("{uri:?}"),
            "BlobUri(https://acct.blob.core.windows.net/c/a.csv?<redacted>)"
        );
        assert!(uri.expose_with_credentials().ends_with("sig=SECRET"));
    }

    #[test]
    fn blob_uri_display_hides_managed_identity_suffix() {
        let uri =
            BlobUri::parse("https://acct.blob.core.windows.net/c/a.csv;managed_identity=system")
                .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://acct.blob.core.windows.net/c/a.csv?<redacted>"
        );
    }

    #[test]
    fn blob_uri_without_secret_prints_plainly() {
        let uri = BlobUri::parse("https://acct.blob.core.windows.net/c/dir/a.csv.gz").unwrap();
        assert_eq!(
            uri.to_string(),
            "https://acct.blob.core.windows.net/c/dir/a.csv.gz"
        );
        assert!(uri.is_compressed());
        assert_eq!(uri.file_name(), "a.csv.gz");
    }

    #[test]
    fn blob_uri_rejects_bad_input() {
        for bad in [
            "",
            "not a url",
            "ftp://acct/c/a.csv",
            "http://acct.blob.core.windows.net/c/a.csv",
            "https://acct.blob.core.windows.net/",
            "https://acct.blob.core.windows.net/container-only",
            " https://acct.blob.core.windows.net/c/a.csv",
            "https://user:pw@acct.blob.core.windows.net/c/a.csv",
        ] {
            assert!(BlobUri::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(BlobUri::parse("http://127.0.0.1:10000/devstoreaccount1/c/a.csv").is_ok());
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(DatabaseName::parse(" db ").unwrap().as_str(), "db");
        assert!(TableName::parse("   ").is_err());
        assert!(TableName::parse("a\nb").is_err());
    }

    #[test]
    fn source_id_parses_guid_and_derives_stably() {
        assert!(SourceId::parse("not-a-guid").is_err());
        let id = SourceId::parse("11111111-2222-4333-8444-555555555555").unwrap();
        assert_eq!(id.to_string(), "11111111-2222-4333-8444-555555555555");
        let ns = Uuid::nil();
        assert_eq!(
            SourceId::derived_from(&ns, "e1"),
            SourceId::derived_from(&ns, "e1")
        );
        assert_ne!(
            SourceId::derived_from(&ns, "e1"),
            SourceId::derived_from(&ns, "e2")
        );
    }

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
