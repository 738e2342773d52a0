//! Who may ingest what through `POST /api/ingest`, so that holding the function key does not make
//! the app a confused deputy: the databases and tables a request may target, the storage a blob may
//! come from, whether a blob URI may carry a `;` credential suffix (`;managed_identity=…`, which
//! the *cluster* resolves with its own identity), and — behind App Service Authentication — the
//! same per app role of the caller. Checked after parsing and before any DM or queue call.
//!
//! Unset, each rule allows everything (the behaviour before these settings existed), and start-up
//! logs a warning naming it.

use crate::domain::{BlobUri, DatabaseName, TableName, clip};
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// One grant: what a caller (or every caller) may do. `None` means "anything".
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    targets: Option<Vec<TargetPattern>>,
    sources: Option<Vec<SourcePattern>>,
    credential_suffix: bool,
}

/// `database.table`, each side a name or a glob with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetPattern {
    text: String,
    database: String,
    table: String,
}

/// `host[:port][/path prefix]`; the host may start with `*.`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourcePattern {
    text: String,
    host: String,
    path: String,
}

/// The whole policy: a grant for everyone, and optionally one per app role of the caller.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    everyone: Grant,
    /// Where the everyone grant's rules come from, for messages.
    settings: Names,
    /// `INGEST_CALLER_ROLES`: when set, a request must come from a caller with one of these roles.
    roles: Option<BTreeMap<String, Grant>>,
}

/// Setting names, so a denial can name the rule that refused it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    pub(crate) targets: &'static str,
    pub(crate) sources: &'static str,
    pub(crate) credentials: &'static str,
    pub(crate) roles: &'static str,
}

/// The caller, as App Service Authentication describes it (`X-MS-CLIENT-PRINCIPAL`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) name: Option<String>,
    pub(crate) roles: Vec<String>,
}

/// Why a request was refused: a 403 naming the rule, and the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) target: Option<String>,
}

/// A blob to be checked: where it goes and where it is read from.
pub(crate) struct Request<'a> {
    /// `blobs[i].blobUri`, for the denial's target.
    pub(crate) index: usize,
    pub(crate) database: &'a DatabaseName,
    pub(crate) table: &'a TableName,
    pub(crate) blob: &'a BlobUri,
}

impl Policy {
    /// Parses the settings' values (`None`: unset). `credentials` defaults to allowed unless a
    /// source allowlist is set: limiting sources and then letting the cluster's identity read
    /// anything would defeat it.
    pub(crate) fn parse(
        names: Names,
        targets: Option<&str>,
        sources: Option<&str>,
        credentials: Option<bool>,
        roles: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let targets = targets
            .map(|raw| parse_list(raw, TargetPattern::parse))
            .transpose()
            .map_err(|m| (names.targets, m))?;
        let sources = sources
            .map(|raw| parse_list(raw, SourcePattern::parse))
            .transpose()
            .map_err(|m| (names.sources, m))?;
        let credential_suffix = credentials.unwrap_or(sources.is_none());
        let roles = roles
            .map(parse_roles)
            .transpose()
            .map_err(|m| (names.roles, m))?;
        Ok(Self {
            everyone: Grant {
                targets,
                sources,
                credential_suffix,
            },
            settings: names,
            roles,
        })
    }

    /// What start-up warns about: each rule left open.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.everyone.targets.is_none() && self.roles.is_none() {
            warnings.push(format!(
                "{} is not set: any holder of the function key can ingest into every database and table the app's identity can ingest into",
                self.settings.targets
            ));
        }
        if self.everyone.sources.is_none() && self.roles.is_none() {
            warnings.push(format!(
                "{} is not set: blobs are accepted from any storage account",
                self.settings.sources
            ));
        }
        if self.everyone.credential_suffix {
            warnings.push(format!(
                "{} allows blob URIs with a ';' credential suffix (;managed_identity=…): the cluster reads such blobs with its own identity, for anyone with the function key",
                self.settings.credentials
            ));
        }
        warnings
    }

    /// Whether the policy needs to know the caller (`INGEST_CALLER_ROLES` is set).
    pub(crate) fn needs_caller(&self) -> bool {
        self.roles.is_some()
    }

    /// Checks every blob of a request; the first refusal wins.
    pub(crate) fn check<'a>(
        &self,
        caller: Option<&Caller>,
        requests: impl IntoIterator<Item = Request<'a>>,
    ) -> Result<(), Denial> {
        let role_grants = self.role_grants(caller)?;
        for request in requests {
            self.everyone.check(&request, &self.settings)?;
            if let Some(grants) = &role_grants {
                let allowed = grants
                    .iter()
                    .any(|(_, grant)| grant.check(&request, &self.settings).is_ok());
                if !allowed {
                    let roles: Vec<&str> = grants.iter().map(|(r, _)| r.as_str()).collect();
                    return Err(Denial {
                        code: "CallerNotAllowed",
                        message: format!(
                            "No role of the caller ({}) allows ingesting {} into {}.{} ({}).",
                            roles.join(", "),
                            request.blob,
                            request.database,
                            request.table,
                            self.settings.roles
                        ),
                        target: Some(format!("blobs[{}].blobUri", request.index)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a caller may ingest into `database.table` (data it sends itself: no blob source).
    pub(crate) fn check_target(
        &self,
        caller: Option<&Caller>,
        database: &DatabaseName,
        table: &TableName,
    ) -> Result<(), Denial> {
        let role_grants = self.role_grants(caller)?;
        let allows = |grant: &Grant| {
            grant
                .targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|p| p.matches(database, table)))
        };
        let allowed = allows(&self.everyone)
            && role_grants
                .as_ref()
                .is_none_or(|grants| grants.iter().any(|(_, g)| allows(g)));
        if allowed {
            Ok(())
        } else {
            Err(Denial {
                code: "TargetNotAllowed",
                message: format!(
                    "Ingesting into {}.{} is not allowed ({}, {}).",
                    clip(database.as_str()),
                    clip(table.as_str()),
                    self.settings.targets,
                    self.settings.roles
                ),
                target: Some("table".to_owned()),
            })
        }
    }

    /// The grants of the caller's roles, when roles are configured.
    fn role_grants(&self, caller: Option<&Caller>) -> Result<Option<Vec<(String, Grant)>>, Denial> {
        let Some(roles) = &self.roles else {
            return Ok(None);
        };
        let Some(caller) = caller else {
            return Err(Denial {
                code: "CallerNotAuthenticated",
                message: format!(
                    "{} is set, so requests must come through App Service Authentication (no X-MS-CLIENT-PRINCIPAL header).",
                    self.settings.roles
                ),
                target: None,
            });
        };
        let grants: Vec<(String, Grant)> = caller
            .roles
            .iter()
            .filter_map(|role| roles.get(role).map(|g| (role.clone(), g.clone())))
            .collect();
        if grants.is_empty() {
            return Err(Denial {
                code: "CallerNotAllowed",
                message: format!(
                    "The caller{} has no role {} grants (roles: {}).",
                    caller
                        .name
                        .as_deref()
                        .map(|n| format!(" '{}'", clip(n)))
                        .unwrap_or_default(),
                    self.settings.roles,
                    if caller.roles.is_empty() {
                        "none".to_owned()
                    } else {
                        clip(&caller.roles.join(", "))
                    }
                ),
                target: None,
            });
        }
        Ok(Some(grants))
    }
}

impl Grant {
    fn check(&self, request: &Request<'_>, names: &Names) -> Result<(), Denial> {
        if let Some(targets) = &self.targets
            && !targets
                .iter()
                .any(|t| t.matches(request.database, request.table))
        {
            return Err(Denial {
                code: "TargetNotAllowed",
                message: format!(
                    "Ingesting into {}.{} is not allowed by {} ({}).",
                    clip(request.database.as_str()),
                    clip(request.table.as_str()),
                    names.targets,
                    list(targets.iter().map(|t| t.text.as_str()))
                ),
                target: Some("table".to_owned()),
            });
        }
        let at = Some(format!("blobs[{}].blobUri", request.index));
        if let Some(sources) = &self.sources
            && !sources.iter().any(|s| s.matches(request.blob))
        {
            return Err(Denial {
                code: "BlobSourceNotAllowed",
                message: format!(
                    "Blobs from {} are not allowed by {} ({}).",
                    request.blob,
                    names.sources,
                    list(sources.iter().map(|s| s.text.as_str()))
                ),
                target: at,
            });
        }
        if request.blob.has_credential_suffix() && !self.credential_suffix {
            return Err(Denial {
                code: "BlobCredentialNotAllowed",
                message: format!(
                    "Blob URIs with a ';' credential suffix (the cluster would read the blob with its own identity) are not allowed by {}; give a SAS instead.",
                    names.credentials
                ),
                target: at,
            });
        }
        Ok(())
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    clip(&items.collect::<Vec<_>>().join(", "))
}

fn parse_list<T>(raw: &str, parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<T> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err("lists nothing; leave it unset to allow everything".to_owned());
    }
    Ok(items)
}

impl TargetPattern {
    fn parse(raw: &str) -> Result<Self, String> {
        let Some((database, table)) = raw.split_once('.') else {
            return Err(format!(
                "'{}' is not database.table (use * for any, e.g. sales.* or *.Events)",
                clip(raw)
            ));
        };
        if database.is_empty() || table.is_empty() {
            return Err(format!("'{}' has an empty name", clip(raw)));
        }
        Ok(Self {
            text: raw.to_owned(),
            database: database.to_owned(),
            table: table.to_owned(),
        })
    }

    fn matches(&self, database: &DatabaseName, table: &TableName) -> bool {
        glob(&self.database, database.as_str()) && glob(&self.table, table.as_str())
    }
}

impl SourcePattern {
    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim_end_matches('/');
        if raw.contains("://") || raw.contains(['?', ';', '#']) {
            return Err(format!(
                "'{}' must be host[:port][/container], without scheme or query",
                clip(raw)
            ));
        }
        let (host, path) = raw.split_once('/').unwrap_or((raw, ""));
        if host.is_empty() || host.contains('*') && !host.starts_with("*.") {
            return Err(format!(
                "'{}': the host must be a name, or *.suffix",
                clip(raw)
            ));
        }
        Ok(Self {
            text: raw.to_owned(),
            host: host.to_ascii_lowercase(),
            path: path.to_owned(),
        })
    }

    /// The blob's authority matches the host, and its path starts with the path at a segment
    /// boundary.
    fn matches(&self, blob: &BlobUri) -> bool {
        let location = blob.location();
        let (authority, path) = location.split_once('/').unwrap_or((location, ""));
        let authority = authority.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix('*') {
            Some(suffix) => authority.ends_with(suffix) && authority.len() > suffix.len(),
            None => authority == self.host,
        };
        host_ok
            && (self.path.is_empty()
                || path == self.path
                || path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// `{"Role.Name": {"targets": [...], "sources": [...], "allowBlobCredentials": false}}`.
fn parse_roles(raw: &str) -> Result<BTreeMap<String, Grant>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct RawGrant {
        #[serde(default)]
        targets: Option<Vec<String>>,
        #[serde(default)]
        sources: Option<Vec<String>>,
        #[serde(default)]
        allow_blob_credentials: Option<bool>,
    }
    let raw: BTreeMap<String, RawGrant> = serde_json::from_str(raw).map_err(|e| {
        format!(
            "must be a JSON object of role → {{\"targets\": [...], \"sources\": [...], \"allowBlobCredentials\": false}}: {e}"
        )
    })?;
    raw.into_iter()
        .map(|(role, grant)| {
            let fail = |m: String| format!("role '{}': {m}", clip(&role));
            let targets = grant
                .targets
                .map(|t| t.iter().map(|s| TargetPattern::parse(s)).collect())
                .transpose()
                .map_err(fail)?;
            let sources: Option<Vec<SourcePattern>> = grant
                .sources
                .map(|s| s.iter().map(|s| SourcePattern::parse(s)).collect())
                .transpose()
                .map_err(|m| format!("role '{}': {m}", clip(&role)))?;
            let credential_suffix = grant.allow_blob_credentials.unwrap_or(sources.is_none());
            Ok((
                role,
                Grant {
                    targets,
                    sources,
                    credential_suffix,
                },
            ))
        })
        .collect()
}

impl Caller {
    /// The caller App Service Authentication put in `X-MS-CLIENT-PRINCIPAL` (base64 JSON with its
    /// claims), `None` without one. The platform sets the header and strips any a client sent, so
    /// it can be trusted only when App Service Authentication is on.
    pub(crate) fn from_principal(header: Option<&str>) -> Result<Option<Self>, String> {
        #[derive(Deserialize)]
        struct Principal {
            #[serde(default)]
            name_typ: Option<String>,
            #[serde(default)]
            role_typ: Option<String>,
            #[serde(default)]
            claims: Vec<Claim>,
        }
        #[derive(Deserialize)]
        struct Claim {
            typ: String,
            val: String,
        }
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(header)
            .map_err(|_| "X-MS-CLIENT-PRINCIPAL is not base64".to_owned())?;
        let principal: Principal = serde_json::from_slice(&bytes).map_err(|_| {
            "X-MS-CLIENT-PRINCIPAL is not the App Service principal JSON".to_owned()
        })?;
        let role_types = [
            principal.role_typ.as_deref().unwrap_or(ROLE_CLAIM),
            "roles",
            ROLE_CLAIM,
        ];
        let name_type = principal.name_typ.as_deref().unwrap_or(NAME_CLAIM);
        let roles = principal
            .claims
            .iter()
            .filter(|c| role_types.contains(&c.typ.as_str()))
            .map(|c| c.val.clone())
            .collect();
        let name = principal
            .claims
            .iter()
            .find(|c| c.typ == name_type || c.typ == "name")
            .map(|c| c.val.clone());
        Ok(Some(Self { name, roles }))
    }
}

const ROLE_CLAIM: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
const NAME_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            targets: "T",
            sources: "S",
            credentials: "C",
            roles: "R",
        }
    }

    fn check(
        policy: &Policy,
        caller: Option<&Caller>,
        db: &str,
        table: &str,
        blob: &str,
    ) -> Result<(), Denial> {
        let (db, table, blob) = (
            DatabaseName::parse(db).unwrap(),
            TableName::parse(table).unwrap(),
            BlobUri::parse(blob).unwrap(),
        );
        policy.check(
            caller,
            [Request {
                index: 0,
                database: &db,
                table: &table,
                blob: &blob,
            }],
        )
    }

    #[test]
    fn unset_allows_everything_and_warns() {
        let policy = Policy::parse(names(), None, None, None, None).unwrap();
        assert!(
            check(
                &policy,
                None,
                "any",
                "thing",
                "https://x.example.com/c/b;managed_identity=system"
            )
            .is_ok()
        );
        assert_eq!(policy.warnings().len(), 3);
    }

    #[test]
    fn targets_and_sources_are_enforced_with_the_rule_named() {
        let policy = Policy::parse(
            names(),
            Some("sales.*, logs.Events"),
            Some("acct.blob.core.windows.net/landing, *.dfs.core.windows.net"),
            None,
            None,
        )
        .unwrap();
        let ok = "https://acct.blob.core.windows.net/landing/a.csv?sig=x";
        assert!(check(&policy, None, "sales", "Orders", ok).is_ok());
        assert!(check(&policy, None, "logs", "Events", ok).is_ok());
        let e = check(&policy, None, "logs", "Other", ok).unwrap_err();
        assert_eq!(e.code, "TargetNotAllowed");
        assert!(
            e.message.contains("T (sales.*, logs.Events)"),
            "{}",
            e.message
        );
        let e = check(
            &policy,
            None,
            "sales",
            "x",
            "https://acct.blob.core.windows.net/landingzone/a",
        )
        .unwrap_err();
        assert_eq!(e.code, "BlobSourceNotAllowed");
        assert_eq!(e.target.as_deref(), Some("blobs[0].blobUri"));
        assert!(
            check(
                &policy,
                None,
                "sales",
                "x",
                "https://other.dfs.core.windows.net/fs/a"
            )
            .is_ok()
        );
        let e = check(
            &policy,
            None,
            "sales",
            "x",
            "https://acct.blob.core.windows.net/landing/a;managed_identity=system",
        )
        .unwrap_err();
        assert_eq!(
            e.code, "BlobCredentialNotAllowed",
            "a source list turns credential suffixes off"
        );
    }

    #[test]
    fn roles_grant_per_caller() {
        let policy = Policy::parse(
            names(),
            None,
            None,
            Some(false),
            Some(r#"{"Ingest.Sales": {"targets": ["sales.*"]}, "Ingest.All": {}}"#),
        )
        .unwrap();
        let blob = "https://acct.blob.core.windows.net/c/a";
        assert_eq!(
            check(&policy, None, "sales", "t", blob).unwrap_err().code,
            "CallerNotAuthenticated"
        );
        let sales = Caller {
            name: Some("app".into()),
            roles: vec!["Ingest.Sales".into()],
        };
        assert!(check(&policy, Some(&sales), "sales", "t", blob).is_ok());
        assert_eq!(
            check(&policy, Some(&sales), "hr", "t", blob)
                .unwrap_err()
                .code,
            "CallerNotAllowed"
        );
        let nobody = Caller {
            name: None,
            roles: vec!["Reader".into()],
        };
        assert_eq!(
            check(&policy, Some(&nobody), "sales", "t", blob)
                .unwrap_err()
                .code,
            "CallerNotAllowed"
        );
        let all = Caller {
            name: None,
            roles: vec!["Ingest.All".into()],
        };
        assert!(check(&policy, Some(&all), "hr", "t", blob).is_ok());
    }

    #[test]
    fn principal_header_is_read() {
        let json = r#"{"auth_typ":"aad","name_typ":"name","role_typ":"roles","claims":[{"typ":"name","val":"etl"},{"typ":"roles","val":"Ingest.Sales"},{"typ":"roles","val":"Other"}]}"#;
        let header = base64::engine::general_purpose::STANDARD.encode(json);
        let caller = Caller::from_principal(Some(&header)).unwrap().unwrap();
        assert_eq!(caller.name.as_deref(), Some("etl"));
        assert_eq!(caller.roles, vec!["Ingest.Sales", "Other"]);
        assert_eq!(Caller::from_principal(None).unwrap(), None);
        assert!(Caller::from_principal(Some("%%%")).is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["sales", ".t", "d."] {
            assert!(
                Policy::parse(names(), Some(bad), None, None, None).is_err(),
                "{bad}"
            );
        }
        for bad in ["https://a/b", "a?x", "x*.y", ""] {
            assert!(
                Policy::parse(names(), None, Some(bad), None, None).is_err(),
                "{bad}"
            );
        }
        assert!(Policy::parse(names(), None, None, None, Some("[1]")).is_err());
        assert!(glob("a*c*e", "abcde") && glob("*", "") && !glob("a*", "ba") && glob("ab", "ab"));
    }
}
