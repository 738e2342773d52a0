//! Shared Access Signatures, signed locally with HMAC-SHA256 exactly as Azure Storage
//! (and Azurite) verify them. Verified against Azurite 3.37.0: a wrong signature gets
//! `403 AuthenticationFailed`.
//!
//! All functions return the query string (no leading `?`), URL-encoded.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use time::macros::format_description;

/// Service version used in every SAS (`sv`). The version the real DM hands out
/// (reference §2.3, trace in Azure/azure-kusto-node#218).
pub const SAS_VERSION: &str = "2021-08-06";

/// Validity window of a SAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SasWindow {
    pub start: OffsetDateTime,
    pub expiry: OffsetDateTime,
}

impl SasWindow {
    /// Starts 5 minutes in the past (tolerates clock skew, like the real DM does)
    /// and expires `lifetime` from now.
    pub fn from_now(lifetime: std::time::Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        SasWindow {
            start: now - time::Duration::minutes(5),
            expiry: now + lifetime,
        }
    }
}

/// Formats a SAS time (`2024-05-01T12:48:35Z`, no fraction).
pub fn format_time(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        // Formatting a UTC date with a fixed format cannot fail for years 0..9999.
        .unwrap_or_default()
}

/// HMAC-SHA256 of `string_to_sign` with the base64 account key, base64-encoded.
/// An undecodable key signs with its raw bytes, which simply yields a wrong signature.
pub fn sign(account_key_b64: &str, string_to_sign: &str) -> String {
    let key = B64
        .decode(account_key_b64)
        .unwrap_or_else(|_| account_key_b64.as_bytes().to_vec());
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

fn encode(pairs: &[(&str, &str)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            ser.append_pair(k, v);
        }
    }
    ser.finish()
}

/// Queue service SAS (`sp` e.g. `a`, `raup`), canonical resource `/queue/<account>/<queue>`.
pub fn queue_sas(account: &str, key: &str, queue: &str, permissions: &str, w: SasWindow) -> String {
    let (st, se) = (format_time(w.start), format_time(w.expiry));
    let to_sign = [
        permissions,
        &st,
        &se,
        &format!("/queue/{account}/{queue}"),
        "", // signed identifier
        "", // signed IP
        "", // signed protocol
        SAS_VERSION,
    ]
    .join("\n");
    let sig = sign(key, &to_sign);
    encode(&[
        ("sv", SAS_VERSION),
        ("st", &st),
        ("se", &se),
        ("sp", permissions),
        ("sig", &sig),
    ])
}

/// Blob service SAS for a container (`blob == None`, `sr=c`) or one blob (`sr=b`).
/// String-to-sign layout of versions >= 2020-12-06.
pub fn blob_sas(
    account: &str,
    key: &str,
    container: &str,
    blob: Option<&str>,
    permissions: &str,
    w: SasWindow,
) -> String {
    let (st, se) = (format_time(w.start), format_time(w.expiry));
    let (resource, sr) = match blob {
        Some(b) => (format!("/blob/{account}/{container}/{b}"), "b"),
        None => (format!("/blob/{account}/{container}"), "c"),
    };
    let to_sign = [
        permissions,
        &st,
        &se,
        &resource,
        "", // signed identifier
        "", // signed IP
        "", // signed protocol
        SAS_VERSION,
        sr,
        "", // snapshot time
        "", // encryption scope
        "", // rscc
        "", // rscd
        "", // rsce
        "", // rscl
        "", // rsct
    ]
    .join("\n");
    let sig = sign(key, &to_sign);
    encode(&[
        ("sv", SAS_VERSION),
        ("st", &st),
        ("se", &se),
        ("sr", sr),
        ("sp", permissions),
        ("sig", &sig),
    ])
}

/// Table service SAS (`tn=<table>`), canonical resource `/table/<account>/<table lowercase>`.
pub fn table_sas(account: &str, key: &str, table: &str, permissions: &str, w: SasWindow) -> String {
    let (st, se) = (format_time(w.start), format_time(w.expiry));
    let to_sign = [
        permissions,
        &st,
        &se,
        &format!("/table/{account}/{}", table.to_ascii_lowercase()),
        "", // signed identifier
        "", // signed IP
        "", // signed protocol
        SAS_VERSION,
        "", // start partition key
        "", // start row key
        "", // end partition key
        "", // end row key
    ]
    .join("\n");
    let sig = sign(key, &to_sign);
    encode(&[
        ("sv", SAS_VERSION),
        ("tn", table),
        ("st", &st),
        ("se", &se),
        ("sp", permissions),
        ("sig", &sig),
    ])
}

/// Account SAS (`ss` services e.g. `bqt`, `srt` resource types e.g. `sco`).
/// Used by the helpers for management calls so no SharedKey canonicalization is needed.
pub fn account_sas(
    account: &str,
    key: &str,
    services: &str,
    resource_types: &str,
    permissions: &str,
    w: SasWindow,
) -> String {
    let (st, se) = (format_time(w.start), format_time(w.expiry));
    let to_sign = [
        account,
        permissions,
        services,
        resource_types,
        &st,
        &se,
        "", // signed IP
        "", // signed protocol
        SAS_VERSION,
        "", // encryption scope (versions >= 2020-12-06)
        "", // trailing newline required by the format
    ]
    .join("\n");
    let sig = sign(key, &to_sign);
    encode(&[
        ("sv", SAS_VERSION),
        ("ss", services),
        ("srt", resource_types),
        ("st", &st),
        ("se", &se),
        ("sp", permissions),
        ("sig", &sig),
    ])
}

/// Replaces the `sig` of a SAS query with a well-formed but wrong signature.
pub fn tamper_signature(sas_query: &str) -> String {
    let bogus = sign("AAAA", "kusto-dev: deliberately wrong signature");
    url::form_urlencoded::parse(sas_query.as_bytes())
        .fold(
            url::form_urlencoded::Serializer::new(String::new()),
            |mut ser, (k, v)| {
                if k == "sig" {
                    ser.append_pair("sig", &bogus);
                } else {
                    ser.append_pair(&k, &v);
                }
                ser
            },
        )
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format_has_no_fraction() {
        let t = time::macros::datetime!(2022-11-01 07:39:51.123 UTC);
        assert_eq!(format_time(t), "2022-11-01T07:39:51Z");
    }

    #[test]
    fn queue_sas_has_expected_parameters() {
        let w = SasWindow::from_now(std::time::Duration::from_secs(60));
        let q = queue_sas("acct", "a2V5", "q", "a", w);
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["sv", "st", "se", "sp", "sig"]);
        assert!(q.contains("%3A"), "times must be URL-encoded: {q}");
        let tampered = tamper_signature(&q);
        assert_ne!(tampered, q);
        assert_eq!(tampered.split('&').count(), 5);
    }
}
