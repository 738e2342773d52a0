//! Everything the handler does differently for loopback hosts, in one place.
//!
//! Local runs (the local stack, the tests) have Azurite and the DM emulator on 127.0.0.1 over plain
//! http and no managed identity. Three rules make that work, and nothing else depends on where the
//! handler runs:
//! - plain `http` is accepted for a URL whose host is loopback (a DM endpoint from the settings, a
//!   queue the DM hands out, a blob URI a caller names);
//! - blob metadata on a loopback host is read with `INGEST_LOCAL_BLOB_SAS`, or anonymously, instead
//!   of with the app's storage token.
//!
//! Why this is safe in production: a loopback address only ever reaches the machine the handler
//! runs on. No bearer token or SAS of the app is ever sent to a loopback host (the DM token goes only
//! to allowlisted DM endpoints, which an operator configures; the storage token only to Azure Storage
//! hosts over https). A caller naming an http loopback blob makes the *cluster* read its own loopback,
//! which holds nothing; the metadata read is a tokenless HEAD to the handler's own machine.

use url::Url;

/// `localhost`, `127.0.0.0/8` and `::1`, with or without brackets.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Whether `url`'s scheme is acceptable for a service we talk to or hand on: https anywhere, plain
/// http only on loopback.
pub(crate) fn scheme_allowed(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(is_loopback_host),
        _ => false,
    }
}

/// How Get Blob Properties authenticates for a loopback blob (Azurite): the SAS of the
/// `INGEST_LOCAL_BLOB_SAS` setting appended to the URL, or nothing for a public container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LocalBlobAccess {
    sas: Option<String>,
}

impl LocalBlobAccess {
    /// `sas` is a query string (`sv=…&sig=…`), with or without its leading `?`.
    pub(crate) fn new(sas: Option<&str>) -> Self {
        Self {
            sas: sas
                .map(|s| s.trim().trim_start_matches('?').to_owned())
                .filter(|s| !s.is_empty()),
        }
    }

    pub(crate) fn sas(&self) -> Option<&str> {
        self.sas.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.evil.com", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn http_only_on_loopback() {
        let ok = |s: &str| scheme_allowed(&Url::parse(s).unwrap());
        assert!(ok("https://a.example.com/x"));
        assert!(ok("http://127.0.0.1:10000/x"));
        assert!(!ok("http://a.example.com/x"));
        assert!(!ok("ftp://127.0.0.1/x"));
    }

    #[test]
    fn local_sas_is_normalised() {
        assert_eq!(
            LocalBlobAccess::new(Some("?sv=1&sig=x")).sas(),
            Some("sv=1&sig=x")
        );
        assert_eq!(LocalBlobAccess::new(Some(" ")).sas(), None);
        assert_eq!(LocalBlobAccess::new(None).sas(), None);
    }
}
