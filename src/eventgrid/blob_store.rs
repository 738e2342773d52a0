//! Azure Storage blob endpoints for the trigger: which hosts are Azure Storage, the blob endpoint
//! of an ADLS Gen2 (`dfs`) URL, and Get Blob Properties (metadata and size) through
//! azure_storage_blob.
//!
//! Authentication: on Azure Storage endpoints (https) the app's managed identity (the SDK's
//! bearer-token policy); on loopback hosts the local access of [`crate::local`]. The token is never
//! sent anywhere else, and neither the token nor a SAS is ever logged.

use crate::domain::{BlobUri, clip, redact_url, scrub_secrets};
use crate::local::{LocalBlobAccess, is_loopback_host};
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{Transport, Url};
use azure_storage_blob::models::BlobClientGetPropertiesResultHeaders;
use azure_storage_blob::{BlobClient, BlobClientOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) struct BlobProperties {
    /// `x-ms-meta-*` headers, keyed by the lower-cased name after the prefix.
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) content_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MetadataError {
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
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            MetadataError::NotFound | MetadataError::UntrustedHost(_)
        )
    }
}

/// Where the trigger reads blob properties from; [`BlobStore`] in production.
pub(crate) trait BlobMetadata: Sync {
    fn blob_properties(
        &self,
        blob: &BlobUri,
    ) -> impl Future<Output = Result<BlobProperties, MetadataError>> + Send;
}

/// Get Blob Properties with the app's identity (or the local access on loopback hosts).
pub(crate) struct BlobStore {
    credential: Arc<dyn TokenCredential>,
    transport: Transport,
    local: LocalBlobAccess,
}

impl BlobStore {
    pub(crate) fn new(
        credential: Arc<dyn TokenCredential>,
        transport: Transport,
        local: LocalBlobAccess,
    ) -> Self {
        Self {
            credential,
            transport,
            local,
        }
    }
}

impl BlobMetadata for BlobStore {
    async fn blob_properties(&self, blob: &BlobUri) -> Result<BlobProperties, MetadataError> {
        let plain = blob.without_credentials();
        let (url, credential) = match auth_for(blob, &self.local)? {
            Auth::Bearer => (plain.to_owned(), Some(self.credential.clone())),
            Auth::LocalSas(sas) => (format!("{plain}?{sas}"), None),
            Auth::Anonymous => (plain.to_owned(), None),
        };
        let url = Url::parse(&url).map_err(|_| MetadataError::UntrustedHost(redact_url(plain)))?;
        get_blob_properties(url, credential, &self.transport).await
    }
}

/// How a Get Blob Properties request authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// The app's managed identity (token for `https://storage.azure.com/.default`).
    Bearer,
    /// Local runs: `INGEST_LOCAL_BLOB_SAS` appended as the query string.
    LocalSas(String),
    /// Local runs without a SAS (a public container).
    Anonymous,
}

/// The authentication a blob gets, or why its metadata must not be read.
pub(crate) fn auth_for(blob: &BlobUri, local: &LocalBlobAccess) -> Result<Auth, MetadataError> {
    let host = blob.host();
    if is_loopback_host(host) {
        return Ok(match local.sas() {
            Some(sas) => Auth::LocalSas(sas.to_owned()),
            None => Auth::Anonymous,
        });
    }
    if blob.is_https() && is_storage_host(host) {
        Ok(Auth::Bearer)
    } else {
        Err(MetadataError::UntrustedHost(host.to_owned()))
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
/// ingestion message use the same blob through the `blob` endpoint. `None` when `url` is not a
/// `dfs` URL of Azure Storage.
pub(crate) fn to_blob_endpoint(url: &Url) -> Option<Url> {
    let host = url.host_str()?.to_ascii_lowercase();
    if !is_storage_host(&host) {
        return None;
    }
    let (account, rest) = host.split_once(".dfs.")?;
    let mut blob = url.clone();
    blob.set_host(Some(&format!("{account}.blob.{rest}")))
        .ok()?;
    Some(blob)
}

/// Get Blob Properties on `url`, with the bearer policy when `credential` is given. No retries:
/// Event Grid redelivers.
async fn get_blob_properties(
    url: Url,
    credential: Option<Arc<dyn TokenCredential>>,
    transport: &Transport,
) -> Result<BlobProperties, MetadataError> {
    let options = BlobClientOptions {
        client_options: crate::transport::sdk_options(transport),
        ..BlobClientOptions::default()
    };
    let client = BlobClient::new(url, credential, Some(options))
        .map_err(|e| MetadataError::Unavailable(scrub_secrets(&e.to_string())))?;
    let response = tokio::time::timeout(HEAD_TIMEOUT, client.get_properties(None))
        .await
        .map_err(|_| {
            MetadataError::Unavailable(format!("no answer within {} s", HEAD_TIMEOUT.as_secs()))
        })?
        .map_err(|e| classify(&e))?;
    let metadata = response
        .metadata()
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(BlobProperties {
        metadata,
        content_length: response.content_length().ok().flatten(),
    })
}

fn classify(error: &azure_core::Error) -> MetadataError {
    match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code
                .as_deref()
                .map(|c| format!(", {}", clip(c)))
                .unwrap_or_default();
            match status {
                404 => MetadataError::NotFound,
                401 | 403 => MetadataError::Refused { status, code },
                _ => MetadataError::Unavailable(format!("HTTP {status}{code}")),
            }
        }
        ErrorKind::Credential => MetadataError::Token(scrub_secrets(&error.to_string())),
        _ => MetadataError::Unavailable(scrub_secrets(&error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use warp::Filter;

    /// The checks of `auth_for`, from a URL as text (a URL that is not a blob URI never gets that far).
    fn auth_for(url: &str, local_sas: Option<&str>) -> Result<Auth, MetadataError> {
        let blob = BlobUri::parse(url).map_err(|_| MetadataError::UntrustedHost(url.into()))?;
        super::auth_for(&blob, &LocalBlobAccess::new(local_sas))
    }

    fn to_blob_endpoint(url: &str) -> String {
        super::to_blob_endpoint(&Url::parse(url).unwrap())
            .map(String::from)
            .unwrap_or_else(|| url.to_owned())
    }

    fn transport() -> Transport {
        crate::transport::azure_transport(&crate::transport::http_client().unwrap())
    }

    /// Get Blob Properties as the trigger does it for each kind of authentication.
    async fn get_blob_properties(
        _: &reqwest::Client,
        url: &str,
        auth: &Auth,
        bearer: Option<&str>,
    ) -> Result<BlobProperties, MetadataError> {
        let (url, credential) = match auth {
            Auth::LocalSas(sas) => (format!("{url}?{sas}"), None),
            Auth::Anonymous => (url.to_owned(), None),
            Auth::Bearer => {
                assert!(bearer.is_some());
                let identity =
                    crate::identity::Identity::managed(None, transport()).expect("credential");
                (url.to_owned(), Some(identity.credential()))
            }
        };
        super::get_blob_properties(Url::parse(&url).unwrap(), credential, &transport()).await
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
        assert_eq!(
            seen[0].2.as_deref(),
            Some(BlobClientOptions::default().version.as_str())
        );
    }

    #[tokio::test]
    async fn bearer_tokens_are_never_sent_over_plain_http() {
        let (addr, seen) = storage(200, vec![]).await;
        let url = format!("http://{addr}/a/c/a.csv");
        let e = get_blob_properties(&reqwest::Client::new(), &url, &Auth::Bearer, Some("tok"))
            .await
            .unwrap_err();
        assert!(matches!(e, MetadataError::Unavailable(_)), "{e}");
        assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
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
