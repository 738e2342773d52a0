//! Data bodies into the DM's `TempStorage`: gzip chunks gathered into blocks, staged one by one
//! (azure_storage_blob's block blob client) and committed only once the whole body arrived and
//! proved valid — an abandoned upload leaves only uncommitted blocks, which storage discards.
//!
//! The container is chosen as queues are: healthiest storage account first, from the same ranking.
//! A storage failure before the first block is stored moves on to another account (what the SDKs
//! do for uploads), and a SAS storage refused is replaced once by fresh credentials; once blocks
//! are stored the body cannot be replayed, so a later failure fails the upload.

use super::ranking::{AccountRanking, TIERS};
use super::resources::StorageRoot;
use crate::data::{DataError, DataSource};
use crate::dm::refresh::RefetchError;
use crate::domain::{BlobUri, clip, describe_error};
use crate::ingest::{BlobFailure, Deadline, FailureCode, UploadError};
use azure_core::http::{RequestContent, Transport};
use azure_storage_blob::models::BlockLookupList;
use azure_storage_blob::{BlobClient, BlobClientOptions};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::time::{Duration, Instant};

/// Blocks of this size (the last one smaller): memory per upload stays around one block.
const BLOCK: usize = 4 * 1024 * 1024;
/// Accounts tried for the first block.
const MAX_ACCOUNTS: usize = 3;
/// One block or commit call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Uploads `data` as `name` into one of `containers`; the blob's URI with the container's SAS.
/// When storage refused the SAS (and no container took the first block), `fresh` is asked once
/// for newer containers and the first block (still in hand) is tried there: a revoked or rotated
/// SAS costs one refetch, not every upload until the next scheduled refresh.
pub(crate) async fn upload<F, Fut>(
    containers: &[StorageRoot],
    fresh: F,
    ranking: &AccountRanking,
    transport: &Transport,
    name: &str,
    data: &mut dyn DataSource,
    deadline: Deadline,
) -> Result<BlobUri, UploadError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Vec<StorageRoot>, BlobFailure>>,
{
    if containers.is_empty() {
        return Err(storage_failure(
            "the DM hands out no TempStorage container to upload data to".to_owned(),
        ));
    }
    let block = next_block(data).await?;
    let refused = match first_block(containers, ranking, transport, name, &block, deadline).await {
        Started::Stored(target) => return target.finish(data, block, deadline).await,
        Started::Failed {
            reason,
            sas_refused: true,
        } if !deadline.expired() => reason,
        Started::Failed { reason, .. } => return Err(not_accepted(&reason)),
    };
    tracing::warn!(reason = %refused, "temporary storage refused its SAS; fetching fresh credentials");
    let containers = fresh().await.map_err(|failure| {
        UploadError::Storage(BlobFailure {
            message: format!(
                "the temporary containers refused their SAS ({refused}); {}",
                failure.message
            ),
            ..failure
        })
    })?;
    match first_block(&containers, ranking, transport, name, &block, deadline).await {
        Started::Stored(target) => target.finish(data, block, deadline).await,
        Started::Failed { reason, .. } => Err(not_accepted(&reason)),
    }
}

/// Fresh containers from `refetch` (a cache replacing credentials storage refused), within
/// `deadline`; `what` names what was refetched in the failure.
pub(crate) async fn refetched(
    deadline: Deadline,
    what: &str,
    refetch: impl Future<Output = Result<Vec<StorageRoot>, RefetchError>>,
) -> Result<Vec<StorageRoot>, BlobFailure> {
    tokio::time::timeout_at(deadline.instant(), refetch)
        .await
        .map_err(|_| {
            BlobFailure::new(
                FailureCode::DeadlineExceeded,
                format!("fresh {what} did not come before the request's deadline"),
            )
        })?
        .map_err(|e| {
            BlobFailure::new(FailureCode::UploadUnavailable, e.to_string())
                .retry_after(e.retry_after())
        })
}

/// Where the first block went.
enum Started {
    Stored(Target),
    /// No container took it; `sas_refused` when one refused the SAS (a refetch may help).
    Failed {
        reason: String,
        sas_refused: bool,
    },
}

/// Stages the first block in the healthiest container that takes it.
async fn first_block(
    containers: &[StorageRoot],
    ranking: &AccountRanking,
    transport: &Transport,
    name: &str,
    block: &Bytes,
    deadline: Deadline,
) -> Started {
    let mut reason = String::from("no temporary container is known");
    let mut sas_refused = false;
    for container in candidates(containers, ranking) {
        let target = match Target::new(container, name, transport) {
            Ok(target) => target,
            Err(error) => {
                reason = error;
                continue;
            }
        };
        match target.stage(0, block.clone(), deadline).await {
            Ok(()) => {
                ranking.record(&container.account, true);
                crate::request_log::account_used(&container.account);
                return Started::Stored(target);
            }
            Err(error) => {
                ranking.record(&container.account, false);
                tracing::warn!(container = %container.redacted(), error = %error.message, "data upload refused; trying another account");
                sas_refused |= error.sas_refused;
                reason = error.message;
            }
        }
        if deadline.expired() {
            break;
        }
    }
    Started::Failed {
        reason,
        sas_refused,
    }
}

fn not_accepted(reason: &str) -> UploadError {
    storage_failure(format!(
        "no temporary container accepted the data ({reason})"
    ))
}

/// The containers to try, healthiest account first, at most one per account.
fn candidates<'a>(containers: &'a [StorageRoot], ranking: &AccountRanking) -> Vec<&'a StorageRoot> {
    let mut accounts: Vec<String> = Vec::new();
    for c in containers {
        if !accounts.contains(&c.account) {
            accounts.push(c.account.clone());
        }
    }
    let tiers = ranking.tiers(&accounts, Instant::now());
    // A different container each time within a tier.
    let start = rand::random_range(0..containers.len());
    let mut picked: Vec<&StorageRoot> = Vec::new();
    for tier in 0..TIERS.len() {
        for offset in 0..containers.len() {
            let c = &containers[(start + offset) % containers.len()];
            let index = accounts.iter().position(|a| *a == c.account).unwrap_or(0);
            if tiers[index] == tier && !picked.iter().any(|p| p.account == c.account) {
                picked.push(c);
            }
        }
    }
    picked.truncate(MAX_ACCOUNTS);
    picked
}

/// Up to [`BLOCK`] bytes of `data`: the next block to stage (empty at the end).
async fn next_block(data: &mut dyn DataSource) -> Result<Bytes, UploadError> {
    let mut block = BytesMut::new();
    while block.len() < BLOCK {
        match data.next_chunk().await.map_err(UploadError::Data)? {
            Some(chunk) => block.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(block.freeze())
}

/// One blob being written.
struct Target {
    client: BlobClient,
    /// Container URL with the blob name and the container's SAS.
    uri: String,
    blocks: Vec<Vec<u8>>,
}

impl Target {
    fn new(container: &StorageRoot, name: &str, transport: &Transport) -> Result<Self, String> {
        let mut url = container.url.clone();
        let path = format!("{}/{name}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let options = BlobClientOptions {
            client_options: crate::transport::sdk_options(transport),
            ..BlobClientOptions::default()
        };
        let client =
            BlobClient::new(url.clone(), None, Some(options)).map_err(|e| describe_error(&e))?;
        Ok(Self {
            client,
            uri: url.to_string(),
            blocks: Vec::new(),
        })
    }

    async fn stage(
        &self,
        index: usize,
        block: Bytes,
        deadline: Deadline,
    ) -> Result<(), StageError> {
        let id = block_id(index);
        let len = block.len() as u64;
        let client = self.client.block_blob_client();
        let staged = client.stage_block(&id, len, RequestContent::from(block.to_vec()), None);
        match tokio::time::timeout(deadline.cap(CALL_TIMEOUT), staged).await {
            Err(_) => Err(StageError {
                message: "no answer in time".to_owned(),
                sas_refused: false,
            }),
            Ok(Err(e)) => Err(StageError {
                message: describe_storage_error(&e),
                sas_refused: refuses_sas(&e),
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Stages the rest of `data` after `first`, then commits the block list.
    async fn finish(
        mut self,
        data: &mut dyn DataSource,
        first: Bytes,
        deadline: Deadline,
    ) -> Result<BlobUri, UploadError> {
        self.blocks.push(block_id(0));
        let mut staged = first.len() as u64;
        loop {
            let block = next_block(data).await?;
            if block.is_empty() {
                break;
            }
            staged += block.len() as u64;
            let index = self.blocks.len();
            self.stage(index, block, deadline)
                .await
                .map_err(|e| storage_failure(format!("storing the data failed: {}", e.message)))?;
            self.blocks.push(block_id(index));
        }
        let list = BlockLookupList {
            latest: Some(self.blocks.clone()),
            ..BlockLookupList::default()
        };
        let content = list
            .try_into()
            .map_err(|e: azure_core::Error| storage_failure(describe_error(&e)))?;
        let client = self.client.block_blob_client();
        let commit = client.commit_block_list(content, None);
        match tokio::time::timeout(deadline.cap(CALL_TIMEOUT), commit).await {
            Err(_) => Err(storage_failure(
                "committing the data: no answer in time".to_owned(),
            )),
            Ok(Err(e)) => Err(storage_failure(format!(
                "committing the data failed: {}",
                describe_storage_error(&e)
            ))),
            Ok(Ok(_)) => {
                tracing::debug!(bytes = staged, blocks = self.blocks.len(), "data uploaded");
                BlobUri::parse(&self.uri).map_err(|e| storage_failure(e.to_string()))
            }
        }
    }
}

/// Why a block was not staged.
struct StageError {
    message: String,
    /// Storage refused the SAS itself (401/403): fresh credentials may work.
    sas_refused: bool,
}

fn refuses_sas(error: &azure_core::Error) -> bool {
    matches!(
        error.kind(),
        azure_core::error::ErrorKind::HttpResponse { status, .. }
            if matches!(u16::from(*status), 401 | 403)
    )
}

/// A storage answer by its status and error code (its XML body says no more that a caller can
/// act on); anything else with its causes.
fn describe_storage_error(error: &azure_core::Error) -> String {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            status, error_code, ..
        } => match error_code {
            Some(code) => format!("HTTP {}, {}", u16::from(*status), clip(code)),
            None => format!("HTTP {}", u16::from(*status)),
        },
        _ => describe_error(error),
    }
}

/// Block ids of one blob must all have the same length.
fn block_id(index: usize) -> Vec<u8> {
    format!("{index:08}").into_bytes()
}

fn storage_failure(message: String) -> UploadError {
    UploadError::Storage(BlobFailure::new(FailureCode::UploadUnavailable, message))
}

/// Data errors pass through as they are.
impl From<DataError> for UploadError {
    fn from(error: DataError) -> Self {
        UploadError::Data(error)
    }
}
