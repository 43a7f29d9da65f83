//! Identity attested by JupyterHub: the collector asks the Hub who owns the API token a
//! proxy presents (`GET {api}/user`), so that the trail names the Hub user even where
//! every user's server runs as the same OS account (containers).
//!
//! A user can present only tokens they hold, so they can only be themselves. Tokens are
//! never stored or logged: the cache keys on their SHA-256. A verified token stays good
//! for `cache_max_age` while the Hub cannot be reached, so a Hub outage does not stop
//! kernels that reconnect; a connection keeps the identity it got for its whole life.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::protocol::HubToken;
use crate::sync::lock;

/// Within this age a verified token is taken from the cache without asking the Hub
/// (many kernels starting at once cost the Hub one request per token). It is also how
/// long a revoked token may still open a connection.
const FRESH: Duration = Duration::from_secs(10);
/// A token the Hub refused is refused again without asking for this long (a kernel
/// reconnecting, or someone trying tokens, does not hammer the Hub).
const REJECTED_FOR: Duration = Duration::from_secs(10);
/// A token the Hub could not be asked about is not asked about again for this long (a
/// refused kernel reconnects at every cell run).
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);
/// Tokens remembered (each way); the oldest go first.
const CACHE_ENTRIES: usize = 4096;
/// Requests to the Hub at once.
const CONCURRENT_REQUESTS: usize = 8;
/// How long one request to the Hub may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest token asked about (Hub tokens are 32 characters).
const MAX_TOKEN_BYTES: usize = 1024;
/// Largest answer read from the Hub.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// What happens to a connection whose token the Hub does not vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HubPolicy {
    /// Refused: its records are not stored, so its cells do not run.
    Required,
    /// Accepted under the OS identity, marked as such.
    Preferred,
}

impl HubPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Preferred => "preferred",
        }
    }
}

/// The collector's Hub settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The Hub's API root, e.g. `http://hub:8081/hub/api`.
    pub api_url: String,
    /// PEM file of the CA that signed the Hub's certificate.
    pub ca_file: Option<PathBuf>,
    /// The collector's certificate and key (PEM files), for a Hub that asks for one
    /// (internal_ssl: a certificate its trust bundle accepts).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub policy: HubPolicy,
    /// How long a verified token is accepted while the Hub cannot be reached.
    pub cache_max_age: Duration,
}

impl HubOptions {
    pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the Hub API URL {0:?} is not an http:// or https:// URL")]
    Url(String),
    #[error("cannot read the Hub's CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Hub's CA file {path} holds no usable certificate: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("the client certificate {cert} and key {key} cannot be used: {reason}")]
    ClientIdentity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make the Hub client: {0}")]
    Client(String),
}

/// An HTTP client for the Hub's API: bounded in time, no redirects (tokens go to the Hub
/// and nowhere else), trusting `ca_file` besides the system's roots and presenting
/// `client_identity` (certificate, key) to a Hub that asks for one (internal_ssl).
pub fn hub_http_client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
    client_identity: Option<&(PathBuf, PathBuf)>,
) -> Result<reqwest::Client, HubError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // The token must go to the Hub and nowhere else.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("jupyter-audit/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| HubError::CaFile {
            path: path.to_path_buf(),
            source,
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| HubError::Certificate {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(HubError::Certificate {
                path: path.to_path_buf(),
                reason: "no PEM certificate in it".into(),
            });
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some((cert, key)) = client_identity {
        let unusable = |reason: String| HubError::ClientIdentity {
            cert: cert.clone(),
            key: key.clone(),
            reason,
        };
        let mut pem = std::fs::read(cert).map_err(|error| unusable(error.to_string()))?;
        pem.push(b'\n');
        pem.extend(std::fs::read(key).map_err(|error| unusable(error.to_string()))?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|error| unusable(error.to_string()))?;
        builder = builder.identity(identity);
    }
    // A key that is not the certificate's shows only here.
    builder.build().map_err(|error| match client_identity {
        Some((cert, key)) => HubError::ClientIdentity {
            cert: cert.clone(),
            key: key.clone(),
            reason: causes(error),
        },
        None => HubError::Client(causes(error)),
    })
}

/// The Hub user a token belongs to, as the Hub said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubIdentity {
    pub name: String,
    /// Present when the token may read them (a server's token may not).
    pub roles: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub admin: Option<bool>,
    /// The server the token was issued to (`""` for the default server), from its
    /// `access:servers!server=USER/NAME` scope.
    pub server: Option<String>,
    /// The Hub's id of the token (not the token): which token it was, for revocation.
    pub token_id: Option<String>,
}

/// Why a connection's token did not establish a Hub identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnverifiedReason {
    /// The proxy presented no token (no `JUPYTERHUB_API_TOKEN`).
    MissingToken,
    /// The Hub does not know the token (invalid, revoked, expired).
    TokenRejected,
    /// The token is not a user's (a service's, say).
    NotAUser,
    /// The Hub could not be asked, and the token is not in the cache.
    HubUnreachable,
}

impl UnverifiedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::TokenRejected => "token_rejected",
            Self::NotAUser => "not_a_user",
            Self::HubUnreachable => "hub_unreachable",
        }
    }
}

/// No Hub identity: why, in words for the record and the refused notebook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub reason: UnverifiedReason,
    pub detail: String,
}

/// The outcome of [`HubAttestor::attest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attestation {
    Verified(HubIdentity),
    /// Accepted under the OS identity (policy `preferred`).
    Unverified(Unverified),
    /// Refused (policy `required`).
    Refused(Unverified),
}

/// Asks the Hub who owns a token, with a cache.
#[derive(Debug)]
pub struct HubAttestor {
    client: reqwest::Client,
    user_url: String,
    policy: HubPolicy,
    cache_max_age: Duration,
    cache: Mutex<TokenCache>,
    requests: Semaphore,
}

impl HubAttestor {
    pub fn new(options: &HubOptions) -> Result<Self, HubError> {
        let api = options.api_url.trim_end_matches('/');
        if !(api.starts_with("http://") || api.starts_with("https://")) {
            return Err(HubError::Url(options.api_url.clone()));
        }
        let client = hub_http_client(
            REQUEST_TIMEOUT,
            options.ca_file.as_deref(),
            options.client_identity.as_ref(),
        )?;
        Ok(Self {
            client,
            user_url: format!("{api}/user"),
            policy: options.policy,
            cache_max_age: options.cache_max_age,
            cache: Mutex::new(TokenCache::default()),
            requests: Semaphore::new(CONCURRENT_REQUESTS),
        })
    }

    pub fn policy(&self) -> HubPolicy {
        self.policy
    }

    /// The verified tokens to save, if they changed since the last call: the cache
    /// outlives a restart of the collector, so that kernels reconnecting while the Hub is
    /// down are still known. Ages are kept as wall-clock times.
    pub fn tokens_to_save(&self) -> Option<Vec<u8>> {
        let mut cache = lock(&self.cache);
        if !std::mem::take(&mut cache.changed) {
            return None;
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let tokens = cache
            .verified
            .iter()
            .filter_map(|(key, (identity, at))| {
                let age = now.saturating_duration_since(*at);
                (age < self.cache_max_age).then(|| SavedToken {
                    sha256: hex::encode(key.0),
                    verified_at: unix_seconds(wall.checked_sub(age).unwrap_or(wall)),
                    identity: identity.clone(),
                })
            })
            .collect();
        serde_json::to_vec(&SavedTokens { tokens }).ok()
    }

    /// Takes back the tokens [`tokens_to_save`](Self::tokens_to_save) gave (those still
    /// within the cache's age); how many. A file that cannot be read is ignored: the
    /// Hub is asked again.
    pub fn restore_tokens(&self, saved: &[u8]) -> usize {
        let Ok(saved) = serde_json::from_slice::<SavedTokens>(saved) else {
            tracing::warn!("the saved Hub tokens cannot be read; the Hub will be asked again");
            return 0;
        };
        let (now, wall) = (Instant::now(), unix_seconds(SystemTime::now()));
        let mut cache = lock(&self.cache);
        let mut restored = 0;
        for token in saved.tokens {
            let age = Duration::from_secs(wall.saturating_sub(token.verified_at));
            let (Ok(Ok(key)), Some(at)) = (
                hex::decode(&token.sha256).map(<[u8; 32]>::try_from),
                now.checked_sub(age),
            ) else {
                continue;
            };
            if age < self.cache_max_age && cache.verified.len() < CACHE_ENTRIES {
                cache.verified.insert(TokenKey(key), (token.identity, at));
                restored += 1;
            }
        }
        restored
    }

    /// The Hub identity of the connection that presented `token`, or what the policy
    /// says to do without one.
    pub async fn attest(&self, token: Option<&HubToken>) -> Attestation {
        match self.identify(token).await {
            Ok(identity) => Attestation::Verified(identity),
            Err(unverified) => match self.policy {
                HubPolicy::Required => Attestation::Refused(unverified),
                HubPolicy::Preferred => Attestation::Unverified(unverified),
            },
        }
    }

    async fn identify(&self, token: Option<&HubToken>) -> Result<HubIdentity, Unverified> {
        let Some(token) = token.filter(|token| !token.secret().is_empty()) else {
            return Err(Unverified {
                reason: UnverifiedReason::MissingToken,
                detail: "the kernel presented no Hub API token (JUPYTERHUB_API_TOKEN)".into(),
            });
        };
        // Not worth a request: no Hub issues such a token, and it could not go in a
        // header as it is.
        if !is_token_shaped(token.secret()) {
            return Err(Unverified {
                reason: UnverifiedReason::TokenRejected,
                detail: format!(
                    "the kernel's token is not a Hub token (over {MAX_TOKEN_BYTES} bytes, or \
                     characters other than printable ASCII)"
                ),
            });
        }
        let key = TokenKey::of(token);
        let now = Instant::now();
        let fresh = FRESH.min(self.cache_max_age);
        if let Some(known) = lock(&self.cache).known(&key, now, fresh) {
            return known;
        }
        let asked = {
            // Bounded: a crowd of connections waits here rather than opening sockets.
            let _turn = self.requests.acquire().await;
            // Another connection may have asked for the same token meanwhile.
            if let Some(known) = lock(&self.cache).known(&key, Instant::now(), fresh) {
                return known;
            }
            self.ask(token).await
        };
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        match asked {
            Ok(identity) => {
                cache.verified(key, identity.clone(), now);
                Ok(identity)
            }
            Err(unverified) if unverified.reason == UnverifiedReason::HubUnreachable => {
                match cache.verified_within(&key, now, self.cache_max_age) {
                    Some(identity) => {
                        tracing::warn!(detail = %unverified.detail, user = %identity.name, "the Hub cannot be reached; a token it verified before is accepted");
                        Ok(identity)
                    }
                    None => {
                        cache.unreachable(key, unverified.clone(), now);
                        Err(unverified)
                    }
                }
            }
            Err(unverified) => {
                cache.rejected(key, unverified.clone(), now);
                Err(unverified)
            }
        }
    }

    /// One request to the Hub.
    async fn ask(&self, token: &HubToken) -> Result<HubIdentity, Unverified> {
        let unreachable = |detail: String| Unverified {
            reason: UnverifiedReason::HubUnreachable,
            detail,
        };
        // Marked sensitive: its Debug form hides it, whatever logs at trace level.
        let mut authorization =
            reqwest::header::HeaderValue::from_str(&format!("token {}", token.secret())).map_err(
                |_| Unverified {
                    reason: UnverifiedReason::TokenRejected,
                    detail: "the kernel's token cannot be sent in a header".into(),
                },
            )?;
        authorization.set_sensitive(true);
        let response = self
            .client
            .get(&self.user_url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
            // Without the URL: it is the admin's, but the error text goes to notebooks.
            .map_err(|error| unreachable(format!("cannot reach the Hub: {}", causes(error))))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Unverified {
                reason: UnverifiedReason::TokenRejected,
                detail: format!(
                    "the Hub did not accept the kernel's token (HTTP {})",
                    status.as_u16()
                ),
            });
        }
        if !status.is_success() {
            return Err(unreachable(format!(
                "the Hub answered HTTP {} to who-owns-this-token",
                status.as_u16()
            )));
        }
        let body = read_capped(response)
            .await
            .map_err(|detail| unreachable(format!("cannot read the Hub's answer: {detail}")))?;
        let model: UserModel = serde_json::from_slice(&body).map_err(|error| {
            unreachable(format!("the Hub's answer is not a user model: {error}"))
        })?;
        model.identity()
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Whether `token` could be a Hub API token: printable ASCII without spaces, and short.
fn is_token_shaped(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES && token.bytes().all(|byte| byte.is_ascii_graphic())
}

/// An error and its causes, in one line ("error sending request" alone says little),
/// without the URL: it is the admin's, but this text reaches notebooks.
fn causes(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // What the TLS alerts mean for the admin who reads this.
    let hints = [
        (
            "CertificateRequired",
            "the Hub asks for a client certificate: --hub-client-cert/--hub-client-key",
        ),
        (
            "UnknownCA",
            "the Hub does not trust the collector's client certificate",
        ),
        (
            "UnknownIssuer",
            "the Hub's certificate is not signed by the CA of --hub-ca-file",
        ),
        (
            "NotValidForName",
            "the Hub's certificate does not name the host of --hub-api-url",
        ),
    ];
    for (alert, hint) in hints {
        if text.contains(alert) {
            text = format!("TLS with the Hub failed ({hint}): {text}");
            break;
        }
    }
    text
}

/// The body of a response, up to [`MAX_ANSWER_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("over {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What `GET /user` returns, as far as the trail uses it.
#[derive(Debug, Deserialize)]
struct UserModel {
    kind: Option<String>,
    name: Option<String>,
    roles: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    admin: Option<bool>,
    #[serde(default)]
    scopes: Vec<String>,
    token_id: Option<String>,
}

impl UserModel {
    fn identity(self) -> Result<HubIdentity, Unverified> {
        let kind = self.kind.unwrap_or_default();
        let name = self.name.filter(|name| !name.is_empty());
        let (true, Some(name)) = (kind == "user", name) else {
            return Err(Unverified {
                reason: UnverifiedReason::NotAUser,
                detail: format!(
                    "the kernel's token belongs to a Hub {}, not to a user",
                    if kind.is_empty() {
                        "owner of no kind"
                    } else {
                        &kind
                    }
                ),
            });
        };
        let server = server_of(&self.scopes, &name);
        Ok(HubIdentity {
            name,
            roles: self.roles,
            groups: self.groups,
            admin: self.admin,
            server,
            token_id: self.token_id,
        })
    }
}

/// The server a token was issued for, from its `access:servers!server=USER/NAME` scope
/// (a server's own token has exactly one).
fn server_of(scopes: &[String], user: &str) -> Option<String> {
    let prefix = format!("access:servers!server={user}/");
    let mut servers = scopes
        .iter()
        .filter_map(|scope| scope.strip_prefix(&prefix));
    match (servers.next(), servers.next()) {
        (Some(server), None) => Some(server.to_owned()),
        _ => None,
    }
}

/// A token's SHA-256: what the cache keeps instead of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenKey([u8; 32]);

impl TokenKey {
    fn of(token: &HubToken) -> Self {
        Self(Sha256::digest(token.secret().as_bytes()).into())
    }
}

#[derive(Debug, Default)]
struct TokenCache {
    verified: HashMap<TokenKey, (HubIdentity, Instant)>,
    rejected: HashMap<TokenKey, (Unverified, Instant)>,
    /// `verified` changed since it was last saved.
    changed: bool,
}

/// The verified tokens as the collector keeps them across restarts (`hub-tokens.json`):
/// SHA-256 of each token, whom the Hub said it belongs to, and when (Unix seconds).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedTokens {
    tokens: Vec<SavedToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedToken {
    sha256: String,
    verified_at: u64,
    identity: HubIdentity,
}

impl TokenCache {
    /// A verdict younger than `fresh`, if there is one.
    fn known(
        &self,
        key: &TokenKey,
        now: Instant,
        fresh: Duration,
    ) -> Option<Result<HubIdentity, Unverified>> {
        if let Some((identity, at)) = self.verified.get(key)
            && now.saturating_duration_since(*at) < fresh
        {
            return Some(Ok(identity.clone()));
        }
        if let Some((unverified, at)) = self.rejected.get(key) {
            let for_how_long = match unverified.reason {
                UnverifiedReason::HubUnreachable => UNREACHABLE_FOR,
                _ => REJECTED_FOR,
            };
            if now.saturating_duration_since(*at) < for_how_long {
                return Some(Err(unverified.clone()));
            }
        }
        None
    }

    fn verified_within(&self, key: &TokenKey, now: Instant, age: Duration) -> Option<HubIdentity> {
        self.verified
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < age)
            .map(|(identity, _)| identity.clone())
    }

    fn verified(&mut self, key: TokenKey, identity: HubIdentity, now: Instant) {
        self.rejected.remove(&key);
        make_room(&mut self.verified, &key);
        self.verified.insert(key, (identity, now));
        self.changed = true;
    }

    /// The Hub could not be asked and the token is not known: said again for a moment.
    /// What the Hub verified before stays.
    fn unreachable(&mut self, key: TokenKey, unverified: Unverified, now: Instant) {
        make_room(&mut self.rejected, &key);
        self.rejected.insert(key, (unverified, now));
    }

    /// The Hub said no: the token is forgotten as verified (revoked means revoked).
    fn rejected(&mut self, key: TokenKey, unverified: Unverified, now: Instant) {
        if self.verified.remove(&key).is_some() {
            self.changed = true;
        }
        make_room(&mut self.rejected, &key);
        self.rejected.insert(key, (unverified, now));
    }
}

/// Drops the oldest entry when `map` is full and `key` is new.
fn make_room<T>(map: &mut HashMap<TokenKey, (T, Instant)>, key: &TokenKey) {
    if map.len() < CACHE_ENTRIES || map.contains_key(key) {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, (_, at))| *at)
        .map(|(key, _)| *key)
    {
        map.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> HubToken {
        HubToken::new(text.to_owned())
    }

    fn alice() -> HubIdentity {
        HubIdentity {
            name: "alice".into(),
            roles: None,
            groups: Some(vec![]),
            admin: None,
            server: Some(String::new()),
            token_id: Some("a1".into()),
        }
    }

    #[test]
    fn a_servers_token_names_its_user_and_server() {
        let model: UserModel = serde_json::from_value(serde_json::json!({
            "kind": "user", "name": "alice", "groups": ["lab"], "token_id": "a7",
            "scopes": ["access:servers!server=alice/", "users:activity!user=alice"],
        }))
        .expect("model");
        let identity = model.identity().expect("a user");
        assert_eq!(identity.name, "alice");
        assert_eq!(identity.server.as_deref(), Some(""));
        assert_eq!(identity.groups, Some(vec!["lab".to_owned()]));
        assert_eq!(identity.roles, None);
        assert_eq!(identity.token_id.as_deref(), Some("a7"));
    }

    #[test]
    fn a_services_token_is_not_a_user() {
        let model: UserModel =
            serde_json::from_value(serde_json::json!({"kind": "service", "name": "grader"}))
                .expect("model");
        let refused = model.identity().expect_err("not a user");
        assert_eq!(refused.reason, UnverifiedReason::NotAUser);
        assert!(refused.detail.contains("service"), "{}", refused.detail);
    }

    #[test]
    fn server_scopes_of_another_user_or_several_name_no_server() {
        let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            server_of(&scopes(&["access:servers!server=alice/gpu"]), "alice").as_deref(),
            Some("gpu")
        );
        assert_eq!(
            server_of(&scopes(&["access:servers!server=alicex/"]), "alice"),
            None
        );
        assert_eq!(
            server_of(
                &scopes(&[
                    "access:servers!server=alice/",
                    "access:servers!server=alice/b"
                ]),
                "alice"
            ),
            None
        );
    }

    #[test]
    fn the_cache_keeps_hashes_and_forgets_a_revoked_token() {
        let mut cache = TokenCache::default();
        let key = TokenKey::of(&token("secret-token"));
        let start = Instant::now();
        cache.verified(key, alice(), start);
        let later = start + Duration::from_secs(120);
        assert!(
            cache.known(&key, later, FRESH).is_none(),
            "stale: ask again"
        );
        assert_eq!(
            cache.verified_within(&key, later, Duration::from_secs(3600)),
            Some(alice())
        );
        assert_eq!(
            cache.verified_within(&key, later, Duration::from_secs(60)),
            None
        );
        let refused = Unverified {
            reason: UnverifiedReason::TokenRejected,
            detail: "no".into(),
        };
        cache.rejected(key, refused.clone(), later);
        assert_eq!(cache.known(&key, later, FRESH), Some(Err(refused)));
        assert_eq!(
            cache.verified_within(&key, later, Duration::from_secs(3600)),
            None
        );
        let debug = format!("{cache:?}");
        assert!(!debug.contains("secret-token"));
    }

    #[test]
    fn verified_tokens_outlive_a_restart_within_their_age_and_hashed() {
        let options = |max_age| HubOptions {
            api_url: "http://127.0.0.1:9/hub/api".into(),
            ca_file: None,
            client_identity: None,
            policy: HubPolicy::Required,
            cache_max_age: max_age,
        };
        let before = HubAttestor::new(&options(Duration::from_secs(3600))).expect("attestor");
        assert!(before.tokens_to_save().is_none(), "nothing changed");
        let key = TokenKey::of(&token("secret-token"));
        lock(&before.cache).verified(key, alice(), Instant::now());
        let saved = before.tokens_to_save().expect("changed");
        assert!(before.tokens_to_save().is_none(), "saved once");
        let text = String::from_utf8(saved.clone()).expect("utf-8");
        assert!(!text.contains("secret-token"), "{text}");
        assert!(text.contains(&hex::encode(key.0)), "{text}");

        let after = HubAttestor::new(&options(Duration::from_secs(3600))).expect("attestor");
        assert_eq!(after.restore_tokens(&saved), 1);
        let now = Instant::now();
        assert_eq!(
            lock(&after.cache).verified_within(&key, now, Duration::from_secs(3600)),
            Some(alice())
        );
        // Past their age (here: none left), or unreadable: not taken back.
        let strict = HubAttestor::new(&options(Duration::ZERO)).expect("attestor");
        assert_eq!(strict.restore_tokens(&saved), 0);
        assert_eq!(after.restore_tokens(b"not json"), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = TokenCache::default();
        let start = Instant::now();
        for n in 0..CACHE_ENTRIES + 10 {
            let key = TokenKey::of(&token(&format!("t{n}")));
            cache.verified(key, alice(), start + Duration::from_millis(n as u64));
        }
        assert_eq!(cache.verified.len(), CACHE_ENTRIES);
        let newest = TokenKey::of(&token(&format!("t{}", CACHE_ENTRIES + 9)));
        assert!(cache.verified.contains_key(&newest));
        assert!(!cache.verified.contains_key(&TokenKey::of(&token("t0"))));
    }

    #[tokio::test]
    async fn without_a_token_the_policy_decides_and_the_hub_is_not_asked() {
        let options = |policy| HubOptions {
            // Nothing listens there: asking would fail as unreachable, not as missing.
            api_url: "http://127.0.0.1:9/hub/api".into(),
            ca_file: None,
            client_identity: None,
            policy,
            cache_max_age: HubOptions::DEFAULT_CACHE_MAX_AGE,
        };
        let required = HubAttestor::new(&options(HubPolicy::Required)).expect("attestor");
        match required.attest(None).await {
            Attestation::Refused(unverified) => {
                assert_eq!(unverified.reason, UnverifiedReason::MissingToken)
            }
            other => panic!("{other:?}"),
        }
        let preferred = HubAttestor::new(&options(HubPolicy::Preferred)).expect("attestor");
        assert!(matches!(
            preferred.attest(Some(&token(""))).await,
            Attestation::Unverified(Unverified {
                reason: UnverifiedReason::MissingToken,
                ..
            })
        ));
        assert!(matches!(
            preferred.attest(Some(&token("t"))).await,
            Attestation::Unverified(Unverified {
                reason: UnverifiedReason::HubUnreachable,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_token_no_hub_issues_is_rejected_without_asking() {
        let attestor = HubAttestor::new(&HubOptions {
            // Nothing listens there: asking would say unreachable.
            api_url: "http://127.0.0.1:9/hub/api".into(),
            ca_file: None,
            client_identity: None,
            policy: HubPolicy::Required,
            cache_max_age: HubOptions::DEFAULT_CACHE_MAX_AGE,
        })
        .expect("attestor");
        for text in [
            "a\nAuthorization: token b",
            "tab\there",
            "é",
            &"x".repeat(2000),
        ] {
            match attestor.attest(Some(&token(text))).await {
                Attestation::Refused(unverified) => {
                    assert_eq!(
                        unverified.reason,
                        UnverifiedReason::TokenRejected,
                        "{text:?}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_url_that_is_not_http_is_refused() {
        let options = HubOptions {
            api_url: "hub:8081/hub/api".into(),
            ca_file: None,
            client_identity: None,
            policy: HubPolicy::Required,
            cache_max_age: HubOptions::DEFAULT_CACHE_MAX_AGE,
        };
        assert!(matches!(HubAttestor::new(&options), Err(HubError::Url(_))));
    }
}
