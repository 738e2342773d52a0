//! The app's managed identity (azure_identity), the only source of bearer tokens.

use crate::config::Settings;
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions};
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use std::sync::Arc;

/// Tokens for the DM and for Storage. Cloning shares the credential and its token cache.
#[derive(Clone)]
pub struct Identity {
    credential: Arc<dyn TokenCredential>,
}

impl Identity {
    /// System-assigned identity, or the user-assigned one named by `AZURE_CLIENT_ID`. Talks to
    /// `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` when the platform sets them (App Service, Functions),
    /// to IMDS otherwise.
    pub fn from_settings(settings: &Settings, http: &reqwest::Client) -> Result<Self, String> {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: settings.client_id.clone().map(UserAssignedId::ClientId),
            client_options: ClientOptions {
                // The SDK default (8 retries, up to a minute) would hold a request far beyond what a
                // caller waits; a brief retry covers a blip, a longer outage surfaces as 503.
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    max_retries: 2,
                    initial_delay: azure_core::time::Duration::milliseconds(200),
                    max_total_elapsed: azure_core::time::Duration::seconds(10),
                    ..ExponentialRetryOptions::default()
                }),
                transport: Some(crate::transport::azure_transport(http)),
                ..ClientOptions::default()
            },
        };
        let credential =
            ManagedIdentityCredential::new(Some(options)).map_err(|e| e.to_string())?;
        Ok(Self { credential })
    }

    /// A bearer token for `scope`. The credential caches it and renews it five minutes before expiry.
    pub async fn token(&self, scope: &str) -> Result<String, String> {
        self.credential
            .get_token(&[scope], None)
            .await
            .map(|t| t.token.secret().to_owned())
            .map_err(|e| crate::domain::scrub_secrets(&e.to_string()))
    }
}
