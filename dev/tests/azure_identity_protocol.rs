//! The token endpoint is driven by azure_identity's own `ManagedIdentityCredential`
//! (App Service source: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), and the token it gets
//! is accepted by the DM. Own test binary with a single test: it sets process env vars.

use azure_core::credentials::TokenCredential;
use kusto_dev::{Azurite, DmEmulator, EmulatorConfig};

#[test]
fn azure_identity_managed_identity_credential_gets_a_token_the_dm_accepts() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let emu = rt
        .block_on(DmEmulator::start(
            Azurite::shared(),
            EmulatorConfig::default(),
        ))
        .unwrap();
    // SAFETY: this binary has exactly one test and nothing else reads the environment
    // concurrently at this point (the emulator's threads never call getenv).
    unsafe {
        std::env::set_var("IDENTITY_ENDPOINT", emu.identity_endpoint());
        std::env::set_var("IDENTITY_HEADER", emu.identity_header());
    }
    rt.block_on(async {
        let cred = azure_identity::ManagedIdentityCredential::new(None).unwrap();
        let token = cred
            .get_token(&["https://kusto.kusto.windows.net/.default"], None)
            .await
            .expect("token from the emulator");
        let secret = token.token.secret().to_string();
        assert!(secret.starts_with("emu-token-"), "{secret}");
        let remaining = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
        assert!(
            remaining > azure_core::time::Duration::minutes(59),
            "{remaining:?}"
        );

        let log = emu.token_requests();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].resource.as_deref(),
            Some("https://kusto.kusto.windows.net")
        );
        assert_eq!(log[0].api_version.as_deref(), Some("2019-08-01"));
        assert!(log[0].identity_header_ok && log[0].metadata_header);
        assert_eq!(log[0].client_id, None);

        let rsp = reqwest::Client::new()
            .post(format!("{}/v1/rest/mgmt", emu.url()))
            .bearer_auth(&secret)
            .json(&serde_json::json!({"db": "NetDefaultDB", "csl": ".get kusto identity token"}))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);

        // User-assigned identity: client_id is forwarded and logged.
        let cred = azure_identity::ManagedIdentityCredential::new(Some(
            azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(
                    "11111111-2222-3333-4444-555555555555".into(),
                )),
                ..Default::default()
            },
        ))
        .unwrap();
        cred.get_token(&["https://api.kusto.windows.net/.default"], None)
            .await
            .unwrap();
        let log = emu.token_requests();
        assert_eq!(
            log[1].client_id.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );

        // A failing endpoint surfaces as an error. (400 rather than 5xx: azure_core
        // retries 5xx from the token endpoint with backoff for over a minute.)
        emu.faults().fail_token_endpoint(Some(400));
        let t0 = std::time::Instant::now();
        let err = cred
            .get_token(&["https://help.kusto.windows.net/.default"], None)
            .await
            .expect_err("injected 400");
        eprintln!("400 surfaced after {:?}: {err}", t0.elapsed());
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        emu.faults().fail_token_endpoint(Some(500));
        let t0 = std::time::Instant::now();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            cred.get_token(&["https://help.kusto.windows.net/.default"], None),
        )
        .await;
        let attempts = emu
            .token_requests()
            .iter()
            .filter(|r| r.status == 500)
            .count();
        eprintln!("500: {attempts} attempts in {:?}", t0.elapsed());
        assert!(attempts >= 1);
    });
}
