//! The URI of a blob to ingest.

use super::{DomainError, err};
use std::fmt;
use url::Url;

/// Longest blob URI we accept; Azure caps blob names at 1024 characters and a SAS adds a few hundred.
const MAX_BLOB_URI: usize = 8 * 1024;

/// The URI of a blob to ingest, exactly as the DM must receive it (SAS query or `;managed_identity=…`
/// suffix included). `Display` and `Debug` print it without those secrets, so a `BlobUri` can go into
/// logs and responses as is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BlobUri {
    full: String,
    /// Byte length of the part before the query string or `;` credential suffix.
    public_len: usize,
    has_secret: bool,
    /// Lower-cased host, and whether the scheme is https: what decides how the blob may be read.
    host: String,
    https: bool,
}

impl BlobUri {
    pub(crate) fn parse(raw: &str) -> Result<Self, DomainError> {
        check_text(raw)?;
        let url = Url::parse(raw).map_err(|e| err(format!("blob URI is not a valid URL: {e}")))?;
        Self::from_parts(raw.to_owned(), &url)
    }

    /// A blob URI from a URL parsed already (an event's `data.url`): `raw` is the text the DM gets,
    /// `url` its parse.
    pub(crate) fn from_parsed(raw: String, url: &Url) -> Result<Self, DomainError> {
        check_text(&raw)?;
        Self::from_parts(raw, url)
    }

    fn from_parts(full: String, url: &Url) -> Result<Self, DomainError> {
        // Kusto's storage connection strings put credentials after ';' (`;managed_identity=system`).
        let secret_at = full.find(['?', ';', '#']).unwrap_or(full.len());
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("blob URI must name a host"))?;
        if !crate::local::scheme_allowed(url) {
            return Err(match url.scheme() {
                "http" => err("blob URI must use https (http is accepted only for loopback hosts)"),
                other => err(format!(
                    "blob URI scheme '{other}' is not supported; use https"
                )),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("blob URI must not carry user info"));
        }
        let path = url.path().trim_start_matches('/');
        if path.is_empty() || !path.contains('/') {
            return Err(err("blob URI must name a container and a blob"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            https: url.scheme() == "https",
            has_secret: secret_at < full.len(),
            public_len: secret_at,
            full,
        })
    }

    /// The same blob with a Kusto credential suffix (`;managed_identity=system`) in place of any
    /// credentials it had, so the cluster reads it with that identity.
    pub(crate) fn with_credential_suffix(&self, suffix: &str) -> Self {
        let mut full = String::with_capacity(self.public_len + suffix.len());
        full.push_str(self.without_credentials());
        full.push_str(suffix);
        Self {
            full,
            public_len: self.public_len,
            has_secret: !suffix.is_empty(),
            host: self.host.clone(),
            https: self.https,
        }
    }

    /// The URI with its credentials, for the ingestion message only.
    pub(crate) fn expose_with_credentials(&self) -> &str {
        &self.full
    }

    /// The URI without query string or credential suffix.
    pub(crate) fn without_credentials(&self) -> &str {
        &self.full[..self.public_len]
    }

    /// `host[:port]/path`: the URI without scheme and credentials.
    pub(crate) fn location(&self) -> &str {
        let plain = self.without_credentials();
        plain.split_once("://").map_or(plain, |(_, rest)| rest)
    }

    /// Whether the URI carries a Kusto `;` credential suffix (`;managed_identity=…`), which the
    /// cluster resolves with its own identity.
    pub(crate) fn has_credential_suffix(&self) -> bool {
        self.full[self.public_len..].starts_with(';')
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// The last path segment, for compression and format inference.
    pub(crate) fn file_name(&self) -> &str {
        self.without_credentials()
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }

    /// True when the blob name says the content is compressed, so its stored size is not the raw size.
    pub(crate) fn is_compressed(&self) -> bool {
        let name = self.file_name().to_ascii_lowercase();
        [".gz", ".zip", ".gzip", ".zst", ".bz2", ".lz4", ".snappy"]
            .iter()
            .any(|ext| name.ends_with(ext))
    }
}

fn check_text(raw: &str) -> Result<(), DomainError> {
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
    Ok(())
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
    fn credential_suffix_replaces_the_sas() {
        let uri = BlobUri::parse("https://acct.blob.core.windows.net/c/a.csv?sig=S").unwrap();
        let with = uri.with_credential_suffix(";managed_identity=system");
        assert_eq!(
            with.expose_with_credentials(),
            "https://acct.blob.core.windows.net/c/a.csv;managed_identity=system"
        );
        assert_eq!(
            with,
            BlobUri::parse("https://acct.blob.core.windows.net/c/a.csv;managed_identity=system")
                .unwrap()
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
        assert_eq!(uri.host(), "acct.blob.core.windows.net");
        assert!(uri.is_https());
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
}
