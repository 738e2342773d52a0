//! Data Management endpoints, and the allowlist the app's DM token may be sent to.

use std::collections::BTreeSet;
use std::fmt;
use url::Url;

/// A Data Management endpoint we are willing to send the app's token to: `scheme://host[:port]`,
/// lower-cased, https unless the host is loopback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DmEndpoint(String);

impl DmEndpoint {
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw.trim()).map_err(|e| format!("'{raw}' is not a valid URL: {e}"))?;
        if url.host_str().unwrap_or_default().is_empty() {
            return Err(format!("'{raw}' has no host"));
        }
        if !crate::local::scheme_allowed(&url) {
            return Err(format!(
                "'{raw}' must use https (http only for loopback hosts)"
            ));
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!(
                "'{raw}' must be a plain endpoint without query, fragment or user info"
            ));
        }
        if url.path() != "/" && !url.path().is_empty() {
            return Err(format!(
                "'{raw}' must not have a path (expected https://ingest-<cluster>.<region>.kusto.windows.net)"
            ));
        }
        Ok(Self(
            url.origin().ascii_serialization().to_ascii_lowercase(),
        ))
    }

    /// The management endpoint the DM commands are posted to.
    pub(crate) fn mgmt_url(&self) -> String {
        format!("{}/v1/rest/mgmt", self.0)
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DmEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The requested DM is not on the allowlist; holds the requested value, redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dataManagementUri '{0}' is not an allowed Data Management endpoint")]
pub(crate) struct DmNotAllowed(pub(crate) String);

/// Every DM the app's token may be sent to, the default included.
#[derive(Debug, Clone)]
pub(crate) struct AllowedDms {
    default: DmEndpoint,
    all: BTreeSet<DmEndpoint>,
}

impl AllowedDms {
    pub(crate) fn new(default: DmEndpoint, others: impl IntoIterator<Item = DmEndpoint>) -> Self {
        let mut all: BTreeSet<DmEndpoint> = others.into_iter().collect();
        all.insert(default.clone());
        Self { default, all }
    }

    /// The DM used when a request or event names none.
    pub(crate) fn default_dm(&self) -> &DmEndpoint {
        &self.default
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &DmEndpoint> {
        self.all.iter()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// The DM a request named (the default when none), if it is allowlisted.
    pub(crate) fn resolve(&self, requested: Option<&str>) -> Result<DmEndpoint, DmNotAllowed> {
        let Some(raw) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.default.clone());
        };
        let not_allowed = || DmNotAllowed(super::clip(&super::redact_url(raw)));
        let dm = DmEndpoint::parse(raw).map_err(|_| not_allowed())?;
        if self.all.contains(&dm) {
            Ok(dm)
        } else {
            Err(not_allowed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_endpoint_is_normalised_and_must_be_https() {
        let dm = DmEndpoint::parse("https://Ingest-Cluster.westeurope.kusto.windows.net/").unwrap();
        assert_eq!(
            dm.as_str(),
            "https://ingest-cluster.westeurope.kusto.windows.net"
        );
        assert!(DmEndpoint::parse("http://ingest-cluster.kusto.windows.net").is_err());
        assert!(DmEndpoint::parse("http://127.0.0.1:8080").is_ok());
        assert!(DmEndpoint::parse("https://x.kusto.windows.net/v1/rest/mgmt").is_err());
        assert!(DmEndpoint::parse("https://x.kusto.windows.net?a=b").is_err());
    }

    #[test]
    fn resolve_checks_the_allowlist() {
        let a = DmEndpoint::parse("https://ingest-a.kusto.windows.net").unwrap();
        let b = DmEndpoint::parse("https://ingest-b.kusto.windows.net").unwrap();
        let allowed = AllowedDms::new(a.clone(), [b.clone()]);
        assert_eq!(allowed.resolve(None).unwrap(), a);
        assert_eq!(allowed.resolve(Some(" ")).unwrap(), a);
        assert_eq!(
            allowed
                .resolve(Some("https://INGEST-B.kusto.windows.net/"))
                .unwrap(),
            b
        );
        assert_eq!(
            allowed
                .resolve(Some("https://evil.example.com/?sig=x"))
                .unwrap_err(),
            DmNotAllowed("https://evil.example.com/?<redacted>".into())
        );
    }
}
