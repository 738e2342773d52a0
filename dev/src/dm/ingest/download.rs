//! Reading the blob a message points at (reference §6.2):
//! * `BlobPath` with a SAS: fetched as-is;
//! * `BlobPath;managed_identity=system` (or `=<object id>`): the cluster would use its managed
//!   identity; the emulator's stand-in is its own key for the Azurite account named in the
//!   path (a blob outside this Azurite fails `Download_AccountNotFound`).
//!
//! Storage answers map to DOC `error-codes.md`: 404 `Download_SourceNotFound`, 403
//! `Download_Forbidden`, 400 `Download_BadRequest` (permanent); 429/5xx and connection
//! failures `Download_UnknownError` (transient).

use std::time::Duration;

use super::outcome::Failure;
use crate::sas::{self, SasWindow};
use crate::storage::AzuriteHandle;

/// `x-ms-version` of the worker's blob calls.
const STORAGE_VERSION: &str = "2021-08-06";

/// A resolved `BlobPath`.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// URL with the credentials to read (and delete) the blob.
    request_url: String,
    /// URL without SAS or `;` suffix (`IngestionSourcePath`).
    pub display: String,
}

/// `BlobPath` without query or `;…` suffix, safe to report.
pub(crate) fn strip_secrets(blob_path: &str) -> String {
    blob_path
        .split(['?', ';'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Works out how to read `blob_path`.
pub(crate) fn resolve(storage: &AzuriteHandle, blob_path: &str) -> Result<Source, Failure> {
    let blob_path = blob_path.trim();
    let display = strip_secrets(blob_path);
    let Some((url_part, suffix)) = blob_path.split_once(';') else {
        return Ok(Source {
            request_url: blob_path.to_string(),
            display,
        });
    };
    let Some(identity) = suffix
        .split_once('=')
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("managed_identity"))
        .map(|(_, v)| v.trim())
    else {
        return Err(Failure::permanent(
            "Download_Forbidden",
            "kusto-dev reads blobs through a SAS or `;managed_identity=…` only (not `;impersonate`, `;token=` or keys)",
        ));
    };
    if identity.is_empty() {
        return Err(Failure::permanent(
            "BadRequest_InvalidManagedIdentity",
            "`;managed_identity=` needs `system` or an object id",
        ));
    }
    let base = url_part.split('?').next().unwrap_or_default();
    let not_found = || {
        Failure::permanent(
            "Download_AccountNotFound",
            format!(
                "{display} is not a blob of this emulator's Azurite, so its managed identity stand-in cannot read it"
            ),
        )
    };
    let url = url::Url::parse(base).map_err(|_| not_found())?;
    let account = url
        .path_segments()
        .and_then(|mut s| s.next())
        .unwrap_or_default()
        .to_string();
    let key = storage.account_key(&account).map_err(|_| not_found())?;
    let origin = format!(
        "{}://{}:{}/{account}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    if origin != storage.blob_endpoint(&account) {
        return Err(not_found());
    }
    let q = sas::account_sas(
        &account,
        key,
        "b",
        "o",
        "rd",
        SasWindow::from_now(Duration::from_secs(3600)),
    );
    Ok(Source {
        request_url: format!("{base}?{q}"),
        display,
    })
}

fn storage_failure(what: &str, status: u16, code: &str, display: &str) -> Failure {
    let details = format!("{what} {display}: HTTP {status} {code}");
    match status {
        404 => Failure::permanent(
            "Download_SourceNotFound",
            format!("Failed to download source from Azure Storage. Source not found. ({details})"),
        ),
        403 => Failure::permanent(
            "Download_Forbidden",
            format!("Failed to download source from Azure storage. Access forbidden. ({details})"),
        ),
        400 => Failure::permanent("Download_BadRequest", details),
        412 => Failure::permanent("Download_AccessConditionNotSatisfied", details),
        429 | 500..=599 => Failure::transient(
            "Download_UnknownError",
            format!(
                "Failed to download source from Azure storage (throttled or unavailable). ({details})"
            ),
        ),
        _ => Failure::permanent("Download_NotTransient", details),
    }
}

/// Get Blob.
pub(crate) async fn fetch(client: &reqwest::Client, source: &Source) -> Result<Vec<u8>, Failure> {
    let rsp = client
        .get(&source.request_url)
        .header("x-ms-version", STORAGE_VERSION)
        .send()
        .await
        .map_err(|e| {
            Failure::transient(
                "Download_UnknownError",
                format!("downloading {}: {e}", source.display),
            )
        })?;
    let status = rsp.status().as_u16();
    let code = error_code(&rsp);
    if status != 200 {
        return Err(storage_failure(
            "downloading",
            status,
            &code,
            &source.display,
        ));
    }
    rsp.bytes().await.map(|b| b.to_vec()).map_err(|e| {
        Failure::transient(
            "Download_UnknownError",
            format!("reading {}: {e}", source.display),
        )
    })
}

/// Delete Blob (after a successful ingestion with `RetainBlobOnSuccess: false`).
pub(crate) async fn delete(client: &reqwest::Client, source: &Source) -> Result<(), String> {
    let rsp = client
        .delete(&source.request_url)
        .header("x-ms-version", STORAGE_VERSION)
        .send()
        .await
        .map_err(|e| format!("deleting {}: {e}", source.display))?;
    let status = rsp.status().as_u16();
    if status == 202 {
        Ok(())
    } else {
        Err(format!(
            "deleting {}: HTTP {status} {}",
            source.display,
            error_code(&rsp)
        ))
    }
}

fn error_code(rsp: &reqwest::Response) -> String {
    rsp.headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stripped() {
        assert_eq!(
            strip_secrets("http://h/a/c/b.csv?sv=1&sig=x"),
            "http://h/a/c/b.csv"
        );
        assert_eq!(
            strip_secrets("https://a.blob.core.windows.net/c/b;managed_identity=system"),
            "https://a.blob.core.windows.net/c/b"
        );
    }
}
