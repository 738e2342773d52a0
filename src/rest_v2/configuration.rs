//! The answer of `GET {dm}/v1/rest/ingestion/configuration` (docs/wire-facts.md, "Queued
//! ingestion REST (v2)"): where data bodies may be uploaded, how often to ask again, how many
//! blobs one queued POST may carry, and which protocol the cluster prefers.

use crate::queued::StorageRoot;
use serde::Deserialize;
use std::time::Duration;

/// What the docs' page says about batches: "Submit up to 20 blobs per request"; used when the
/// configuration names no (or a nonsensical) `maxBlobsPerBatch`.
pub(super) const DEFAULT_MAX_BLOBS_PER_BATCH: usize = 20;
/// Java's client refreshes after `min(1 h, refreshInterval)`; so do we.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// A refresh interval shorter than this is taken as this, so a DM answering "00:00:00" is not
/// asked on every request.
const MIN_REFRESH: Duration = Duration::from_secs(30);

/// Which protocol the cluster prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preferred {
    V1,
    V2,
}

/// A configuration, checked.
#[derive(Debug, Clone)]
pub(crate) struct Configuration {
    /// Containers (with their SAS) data bodies may be uploaded to.
    pub(crate) containers: Vec<StorageRoot>,
    /// When to ask again.
    pub(crate) refresh: Duration,
    pub(crate) max_blobs_per_batch: usize,
    /// The most uncompressed bytes one blob of a queued ingestion may hold, when the DM says.
    pub(crate) max_data_size: Option<u64>,
    pub(crate) preferred: Preferred,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    container_settings: Option<ContainerSettings>,
    #[serde(default)]
    ingestion_settings: Option<IngestionSettings>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerSettings {
    #[serde(default)]
    containers: Option<Vec<Container>>,
    #[serde(default)]
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IngestionSettings {
    #[serde(default)]
    max_blobs_per_batch: Option<i64>,
    /// A number the docs call a `long`; a float or a negative one is ignored, not fatal.
    #[serde(default)]
    max_data_size: Option<serde_json::Value>,
    #[serde(default)]
    preferred_ingestion_method: Option<String>,
}

/// Reads the `preferredIngestionMethod` value: the docs name `V1`/`V2`, their example and the
/// Spark connector say `REST` for v2; anything else (`V1`, `Queue`, `Legacy`, null) is v1.
fn preferred(raw: Option<&str>) -> Preferred {
    match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("v2" | "rest") => Preferred::V2,
        _ => Preferred::V1,
    }
}

/// A .NET TimeSpan, `[-][d.]hh:mm:ss[.fffffff]`.
pub(super) fn timespan(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (days, rest) = match raw.split_once('.') {
        // "1.02:00:00": days before the first dot, when it comes before the first colon.
        Some((d, rest)) if !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, raw),
    };
    let mut parts = rest.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || h > 23 || m > 59 || !(0.0..60.0).contains(&s) {
        return None;
    }
    Some(Duration::from_secs(days * 86_400 + h * 3600 + m * 60) + Duration::from_secs_f64(s))
}

impl Configuration {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let wire: Wire = serde_json::from_slice(body)
            .map_err(|e| format!("the ingestion configuration is not the expected JSON: {e}"))?;
        let containers = wire
            .container_settings
            .as_ref()
            .and_then(|c| c.containers.as_ref())
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.path.as_deref())
                    .map(StorageRoot::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let refresh = wire
            .container_settings
            .as_ref()
            .and_then(|c| c.refresh_interval.as_deref())
            .and_then(timespan)
            .unwrap_or(MAX_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH);
        let settings = wire.ingestion_settings.as_ref();
        let max_blobs_per_batch = settings
            .and_then(|s| s.max_blobs_per_batch)
            .filter(|n| *n > 0)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_MAX_BLOBS_PER_BATCH);
        let max_data_size = settings
            .and_then(|s| s.max_data_size.as_ref())
            .and_then(serde_json::Value::as_u64)
            .filter(|n| *n > 0);
        Ok(Self {
            containers,
            refresh,
            max_blobs_per_batch,
            max_data_size,
            preferred: preferred(settings.and_then(|s| s.preferred_ingestion_method.as_deref())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of `queued-ingest-configuration-http.md`.
    const DOC_EXAMPLE: &str = r#"{
      "containerSettings": {
        "containers": [
          {"path": "https://mystorageaccount.blob.core.windows.net/ingestdata?sv=2021-06-08&ss=b&srt=sco&sp=rwdlacx&se=2025-12-31T23:59:59Z&st=2025-01-01T00:00:00Z&spr=https&sig=..."}
        ],
        "lakeFolders": [{"path": "https://daily-onelake.dfs.fabric.microsoft.com/workspace/artifact/Files"}],
        "refreshInterval": "01:00:00",
        "preferredUploadMethod": "Storage"
      },
      "ingestionSettings": {"maxBlobsPerBatch": 20, "maxDataSize": 6442450944, "preferredIngestionMethod": "REST"}
    }"#;

    #[test]
    fn reads_the_documented_example() {
        let c = Configuration::parse(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.containers.len(), 1);
        assert_eq!(c.containers[0].account, "mystorageaccount");
        assert_eq!(c.refresh, Duration::from_secs(3600));
        assert_eq!(c.max_blobs_per_batch, 20);
        assert_eq!(c.max_data_size, Some(6_442_450_944));
        assert_eq!(c.preferred, Preferred::V2);
    }

    #[test]
    fn preferred_method_spellings() {
        for (raw, want) in [
            (Some("V2"), Preferred::V2),
            (Some("rest"), Preferred::V2),
            (Some("V1"), Preferred::V1),
            (Some("Legacy"), Preferred::V1),
            (Some("Queue"), Preferred::V1),
            (None, Preferred::V1),
        ] {
            assert_eq!(preferred(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn sparse_answers_get_defaults() {
        let c = Configuration::parse(br#"{"ingestionSettings": {"maxBlobsPerBatch": 0}}"#).unwrap();
        assert!(c.containers.is_empty());
        assert_eq!(c.max_blobs_per_batch, DEFAULT_MAX_BLOBS_PER_BATCH);
        assert_eq!(c.preferred, Preferred::V1);
        assert_eq!(c.refresh, MAX_REFRESH);
        assert_eq!(c.max_data_size, None);
        for odd in ["0", "-1", "1.5", "\"big\"", "null"] {
            let body = format!(r#"{{"ingestionSettings": {{"maxDataSize": {odd}}}}}"#);
            let c = Configuration::parse(body.as_bytes()).unwrap();
            assert_eq!(c.max_data_size, None, "{odd}");
        }
        assert!(Configuration::parse(b"not json").is_err());
        let bad = br#"{"containerSettings": {"containers": [{"path": "http://evil.example.com/c?sig=x"}]}}"#;
        assert!(Configuration::parse(bad).is_err());
    }

    #[test]
    fn timespans() {
        assert_eq!(timespan("01:00:00"), Some(Duration::from_secs(3600)));
        assert_eq!(timespan("00:01:30.5"), Some(Duration::from_millis(90_500)));
        assert_eq!(timespan("1.02:00:00"), Some(Duration::from_secs(93_600)));
        assert_eq!(timespan("25:00:00"), None);
        assert_eq!(timespan("soon"), None);
        assert_eq!(
            timespan("00:00:05").map(|d| d.clamp(MIN_REFRESH, MAX_REFRESH)),
            Some(MIN_REFRESH)
        );
    }
}
