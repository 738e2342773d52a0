//! Settings, read once at start-up from app settings (environment variables). A bad value stops
//! start-up with a message naming the setting.

use crate::domain::is_loopback_host;
use crate::eventgrid::routing::RouteTable;
use crate::properties::PropertyBag;
use std::collections::BTreeSet;
use std::fmt;
use url::Url;

#[derive(Debug, thiserror::Error)]
#[error("setting {name}: {message}")]
pub struct ConfigError {
    pub name: &'static str,
    pub message: String,
}

fn bad(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        message: message.into(),
    }
}

/// A Data Management endpoint we are willing to send the app's token to: `scheme://host[:port]`,
/// lower-cased, https unless the host is loopback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DmEndpoint(String);

impl DmEndpoint {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw.trim()).map_err(|e| format!("'{raw}' is not a valid URL: {e}"))?;
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("'{raw}' has no host"));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(host) => {}
            _ => {
                return Err(format!(
                    "'{raw}' must use https (http only for loopback hosts)"
                ));
            }
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
    pub fn mgmt_url(&self) -> String {
        format!("{}/v1/rest/mgmt", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DmEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub const DEFAULT_TOKEN_SCOPE: &str = "https://kusto.kusto.windows.net/.default";
pub const DEFAULT_MAX_BLOBS: usize = 5_000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const DEFAULT_MAX_CONCURRENCY: usize = 64;
const DEFAULT_PORT: u16 = 3000;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Port on 127.0.0.1 the Functions host talks to.
    pub port: u16,
    /// DM used when a request names none.
    pub default_dm: DmEndpoint,
    /// Every DM the app's token may be sent to (the default included).
    pub allowed_dms: BTreeSet<DmEndpoint>,
    pub token_scope: String,
    /// User-assigned managed identity; system-assigned when `None`.
    pub client_id: Option<String>,
    pub max_blobs: usize,
    pub max_body_bytes: usize,
    /// Queue posts in flight across all requests.
    pub max_concurrency: usize,
    /// Ingestion properties applied under every request's own (`INGEST_DEFAULT_PROPERTIES`).
    pub default_properties: PropertyBag,
    /// Event Grid routing rules.
    pub routes: RouteTable,
    /// Whether the Event Grid path reads blob metadata (one Get Blob Properties call per blob).
    pub read_blob_metadata: bool,
    /// SAS (query string) for reading blob metadata on loopback storage (Azurite) in local runs,
    /// where no managed identity exists. Never sent to any other host.
    pub local_blob_sas: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply them without touching the process
    /// environment. Empty values count as unset (ARM templates pass "" for optional settings).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let port = match get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Some(v) => v.parse::<u16>().map_err(|_| {
                bad(
                    "FUNCTIONS_CUSTOMHANDLER_PORT",
                    format!("'{v}' is not a port number"),
                )
            })?,
            None => DEFAULT_PORT,
        };
        let default_dm_raw = get("KUSTO_INGEST_URI").ok_or_else(|| {
            bad(
                "KUSTO_INGEST_URI",
                "is required: the Data Management endpoint, e.g. https://ingest-mycluster.westeurope.kusto.windows.net",
            )
        })?;
        let default_dm =
            DmEndpoint::parse(&default_dm_raw).map_err(|m| bad("KUSTO_INGEST_URI", m))?;
        let mut allowed_dms = BTreeSet::from([default_dm.clone()]);
        if let Some(list) = get("KUSTO_ALLOWED_INGEST_URIS") {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                allowed_dms.insert(
                    DmEndpoint::parse(item).map_err(|m| bad("KUSTO_ALLOWED_INGEST_URIS", m))?,
                );
            }
        }
        let token_scope =
            get("KUSTO_TOKEN_SCOPE").unwrap_or_else(|| DEFAULT_TOKEN_SCOPE.to_owned());
        if Url::parse(&token_scope).is_err() {
            return Err(bad(
                "KUSTO_TOKEN_SCOPE",
                format!("'{token_scope}' is not a URL-shaped AAD scope"),
            ));
        }
        let default_properties = match get("INGEST_DEFAULT_PROPERTIES") {
            None => PropertyBag::new(),
            Some(raw) => match serde_json::from_str::<serde_json::Value>(&raw) {
                Ok(serde_json::Value::Object(map)) => {
                    let bag = PropertyBag::from_map(map);
                    bag.validate()
                        .map_err(|e| bad("INGEST_DEFAULT_PROPERTIES", e.to_string()))?;
                    bag
                }
                _ => {
                    return Err(bad(
                        "INGEST_DEFAULT_PROPERTIES",
                        "must be a JSON object of ingestion properties",
                    ));
                }
            },
        };
        let routes = match get("INGEST_ROUTES") {
            None => RouteTable::default(),
            Some(raw) => RouteTable::parse(&raw).map_err(|m| bad("INGEST_ROUTES", m))?,
        };
        Ok(Self {
            port,
            default_dm,
            allowed_dms,
            token_scope,
            client_id: get("AZURE_CLIENT_ID"),
            max_blobs: positive(
                get("INGEST_MAX_BLOBS"),
                "INGEST_MAX_BLOBS",
                DEFAULT_MAX_BLOBS,
            )?,
            max_body_bytes: positive(
                get("INGEST_MAX_BODY_BYTES"),
                "INGEST_MAX_BODY_BYTES",
                DEFAULT_MAX_BODY_BYTES,
            )?,
            max_concurrency: positive(
                get("INGEST_MAX_CONCURRENCY"),
                "INGEST_MAX_CONCURRENCY",
                DEFAULT_MAX_CONCURRENCY,
            )?,
            default_properties,
            routes,
            local_blob_sas: get(crate::eventgrid::metadata::LOCAL_BLOB_SAS_SETTING)
                .map(|v| v.trim_start_matches('?').to_owned())
                .filter(|v| !v.is_empty()),
            read_blob_metadata: match get("INGEST_READ_BLOB_METADATA")
                .map(|v| v.to_ascii_lowercase())
            {
                None => false,
                Some(v) if v == "true" || v == "1" => true,
                Some(v) if v == "false" || v == "0" => false,
                Some(v) => {
                    return Err(bad(
                        "INGEST_READ_BLOB_METADATA",
                        format!("'{v}' is not true or false"),
                    ));
                }
            },
        })
    }
}

fn positive(raw: Option<String>, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(name, format!("'{v}' is not a positive integer"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

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
    fn required_and_bad_settings_are_named() {
        assert_eq!(settings(&[]).unwrap_err().name, "KUSTO_INGEST_URI");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            ("INGEST_MAX_BLOBS", "0"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "INGEST_MAX_BLOBS");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            (
                "KUSTO_ALLOWED_INGEST_URIS",
                "https://ok.kusto.windows.net, http://evil.example.com",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.name, "KUSTO_ALLOWED_INGEST_URIS");
        let e = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            ("INGEST_DEFAULT_PROPERTIES", "{\"format\": \"xlsx\"}"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "INGEST_DEFAULT_PROPERTIES");
    }

    #[test]
    fn allowlist_always_contains_the_default() {
        let s = settings(&[
            ("KUSTO_INGEST_URI", "https://ingest-a.kusto.windows.net"),
            (
                "KUSTO_ALLOWED_INGEST_URIS",
                "https://ingest-b.kusto.windows.net,",
            ),
            ("INGEST_MAX_BLOBS", ""),
        ])
        .unwrap();
        assert_eq!(s.allowed_dms.len(), 2);
        assert_eq!(s.max_blobs, DEFAULT_MAX_BLOBS);
        assert_eq!(s.token_scope, DEFAULT_TOKEN_SCOPE);
    }
}
