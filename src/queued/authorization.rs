//! `.get kusto identity token`: the opaque token every ingestion message carries, which tells the
//! cluster the message was queued by an identity allowed to ingest.

use crate::dm::v1::V1Table;
use crate::dm::{DmClient, DmError};
use crate::domain::DmEndpoint;
use std::fmt;

const GET_IDENTITY_TOKEN: &str = ".get kusto identity token";

/// The token of `.get kusto identity token`. Never printed: `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AuthorizationContext(String);

impl AuthorizationContext {
    #[cfg(test)]
    pub(crate) fn new(token: &str) -> Self {
        Self(token.to_owned())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Runs the command on `dm` and reads its one-row, one-column answer.
    pub(crate) async fn fetch(client: &DmClient, dm: &DmEndpoint) -> Result<Self, DmError> {
        let response = client.execute(dm, GET_IDENTITY_TOKEN).await?;
        let invalid = |reason: String| DmError::InvalidResponse {
            endpoint: dm.to_string(),
            reason,
        };
        let table = response.primary().map_err(invalid)?;
        let column = table.column("AuthorizationContext").map_err(invalid)?;
        match table.rows.as_slice() {
            [row] => match V1Table::string_at(row, column) {
                Some(token) if !token.trim().is_empty() => Ok(Self(token.to_owned())),
                _ => Err(invalid("the identity token is empty".to_owned())),
            },
            rows => Err(invalid(format!(
                "expected one identity-token row, got {}",
                rows.len()
            ))),
        }
    }
}

impl fmt::Debug for AuthorizationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationContext(<redacted>)")
    }
}
