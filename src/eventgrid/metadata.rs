//! Blob metadata: Get Blob Properties (`HEAD` on the blob URL, `x-ms-meta-*` headers) and the
//! metadata keys Azure Data Explorer's own Event Grid connection reads.
//!
//! Authentication: on Azure Storage endpoints (https) a bearer token of the app's managed identity;
//! on loopback hosts (Azurite, local runs only) the SAS from `INGEST_LOCAL_BLOB_SAS`, or nothing.
//! The token is never sent anywhere else, and neither the token nor the SAS is ever logged.

use crate::domain::{is_loopback_host, scrub_secrets};
use crate::properties::{DATA_FORMATS, PropertyBag, PropertyError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// Setting with an account or container SAS (`sv=…&sig=…`) used to read blob properties from a
/// loopback storage endpoint (Azurite). Ignored for every other host.
pub const LOCAL_BLOB_SAS_SETTING: &str = "INGEST_LOCAL_BLOB_SAS";

/// Storage REST version that accepts bearer tokens and that Azurite knows.
const STORAGE_VERSION: &str = "2021-08-06";
/// Event Grid waits 30 s for the whole invocation.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// DNS suffixes of Azure Storage endpoints (public and sovereign clouds, Azure DNS zone endpoints).
const STORAGE_SUFFIXES: &[&str] = &[
    ".core.windows.net",
    ".core.chinacloudapi.cn",
    ".core.usgovcloudapi.net",
    ".storage.azure.net",
];

/// What Get Blob Properties said about a blob.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlobProperties {
    /// `x-ms-meta-*` headers, keyed by the lower-cased name after the prefix.
    pub metadata: BTreeMap<String, String>,
    pub content_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("the blob no longer exists (Get Blob Properties answered 404)")]
    NotFound,
    #[error(
        "blob metadata is read only from Azure Storage endpoints (and loopback hosts in local runs), not from '{0}'"
    )]
    UntrustedHost(String),
    #[error(
        "Get Blob Properties was refused (HTTP {status}{code}); does the app's identity have Storage Blob Data Reader?"
    )]
    Refused { status: u16, code: String },
    #[error("Get Blob Properties failed: {0}")]
    Unavailable(String),
    #[error("no storage token for Get Blob Properties: {0}")]
    Token(String),
}

impl MetadataError {
    /// Redelivering the event cannot change the outcome.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MetadataError::NotFound | MetadataError::UntrustedHost(_)
        )
    }
}

/// How a Get Blob Properties request authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The app's managed identity (token for `https://storage.azure.com/.default`).
    Bearer,
    /// Local runs: `INGEST_LOCAL_BLOB_SAS` appended as the query string.
    LocalSas(String),
    /// Local runs without a SAS (a public container).
    Anonymous,
}

/// The authentication a blob URL gets, or why its metadata must not be read.
pub fn auth_for(url: &str, local_sas: Option<&str>) -> Result<Auth, MetadataError> {
    let parsed = Url::parse(url)
        .map_err(|_| MetadataError::UntrustedHost(crate::domain::redact_url(url)))?;
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if is_loopback_host(&host) {
        return Ok(match local_sas {
            Some(sas) => Auth::LocalSas(sas.to_owned()),
            None => Auth::Anonymous,
        });
    }
    if parsed.scheme() == "https" && is_storage_host(&host) {
        Ok(Auth::Bearer)
    } else {
        Err(MetadataError::UntrustedHost(host))
    }
}

fn is_storage_host(host: &str) -> bool {
    STORAGE_SUFFIXES.iter().any(|suffix| {
        host.strip_suffix(suffix)
            .and_then(|rest| rest.rsplit_once('.'))
            .is_some_and(|(account, service)| {
                !account.is_empty() && matches!(service, "blob" | "dfs")
            })
    })
}

/// ADLS Gen2 events (`FlushWithClose`) carry a `dfs` endpoint URL; Get Blob Properties and the
/// ingestion message use the same blob through the `blob` endpoint.
pub fn to_blob_endpoint(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return url.to_owned();
    };
    let Some(host) = parsed.host_str().map(str::to_ascii_lowercase) else {
        return url.to_owned();
    };
    if !is_storage_host(&host) {
        return url.to_owned();
    }
    let Some((account, rest)) = host.split_once(".dfs.") else {
        return url.to_owned();
    };
    let blob_host = format!("{account}.blob.{rest}");
    match parsed.set_host(Some(&blob_host)) {
        Ok(()) => parsed.to_string(),
        Err(_) => url.to_owned(),
    }
}

/// Get Blob Properties on `url` (a blob URL without credentials). `bearer` is the storage token
/// when `auth` is [`Auth::Bearer`].
pub async fn get_blob_properties(
    client: &reqwest::Client,
    url: &str,
    auth: &Auth,
    bearer: Option<&str>,
) -> Result<BlobProperties, MetadataError> {
    let request = match auth {
        Auth::Bearer => {
            let token =
                bearer.ok_or_else(|| MetadataError::Token("no token was obtained".to_owned()))?;
            client.head(url).bearer_auth(token)
        }
        Auth::LocalSas(sas) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            client.head(format!("{url}{separator}{sas}"))
        }
        Auth::Anonymous => client.head(url),
    };
    let response = request
        .header("x-ms-version", STORAGE_VERSION)
        .timeout(HEAD_TIMEOUT)
        .send()
        .await
        .map_err(|e| MetadataError::Unavailable(scrub_secrets(&e.without_url().to_string())))?;
    let status = response.status().as_u16();
    let headers = response.headers();
    match status {
        200..=299 => {}
        404 => return Err(MetadataError::NotFound),
        401 | 403 => {
            return Err(MetadataError::Refused {
                status,
                code: error_code(headers),
            });
        }
        _ => {
            return Err(MetadataError::Unavailable(format!(
                "HTTP {status}{}",
                error_code(headers)
            )));
        }
    }
    let metadata = headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-ms-meta-")?;
            Some((
                key.to_ascii_lowercase(),
                String::from_utf8_lossy(value.as_bytes()).trim().to_owned(),
            ))
        })
        .collect();
    let content_length = headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(BlobProperties {
        metadata,
        content_length,
    })
}

fn error_code(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(|c| format!(", {}", super::clip(c)))
        .unwrap_or_default()
}

/// What a blob's metadata changes about its ingestion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `kustoDatabase`.
    pub database: Option<String>,
    /// `kustoTable`.
    pub table: Option<String>,
    /// Ingestion properties from `kustoDataFormat`, `kustoIngestionMappingReference`,
    /// `kustoIgnoreFirstRecord`, `kustoExtentTags`, `kustoCreationTime`.
    pub properties: PropertyBag,
    /// `rawSizeBytes`.
    pub raw_size: Option<u64>,
    /// `hdi_isfolder=true`: an ADLS Gen2 directory.
    pub is_folder: bool,
}

/// Reads the metadata keys Azure Data Explorer's Event Grid connection reads, case-insensitively.
/// Empty values count as absent; a value Kusto would refuse is an error naming the metadata key.
pub fn overrides(metadata: &BTreeMap<String, String>) -> Result<Overrides, PropertyError> {
    let mut out = Overrides::default();
    for (key, value) in metadata {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let bad = |name: &str, message: &str| PropertyError {
            key: name.to_owned(),
            message: format!("'{}' {message}", super::clip(value)),
        };
        match key.as_str() {
            "kustodatabase" => out.database = Some(value.to_owned()),
            "kustotable" => out.table = Some(value.to_owned()),
            "kustodataformat" => {
                let format = value.to_ascii_lowercase();
                if !DATA_FORMATS.contains(&format.as_str()) {
                    return Err(bad("kustoDataFormat", "is not a Kusto data format"));
                }
                out.properties.set("format", Value::String(format));
            }
            "kustoingestionmappingreference" => {
                out.properties
                    .set("ingestionMappingReference", Value::String(value.to_owned()));
            }
            "kustoignorefirstrecord" => {
                let flag = parse_bool(value)
                    .ok_or_else(|| bad("kustoIgnoreFirstRecord", "must be true or false"))?;
                out.properties.set("ignoreFirstRecord", Value::Bool(flag));
            }
            "kustoextenttags" => out.properties.set("tags", Value::Array(parse_tags(value))),
            "kustocreationtime" => {
                if time::OffsetDateTime::parse(
                    value,
                    &time::format_description::well_known::Rfc3339,
                )
                .is_err()
                {
                    return Err(bad(
                        "kustoCreationTime",
                        "must be an ISO 8601 date-time such as 2024-01-31T12:00:00Z",
                    ));
                }
                out.properties
                    .set("creationTime", Value::String(value.to_owned()));
            }
            "rawsizebytes" => {
                out.raw_size = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| bad("rawSizeBytes", "must be a non-negative integer"))?,
                );
            }
            "hdi_isfolder" => out.is_folder = parse_bool(value).unwrap_or(false),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `kustoExtentTags`: a JSON array of strings (`["a","drop-by:b"]`), or a comma-separated list.
fn parse_tags(value: &str) -> Vec<Value> {
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(value)
        && items.iter().all(Value::is_string)
    {
        return items;
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Value::String(t.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use warp::Filter;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    #[test]
    fn native_connection_keys_case_insensitively() {
        let o = overrides(&meta(&[
            ("KustoDatabase", "db2"),
            ("kustotable", "T2"),
            ("kustoDataFormat", "JSON"),
            ("kustoIngestionMappingReference", "m2"),
            ("KUSTOIGNOREFIRSTRECORD", "True"),
            ("kustoExtentTags", "[\"a\",\"drop-by:b\"]"),
            ("kustoCreationTime", "2024-01-31T12:00:00Z"),
            ("rawSizeBytes", "4096"),
            ("other", "ignored"),
        ]))
        .unwrap();
        assert_eq!(o.database.as_deref(), Some("db2"));
        assert_eq!(o.table.as_deref(), Some("T2"));
        assert_eq!(o.raw_size, Some(4096));
        assert_eq!(o.properties.get("format"), Some(&json!("json")));
        assert_eq!(
            o.properties.get("ingestionMappingReference"),
            Some(&json!("m2"))
        );
        assert_eq!(o.properties.get("ignoreFirstRecord"), Some(&json!(true)));
        assert_eq!(o.properties.get("tags"), Some(&json!(["a", "drop-by:b"])));
        assert_eq!(
            o.properties.get("creationTime"),
            Some(&json!("2024-01-31T12:00:00Z"))
        );
        assert!(!o.is_folder);
    }

    #[test]
    fn tags_as_a_comma_list_and_empty_values() {
        let o = overrides(&meta(&[
            ("kustoExtentTags", "a, b ,,c"),
            ("kustoTable", " "),
        ]))
        .unwrap();
        assert_eq!(o.properties.get("tags"), Some(&json!(["a", "b", "c"])));
        assert_eq!(o.table, None);
        assert!(
            overrides(&meta(&[("hdi_isfolder", "true")]))
                .unwrap()
                .is_folder
        );
    }

    #[test]
    fn bad_values_name_the_metadata_key() {
        for (key, value) in [
            ("kustoDataFormat", "xlsx"),
            ("kustoIgnoreFirstRecord", "yes"),
            ("kustoCreationTime", "yesterday"),
            ("rawSizeBytes", "-1"),
            ("rawSizeBytes", "12kb"),
        ] {
            let e = overrides(&meta(&[(key, value)])).unwrap_err();
            assert_eq!(e.key, key);
        }
    }

    #[test]
    fn auth_depends_on_the_host() {
        assert_eq!(
            auth_for("https://acct.blob.core.windows.net/c/a.csv", None),
            Ok(Auth::Bearer)
        );
        assert_eq!(
            auth_for("https://acct.dfs.core.windows.net/c/a.csv", None),
            Ok(Auth::Bearer)
        );
        assert_eq!(
            auth_for("https://acct.z12.blob.storage.azure.net/c/a.csv", None),
            Ok(Auth::Bearer)
        );
        assert_eq!(
            auth_for("https://acct.blob.core.chinacloudapi.cn/c/a", None),
            Ok(Auth::Bearer)
        );
        assert_eq!(
            auth_for("http://127.0.0.1:10000/devstoreaccount1/c/a.csv", None),
            Ok(Auth::Anonymous)
        );
        assert_eq!(
            auth_for("http://localhost:10000/a/c/a.csv", Some("sv=1&sig=x")),
            Ok(Auth::LocalSas("sv=1&sig=x".into()))
        );
        for untrusted in [
            "http://acct.blob.core.windows.net/c/a.csv",
            "https://evil.example.com/c/a.csv",
            "https://blob.core.windows.net.evil.com/c/a.csv",
            "https://acct.queue.core.windows.net/c/a.csv",
            "https://core.windows.net/c/a.csv",
            "not a url",
        ] {
            assert!(
                matches!(
                    auth_for(untrusted, None),
                    Err(MetadataError::UntrustedHost(_))
                ),
                "{untrusted}"
            );
        }
    }

    #[test]
    fn dfs_urls_become_blob_urls() {
        assert_eq!(
            to_blob_endpoint("https://acct.dfs.core.windows.net/fs/dir/a%20b.csv"),
            "https://acct.blob.core.windows.net/fs/dir/a%20b.csv"
        );
        for same in [
            "https://acct.blob.core.windows.net/fs/a.csv",
            "http://127.0.0.1:10000/devstoreaccount1/c/a.csv",
            "https://acct.dfs.example.com/fs/a.csv",
        ] {
            assert_eq!(to_blob_endpoint(same), same);
        }
    }

    /// A stand-in for Get Blob Properties that records what it was sent.
    async fn storage(
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
    ) -> (
        SocketAddr,
        Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let route = warp::head()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::header::optional::<String>("x-ms-version"))
            .map(
                move |path: warp::path::FullPath,
                      query: String,
                      auth: Option<String>,
                      version: Option<String>| {
                    record.lock().unwrap().push((
                        format!("{}?{query}", path.as_str()),
                        auth,
                        version,
                    ));
                    let mut reply = warp::http::Response::builder().status(status);
                    for (k, v) in &headers {
                        reply = reply.header(*k, *v);
                    }
                    reply.body(String::new()).unwrap()
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (addr, seen)
    }

    #[tokio::test]
    async fn reads_metadata_headers_with_the_local_sas() {
        let (addr, seen) = storage(
            200,
            vec![
                ("x-ms-meta-KustoTable", "T2"),
                ("x-ms-meta-rawSizeBytes", "10"),
                ("content-length", "3"),
            ],
        )
        .await;
        let url = format!("http://{addr}/devstoreaccount1/c/a.csv");
        let props = get_blob_properties(
            &reqwest::Client::new(),
            &url,
            &Auth::LocalSas("sv=1&sig=abc".into()),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            props.metadata.get("kustotable").map(String::as_str),
            Some("T2")
        );
        assert_eq!(
            props.metadata.get("rawsizebytes").map(String::as_str),
            Some("10")
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, "/devstoreaccount1/c/a.csv?sv=1&sig=abc");
        assert_eq!(seen[0].1, None);
        assert_eq!(seen[0].2.as_deref(), Some(STORAGE_VERSION));
    }

    #[tokio::test]
    async fn sends_the_bearer_token() {
        let (addr, seen) = storage(200, vec![]).await;
        let url = format!("http://{addr}/a/c/a.csv");
        get_blob_properties(&reqwest::Client::new(), &url, &Auth::Bearer, Some("tok"))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap()[0].1.as_deref(), Some("Bearer tok"));
    }

    #[tokio::test]
    async fn maps_failures() {
        let (addr, _) = storage(404, vec![("x-ms-error-code", "BlobNotFound")]).await;
        let url = format!("http://{addr}/a/c/a.csv");
        assert_eq!(
            get_blob_properties(&reqwest::Client::new(), &url, &Auth::Anonymous, None).await,
            Err(MetadataError::NotFound)
        );
        let (addr, _) = storage(
            403,
            vec![("x-ms-error-code", "AuthorizationPermissionMismatch")],
        )
        .await;
        let url = format!("http://{addr}/a/c/a.csv");
        let e = get_blob_properties(&reqwest::Client::new(), &url, &Auth::Anonymous, None)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            MetadataError::Refused {
                status: 403,
                code: ", AuthorizationPermissionMismatch".into()
            }
        );
        assert!(!e.is_permanent());
        let (addr, _) = storage(503, vec![]).await;
        let url = format!("http://{addr}/a/c/a.csv");
        let e = get_blob_properties(&reqwest::Client::new(), &url, &Auth::Anonymous, None)
            .await
            .unwrap_err();
        assert_eq!(e, MetadataError::Unavailable("HTTP 503".into()));
        // Nobody listening: unavailable, and the SAS does not appear in the message.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/a/c/a.csv");
        let e = get_blob_properties(
            &reqwest::Client::new(),
            &url,
            &Auth::LocalSas("sv=1&sig=SECRET".into()),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, MetadataError::Unavailable(_)));
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
