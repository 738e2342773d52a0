//! The app's managed identity (azure_identity), the only source of bearer tokens.

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use std::sync::Arc;

/// Tokens for the DM and for Storage. Cloning shares the credential and its token cache.
#[derive(Clone)]
pub(crate) struct Identity {
    credential: Arc<dyn TokenCredential>,
}

impl Identity {
    /// System-assigned identity, or the user-assigned one with `client_id`. Talks to
    /// `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` when the platform sets them (App Service, Functions),
    /// to IMDS otherwise.
    pub(crate) fn managed(
        client_id: Option<String>,
        transport: Transport,
    ) -> Result<Self, azure_core::Error> {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(UserAssignedId::ClientId),
            client_options: ClientOptions {
                // The SDK default (8 retries, up to a minute) would hold a request far beyond what a
                // caller waits; a brief retry covers a blip, a longer outage surfaces as 503.
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    max_retries: 2,
                    initial_delay: azure_core::time::Duration::milliseconds(200),
                    max_total_elapsed: azure_core::time::Duration::seconds(10),
                    ..ExponentialRetryOptions::default()
                }),
                transport: Some(transport),
                ..ClientOptions::default()
            },
        };
        let credential = ManagedIdentityCredential::new(Some(options))?;
        Ok(Self { credential })
    }

    /// The credential itself, for SDK clients that add the bearer token themselves.
    pub(crate) fn credential(&self) -> Arc<dyn TokenCredential> {
        self.credential.clone()
    }

    /// A bearer token for `scope`. The credential caches it and renews it five minutes before expiry.
    pub(crate) async fn token(&self, scope: &str) -> Result<String, String> {
        self.credential
            .get_token(&[scope], None)
            .await
            .map(|t| t.token.secret().to_owned())
            .map_err(|e| crate::domain::scrub_secrets(&e.to_string()))
    }
}

#[cfg(test)]
impl Identity {
    /// An identity that hands out `token` for every scope, for unit tests against fake DMs.
    pub(crate) fn fixed(token: &str) -> Self {
        Self {
            credential: Arc::new(FixedToken(token.to_owned())),
        }
    }
}

#[cfg(test)]
#[derive(Debug)]
struct FixedToken(String);

#[cfg(test)]
#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Ok(azure_core::credentials::AccessToken::new(
            self.0.clone(),
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}
