//! `local.settings.json`: its `Values` are the handler's environment, and its fixed loopback
//! addresses say where the DM emulator and the token endpoint listen.

use std::path::Path;

use serde_json::Value;
use url::Url;

/// Azurite's well-known ports, which `UseDevelopmentStorage=true` means.
pub const AZURITE_PORTS: [u16; 3] = [10000, 10001, 10002];

/// Route used when `INGEST_ROUTES` is empty: the watched `landing` container.
pub const DEFAULT_ROUTES: &str =
    r#"[{"container":"landing","database":"localdb","table":"LocalTable"}]"#;

/// What the local stack needs from `local.settings.json`.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// `Values`, in file order.
    pub values: Vec<(String, String)>,
    pub handler_port: u16,
    pub dm_port: u16,
    pub identity_port: u16,
    pub identity_header: String,
    /// `KUSTO_TOKEN_SCOPE` (the audience the emulator must accept).
    pub token_scope: Option<String>,
    /// `INGEST_ROUTES` as set, or [`DEFAULT_ROUTES`].
    pub routes: String,
    pub routes_defaulted: bool,
    /// Containers named by the routes: the ones the event emitter watches.
    pub watched_containers: Vec<String>,
    pub read_blob_metadata: bool,
}

impl LocalSettings {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let Some(values) = doc.get("Values").and_then(Value::as_object) else {
            return Err("has no \"Values\" object".to_owned());
        };
        let mut pairs = Vec::with_capacity(values.len());
        for (k, v) in values {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("Values.{k} must be a string")),
            };
            pairs.push((k.clone(), v));
        }
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let handler_port = get("FUNCTIONS_CUSTOMHANDLER_PORT")
            .ok_or("Values.FUNCTIONS_CUSTOMHANDLER_PORT is required (the handler's port)")?;
        let handler_port = handler_port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!(
                    "Values.FUNCTIONS_CUSTOMHANDLER_PORT '{handler_port}' is not a fixed port number"
                )
            })?;
        let dm = get("KUSTO_INGEST_URI").ok_or("Values.KUSTO_INGEST_URI is required")?;
        let dm_port = loopback_port("KUSTO_INGEST_URI", &dm, &["", "/"])?;
        let identity = get("IDENTITY_ENDPOINT").ok_or("Values.IDENTITY_ENDPOINT is required")?;
        let identity_port = loopback_port("IDENTITY_ENDPOINT", &identity, &["/msi/token"])?;
        let identity_header = get("IDENTITY_HEADER").ok_or("Values.IDENTITY_HEADER is required")?;

        let (routes, routes_defaulted) = match get("INGEST_ROUTES") {
            Some(r) => (r, false),
            None => (DEFAULT_ROUTES.to_owned(), true),
        };
        let watched_containers = route_containers(&routes)?;
        let read_blob_metadata = get("INGEST_READ_BLOB_METADATA")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");

        let ports = [
            ("FUNCTIONS_CUSTOMHANDLER_PORT", handler_port),
            ("KUSTO_INGEST_URI", dm_port),
            ("IDENTITY_ENDPOINT", identity_port),
        ];
        for (i, (a, pa)) in ports.iter().enumerate() {
            for (b, pb) in &ports[i + 1..] {
                if pa == pb {
                    return Err(format!("{a} and {b} both use port {pa}"));
                }
            }
            if AZURITE_PORTS.contains(pa) {
                return Err(format!(
                    "{a} uses port {pa}, which Azurite needs (UseDevelopmentStorage=true: {AZURITE_PORTS:?})"
                ));
            }
        }

        Ok(LocalSettings {
            handler_port,
            dm_port,
            identity_port,
            identity_header,
            token_scope: get("KUSTO_TOKEN_SCOPE"),
            routes,
            routes_defaulted,
            watched_containers,
            read_blob_metadata,
            values: pairs,
        })
    }

    /// The handler's environment: exactly `Values`, plus `RUST_LOG=info` when unset and the
    /// default route when `INGEST_ROUTES` is empty. `extra` is added only where a value is empty.
    pub fn handler_env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = self.values.clone();
        let mut set_if_empty = |name: &str, value: &str| {
            match env.iter_mut().find(|(k, _)| k == name) {
                Some((_, v)) if v.trim().is_empty() => *v = value.to_owned(),
                Some(_) => {}
                None => env.push((name.to_owned(), value.to_owned())),
            };
        };
        set_if_empty("RUST_LOG", "info");
        set_if_empty("INGEST_ROUTES", &self.routes);
        for (k, v) in extra {
            set_if_empty(k, v);
        }
        env
    }
}

/// `http://127.0.0.1:<port><path>` (or localhost) with an explicit port and an allowed path.
fn loopback_port(name: &str, raw: &str, paths: &[&str]) -> Result<u16, String> {
    let url = Url::parse(raw).map_err(|e| format!("Values.{name} '{raw}' is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "http" || !loopback {
        return Err(format!(
            "Values.{name} '{raw}' must be http://127.0.0.1:<port>… for the local stack"
        ));
    }
    if !paths.contains(&url.path()) {
        return Err(format!(
            "Values.{name} '{raw}' must have the path {} for the local stack",
            paths.last().copied().unwrap_or("/")
        ));
    }
    url.port()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("Values.{name} '{raw}' must name a fixed port"))
}

/// The `container` of every rule, in order, without duplicates.
fn route_containers(routes: &str) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_str(routes)
        .map_err(|e| format!("Values.INGEST_ROUTES is not valid JSON: {e}"))?;
    let rules = value
        .as_array()
        .ok_or("Values.INGEST_ROUTES must be a JSON array of rules")?;
    let mut out: Vec<String> = Vec::new();
    for rule in rules {
        if let Some(c) = rule.get("container").and_then(Value::as_str)
            && !out.iter().any(|o| o == c)
        {
            out.push(c.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"IsEncrypted": false, "Values": {
        "FUNCTIONS_WORKER_RUNTIME": "custom",
        "FUNCTIONS_CUSTOMHANDLER_PORT": "7071",
        "KUSTO_INGEST_URI": "http://127.0.0.1:8081",
        "IDENTITY_ENDPOINT": "http://127.0.0.1:8082/msi/token",
        "IDENTITY_HEADER": "local-identity-header",
        "INGEST_ROUTES": "",
        "RUST_LOG": ""
    }}"#;

    #[test]
    fn ports_and_default_route() {
        let s = LocalSettings::parse(SAMPLE).unwrap();
        assert_eq!(
            (s.handler_port, s.dm_port, s.identity_port),
            (7071, 8081, 8082)
        );
        assert!(s.routes_defaulted);
        assert_eq!(s.watched_containers, ["landing"]);
        let env = s.handler_env(&[]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RUST_LOG"), Some("info"));
        assert_eq!(get("INGEST_ROUTES"), Some(DEFAULT_ROUTES));
        assert_eq!(get("FUNCTIONS_WORKER_RUNTIME"), Some("custom"));
    }

    #[test]
    fn rejects_remote_or_portless_endpoints() {
        let bad = SAMPLE.replace(
            "http://127.0.0.1:8081",
            "https://ingest-x.kusto.windows.net",
        );
        assert!(
            LocalSettings::parse(&bad)
                .unwrap_err()
                .contains("KUSTO_INGEST_URI")
        );
        let bad = SAMPLE.replace("8082/msi/token", "8082/other");
        assert!(
            LocalSettings::parse(&bad)
                .unwrap_err()
                .contains("IDENTITY_ENDPOINT")
        );
        let bad = SAMPLE.replace("8082", "8081");
        assert!(
            LocalSettings::parse(&bad)
                .unwrap_err()
                .contains("both use port 8081")
        );
    }

    #[test]
    fn routes_name_the_watched_containers() {
        let s = SAMPLE.replace(
            r#""INGEST_ROUTES": """#,
            r#""INGEST_ROUTES": "[{\"container\":\"a\",\"database\":\"d\",\"table\":\"t\"},{\"container\":\"b\",\"database\":\"d\",\"table\":\"t\"},{\"container\":\"a\",\"database\":\"d\",\"table\":\"u\"}]""#,
        );
        let s = LocalSettings::parse(&s).unwrap();
        assert!(!s.routes_defaulted);
        assert_eq!(s.watched_containers, ["a", "b"]);
    }
}
