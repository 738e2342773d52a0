//! `.get ingestion resources`: the queues to post messages to, the temporary containers to upload
//! data to, and the status table.

use super::status_table::StatusTable;
use crate::dm::v1::{V1Response, V1Table};
use crate::dm::{DmClient, DmError};
use crate::domain::{DmEndpoint, redact_url};
use crate::local::{is_loopback_host, scheme_allowed};
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;
use url::Url;

/// One storage root the DM hands out: a `SecuredReadyForAggregationQueue` or a `TempStorage`
/// container.
#[derive(Clone)]
pub(crate) struct StorageRoot {
    /// Storage account name: the first DNS label (`acct.queue.core.windows.net`), or the first path
    /// segment for path-style loopback endpoints (Azurite), so the queues of one account share
    /// their health statistics.
    pub(crate) account: String,
    /// Queue or container URL with its SAS.
    pub(crate) url: Url,
    /// The SAS's `se`, when it has one.
    pub(crate) sas_expiry: Option<OffsetDateTime>,
}

impl fmt::Debug for StorageRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageRoot({})", redact_url(self.url.as_str()))
    }
}

impl StorageRoot {
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw)
            .map_err(|e| format!("storage URI {} is not a URL: {e}", redact_url(raw)))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if !scheme_allowed(&url) {
            return Err(format!("storage URI {} must use https", redact_url(raw)));
        }
        let path_style = is_loopback_host(&host) || host.parse::<std::net::IpAddr>().is_ok();
        let account = if path_style {
            url.path_segments()
                .and_then(|mut s| s.next())
                .unwrap_or_default()
                .to_owned()
        } else {
            host.split('.').next().unwrap_or_default().to_owned()
        };
        if account.is_empty() {
            return Err(format!(
                "storage URI {} names no storage account",
                redact_url(raw)
            ));
        }
        let sas_expiry = url
            .query_pairs()
            .find(|(k, _)| k == "se")
            .and_then(|(_, v)| {
                OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339).ok()
            });
        Ok(Self {
            account,
            url,
            sas_expiry,
        })
    }

    /// The earliest SAS expiry among `roots`.
    pub(crate) fn earliest_expiry<'a>(
        roots: impl IntoIterator<Item = &'a StorageRoot>,
    ) -> Option<OffsetDateTime> {
        roots.into_iter().filter_map(|r| r.sas_expiry).min()
    }

    pub(crate) fn redacted(&self) -> String {
        redact_url(self.url.as_str())
    }
}

/// The resources this service uses. The notification queues, temp storage and status table are
/// counted for diagnostics only: the service posts existing blobs and reports through the queues
/// the DM itself writes to.
#[derive(Debug, Clone)]
pub(crate) struct IngestionResources {
    pub(crate) queues: Vec<StorageRoot>,
    /// `TempStorage` containers, for data uploaded through the handler.
    pub(crate) temp_containers: Vec<StorageRoot>,
    /// `IngestionsStatusTable`, for tracked blobs; the first when there are several.
    pub(crate) status_table: Option<StatusTable>,
    pub(crate) other_resources: usize,
}

const GET_INGESTION_RESOURCES: &str = ".get ingestion resources";

impl IngestionResources {
    /// Runs the command on `dm` and reads the queues from its answer.
    pub(crate) async fn fetch(client: &DmClient, dm: &DmEndpoint) -> Result<Self, DmError> {
        let response = client.execute(dm, GET_INGESTION_RESOURCES).await?;
        Self::from_response(&response).map_err(|reason| DmError::InvalidResponse {
            endpoint: dm.to_string(),
            reason,
        })
    }

    pub(crate) fn from_response(response: &V1Response) -> Result<Self, String> {
        let table = response.primary()?;
        let type_col = table.column("ResourceTypeName")?;
        let root_col = table.column("StorageRoot")?;
        let mut queues = Vec::new();
        let mut other_resources = 0;
        let mut status_table = None;
        let mut temp_containers = Vec::new();
        for row in &table.rows {
            let (Some(kind), Some(root)) = (
                V1Table::string_at(row, type_col),
                V1Table::string_at(row, root_col),
            ) else {
                return Err("a resource row is missing its type or storage root".to_owned());
            };
            // Unknown resource types are ignored, as the Python, Go and Node SDKs do.
            if kind.eq_ignore_ascii_case("SecuredReadyForAggregationQueue") {
                queues.push(StorageRoot::parse(root)?);
            } else if kind.eq_ignore_ascii_case("TempStorage") {
                temp_containers.push(StorageRoot::parse(root)?);
            } else if kind.eq_ignore_ascii_case("IngestionsStatusTable") && status_table.is_none() {
                status_table = Some(StatusTable::parse(root)?);
            } else {
                other_resources += 1;
            }
        }
        if queues.is_empty() {
            return Err("no SecuredReadyForAggregationQueue was returned".to_owned());
        }
        Ok(Self {
            queues,
            temp_containers,
            status_table,
            other_resources,
        })
    }

    /// The earliest SAS expiry among the queues: past it, these resources are useless.
    pub(crate) fn sas_expiry(&self) -> Option<OffsetDateTime> {
        // Temp containers count too: an upload with an expired SAS fails like a post does.
        StorageRoot::earliest_expiry(self.queues.iter().chain(&self.temp_containers))
    }
}

/// Stale SAS URLs are not used within this margin of their expiry.
const SAS_SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// For how long SAS URLs that expire at `expiry` can be used from now: up to the safety margin
/// before it (half their lifetime when that is shorter); 12 h when they name no expiry.
pub(crate) fn sas_usable_for(expiry: Option<OffsetDateTime>) -> Duration {
    let left = expiry
        .map(|expiry| {
            let millis = (expiry - OffsetDateTime::now_utc())
                .whole_milliseconds()
                .max(0) as u64;
            Duration::from_millis(millis)
        })
        .unwrap_or(Duration::from_secs(12 * 3600));
    left.saturating_sub(SAS_SAFETY_MARGIN.min(left / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(rows: &str) -> V1Response {
        serde_json::from_str(&format!(
            r#"{{"Tables":[{{"TableName":"Table_0","Columns":[{{"ColumnName":"ResourceTypeName","DataType":"String","ColumnType":"string"}},{{"ColumnName":"StorageRoot","DataType":"String","ColumnType":"string"}}],"Rows":[{rows}]}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn parses_the_reference_example() {
        let r = IngestionResources::from_response(&response(concat!(
            r#"["SecuredReadyForAggregationQueue","https://1hekstrldmycluster00.queue.core.windows.net/readyforaggregation-secured?sv=2021-08-06&st=2022-11-01T07%3A39%3A51Z&se=2022-11-01T19%3A44%3A51Z&sp=a&sig=x"],"#,
            r#"["SecuredReadyForAggregationQueue","https://1hekstrldmycluster01.queue.core.windows.net/readyforaggregation-secured?sv=2021-08-06&se=2022-11-01T18%3A00%3A00Z&sp=a&sig=y"],"#,
            r#"["FailedIngestionsQueue","https://1hekstrldmycluster00.queue.core.windows.net/failedingestions?sig=z"],"#,
            r#"["TempStorage","https://rvjkstrldmycluster00.blob.core.windows.net/20221101-ingestdata-e5c334ee145d4b4-0?sr=c&sp=rw&sig=w"],"#,
            r#"["SomethingNew","https://x.queue.core.windows.net/q"]"#
        )))
        .unwrap();
        assert_eq!(r.queues.len(), 2);
        assert_eq!(r.queues[0].account, "1hekstrldmycluster00");
        assert_eq!(r.queues[1].account, "1hekstrldmycluster01");
        assert_eq!(r.other_resources, 2);
        assert_eq!(r.temp_containers.len(), 1);
        assert_eq!(r.temp_containers[0].account, "rvjkstrldmycluster00");
        assert_eq!(r.sas_expiry().unwrap().hour(), 18);
        assert!(!format!("{:?}", r.queues[0]).contains("sig="));
    }

    #[test]
    fn path_style_loopback_uses_the_first_segment_as_account() {
        let r = IngestionResources::from_response(&response(
            r#"["SecuredReadyForAggregationQueue","http://127.0.0.1:10001/acct1/q1?sig=x"]"#,
        ))
        .unwrap();
        assert_eq!(r.queues[0].account, "acct1");
    }

    #[test]
    fn rejects_missing_queues_and_insecure_urls() {
        assert!(
            IngestionResources::from_response(&response(
                r#"["TempStorage","https://a.blob.core.windows.net/c"]"#
            ))
            .is_err()
        );
        assert!(
            IngestionResources::from_response(&response(
                r#"["SecuredReadyForAggregationQueue","http://evil.example.com/acct/q"]"#
            ))
            .is_err()
        );
    }
}
