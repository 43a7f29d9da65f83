//! Login with JupyterHub: the service environment the Hub sets, the OAuth
//! authorization-code flow every Hub service uses (with PKCE, the state bound to a cookie),
//! and what a signed-in session holds (the Hub user's name and the console's scopes the Hub
//! granted to the session's token).
//!
//! The Hub's token is used once, to ask the Hub who it belongs to, and is not kept: the
//! session lives in an encrypted, authenticated cookie for [`SESSION_LIFETIME`], so a role
//! the Hub takes away takes effect at the next login at the latest.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ConsoleError;

/// Sessions, code and metadata of the trail.
pub const SCOPE_READ: &str = "custom:jupyter-audit:read";
/// The outputs too (what the notebooks displayed).
pub const SCOPE_READ_OUTPUTS: &str = "custom:jupyter-audit:read-outputs";
/// The console's scopes, the only ones a session keeps.
const CONSOLE_SCOPES: [&str; 2] = [SCOPE_READ, SCOPE_READ_OUTPUTS];

/// How long a login holds before the Hub is asked again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a login started may take to come back from the Hub.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(600);
/// How long one request to the Hub may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the Hub.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A secret that never shows in a log or a `{:?}`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// What the Hub tells a service it starts (or an admin gives an external one), read from
/// the standard `JUPYTERHUB_*` variables.
#[derive(Debug, Clone)]
pub struct HubService {
    /// Where to listen: `host:port` of JUPYTERHUB_SERVICE_URL.
    pub listen: String,
    /// The path every page is under, `/` first and last (JUPYTERHUB_SERVICE_PREFIX).
    pub prefix: String,
    /// The Hub's API root without a trailing `/`, as this service reaches it.
    pub api_url: String,
    /// The service's own Hub token; also its OAuth client secret.
    pub api_token: Secret,
    pub client_id: String,
    /// The redirect URI registered with the Hub, sent as it is.
    pub callback_url: String,
    /// Its path, where the console answers.
    pub callback_path: String,
    /// Where browsers are sent to log in (the Hub's authorize endpoint, through the proxy).
    pub authorize_url: String,
    /// Where browsers are sent after the console's logout: the Hub's own logout, which
    /// ends the Hub login and deletes the OAuth tokens issued in it.
    pub logout_url: String,
    /// A token must hold one of these to use the service at all (the Hub's access scopes
    /// for it, JUPYTERHUB_OAUTH_ACCESS_SCOPES).
    pub access_scopes: Vec<String>,
    /// Browsers reach the console over https (JUPYTERHUB_PUBLIC_URL or
    /// JUPYTERHUB_SERVICE_URL say so): cookies are `Secure`.
    pub https: bool,
    /// The Hub's internal TLS (internal_ssl), as it gives it to its services.
    pub tls: HubTls,
}

/// What the Hub gives a service under `internal_ssl`: the CA its own certificate is
/// signed by (JUPYTERHUB_SSL_CLIENT_CA) and the service's certificate and key
/// (JUPYTERHUB_SSL_CERTFILE, JUPYTERHUB_SSL_KEYFILE), with which the console asks the
/// Hub's API and serves https.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubTls {
    pub ca_file: Option<std::path::PathBuf>,
    /// Certificate and key (PEM files).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl HubService {
    pub fn from_env() -> Result<Self, ConsoleError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConsoleError> {
        let required =
            |name: &'static str| lookup(name).ok_or(ConsoleError::MissingEnvironment(name));
        let bad = |name: &'static str, reason: &str| ConsoleError::BadEnvironment {
            name,
            reason: reason.to_owned(),
        };

        let service_url = required("JUPYTERHUB_SERVICE_URL")?;
        let parsed = reqwest::Url::parse(&service_url)
            .map_err(|error| bad("JUPYTERHUB_SERVICE_URL", &error.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| bad("JUPYTERHUB_SERVICE_URL", "no host"))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("JUPYTERHUB_SERVICE_URL", "no port"))?;
        let listen = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };

        let mut prefix = lookup("JUPYTERHUB_SERVICE_PREFIX").unwrap_or_else(|| "/".to_owned());
        if !prefix.starts_with('/') {
            return Err(bad("JUPYTERHUB_SERVICE_PREFIX", "must start with /"));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }

        let api_url = required("JUPYTERHUB_API_URL")?
            .trim_end_matches('/')
            .to_owned();
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            return Err(bad("JUPYTERHUB_API_URL", "not an http(s) URL"));
        }
        let api_token = Secret::new(required("JUPYTERHUB_API_TOKEN")?);
        let client_id = required("JUPYTERHUB_CLIENT_ID")?;

        let callback_url = lookup("JUPYTERHUB_OAUTH_CALLBACK_URL")
            .unwrap_or_else(|| format!("{prefix}oauth_callback"));
        let callback_path = if callback_url.starts_with('/') {
            callback_url.clone()
        } else {
            reqwest::Url::parse(&callback_url)
                .map_err(|error| bad("JUPYTERHUB_OAUTH_CALLBACK_URL", &error.to_string()))?
                .path()
                .to_owned()
        };
        if !callback_path.starts_with(&prefix) {
            return Err(bad(
                "JUPYTERHUB_OAUTH_CALLBACK_URL",
                "not under JUPYTERHUB_SERVICE_PREFIX",
            ));
        }

        // As the Hub's own HubOAuth: JUPYTERHUB_HOST (empty: the same host, through the
        // proxy) + JUPYTERHUB_BASE_URL + hub/api/oauth2/authorize.
        let mut base_url = lookup("JUPYTERHUB_BASE_URL").unwrap_or_else(|| "/".to_owned());
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        let hub_host = lookup("JUPYTERHUB_HOST").unwrap_or_default();
        let authorize_url = format!(
            "{}{base_url}hub/api/oauth2/authorize",
            hub_host.trim_end_matches('/')
        );
        let logout_url = format!("{}{base_url}hub/logout", hub_host.trim_end_matches('/'));

        let access_scopes = match lookup("JUPYTERHUB_OAUTH_ACCESS_SCOPES")
            .or_else(|| lookup("JUPYTERHUB_OAUTH_SCOPES"))
        {
            Some(json) => serde_json::from_str::<Vec<String>>(&json)
                .map_err(|error| bad("JUPYTERHUB_OAUTH_ACCESS_SCOPES", &error.to_string()))?,
            None => match lookup("JUPYTERHUB_SERVICE_NAME") {
                Some(name) => vec![
                    format!("access:services!service={name}"),
                    "access:services".to_owned(),
                ],
                None => Vec::new(),
            },
        };

        let https = match lookup("JUPYTERHUB_PUBLIC_URL") {
            Some(public) => public.starts_with("https://"),
            None => parsed.scheme() == "https",
        };

        let identity = match (
            lookup("JUPYTERHUB_SSL_CERTFILE"),
            lookup("JUPYTERHUB_SSL_KEYFILE"),
        ) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "JUPYTERHUB_SSL_CERTFILE",
                    "needs JUPYTERHUB_SSL_KEYFILE with it, and the other way round",
                ));
            }
        };
        let tls = HubTls {
            ca_file: lookup("JUPYTERHUB_SSL_CLIENT_CA").map(Into::into),
            identity,
        };

        Ok(Self {
            listen,
            prefix,
            api_url,
            api_token,
            client_id,
            callback_url,
            callback_path,
            authorize_url,
            logout_url,
            access_scopes,
            https,
            tls,
        })
    }

    /// Where a browser goes to log in for `pending`.
    pub fn authorize_redirect(&self, pending: &PendingLogin) -> String {
        let query = [
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.callback_url.as_str()),
            ("response_type", "code"),
            ("state", pending.state.as_str()),
            ("code_challenge", &pending.challenge()),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(key, value)| format!("{key}={}", encode_query(value)))
        .collect::<Vec<_>>()
        .join("&");
        format!("{}?{query}", self.authorize_url)
    }

    /// `next` if it is a page of the console (no open redirect), else the console's home.
    pub fn safe_next<'a>(&'a self, next: &'a str) -> &'a str {
        let local = next.starts_with(&self.prefix)
            && !next.contains("//")
            && !next.contains('\\')
            && !next.chars().any(char::is_control);
        if local { next } else { &self.prefix }
    }
}

fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A login on its way through the Hub, kept in the state cookie until the Hub sends the
/// browser back: the OAuth `state` (a login is finished only by the browser that started
/// it), the PKCE verifier and the page to return to.
#[derive(Debug, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    verifier: String,
    pub next: String,
    expires: u64,
}

impl PendingLogin {
    pub fn new(next: &str) -> Self {
        Self {
            state: random_token(),
            verifier: random_token(),
            next: next.to_owned(),
            expires: unix_now() + LOGIN_LIFETIME.as_secs(),
        }
    }

    fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    /// The login the Hub's answer with `state` finishes, if this is it and still valid.
    pub fn matches(&self, state: &str) -> bool {
        let same: bool = self.state.len() == state.len()
            && self
                .state
                .bytes()
                .zip(state.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && unix_now() < self.expires
    }
}

/// A signed-in reviewer: the Hub user and which of the console's scopes their token holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub scopes: Vec<String>,
    pub expires: u64,
}

impl Session {
    pub fn is_valid(&self) -> bool {
        unix_now() < self.expires
    }

    /// Whether `scope` is held without a filter.
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|held| held == scope)
    }

    /// What `scope` grants this session, with or without filters; None when it grants
    /// nothing.
    pub fn grant(&self, scope: &str) -> Option<Grant> {
        let mut grant = Grant::default();
        let mut held = false;
        for scope_held in &self.scopes {
            if scope_held == scope {
                grant.all = true;
                held = true;
            } else if let Some((kind, name)) = scope_held
                .strip_prefix(scope)
                .and_then(|rest| rest.strip_prefix('!'))
                .and_then(|filter| filter.split_once('='))
            {
                match kind {
                    "user" => grant.users.push(name.to_owned()),
                    "group" => grant.groups.push(name.to_owned()),
                    _ => continue,
                }
                held = true;
            }
        }
        held.then_some(grant)
    }
}

/// What one of the console's scopes grants: every session, or (a filtered grant such as
/// `custom:jupyter-audit:read!group=research`) the sessions of the Hub users named and of
/// the members of the groups named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub all: bool,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// A console scope, unfiltered or with a filter the console applies (`!user=`,
/// `!group=`).
fn is_console_grant(scope: &str) -> bool {
    CONSOLE_SCOPES.iter().any(|console| {
        scope == *console
            || scope
                .strip_prefix(console)
                .and_then(|rest| rest.strip_prefix('!'))
                .is_some_and(|filter| filter.starts_with("user=") || filter.starts_with("group="))
    })
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the Hub did not answer: {0}")]
    Unreachable(String),
    #[error("the Hub refused ({status}) at {step}")]
    Refused { step: &'static str, status: u16 },
    #[error("the Hub's answer at {step} is not understood: {reason}")]
    Answer { step: &'static str, reason: String },
    #[error("the Hub's token does not give access to this service")]
    NoAccess,
}

/// The console's client of the Hub's API.
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct UserAnswer {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
}

impl HubClient {
    /// A client that reaches the Hub as `tls` says (its CA, the service's certificate);
    /// no redirects are followed: tokens go to the Hub and nowhere else.
    pub fn new(tls: &HubTls) -> Result<Self, ConsoleError> {
        let http = crate::collector::hub::hub_http_client(
            REQUEST_TIMEOUT,
            tls.ca_file.as_deref(),
            tls.identity.as_ref(),
        )
        .map_err(|error| ConsoleError::HttpClient(error.to_string()))?;
        Ok(Self { http })
    }

    /// Finishes a login: trades the Hub's `code` for a token, asks the Hub whose it is and
    /// keeps the name and the console's scopes (the token itself is dropped).
    pub async fn finish_login(
        &self,
        hub: &HubService,
        pending: &PendingLogin,
        code: &str,
    ) -> Result<Session, AuthError> {
        let form = [
            ("client_id", hub.client_id.as_str()),
            ("client_secret", hub.api_token.expose()),
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", hub.callback_url.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let body = form
            .iter()
            .map(|(key, value)| format!("{key}={}", encode_query(value)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(format!("{}/oauth2/token", hub.api_url))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let answer: TokenAnswer = read_json(response, "the token exchange").await?;
        let token = Secret::new(answer.access_token);

        let response = self
            .http
            .get(format!("{}/user", hub.api_url))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("token {}", token.expose()),
            )
            .send()
            .await
            .map_err(unreachable)?;
        let user: UserAnswer = read_json(response, "GET /user").await?;
        session_of(hub, user)
    }
}

#[derive(Deserialize)]
struct GroupAnswer {
    #[serde(default)]
    users: Vec<String>,
}

impl HubClient {
    /// The members of the Hub group `name`, asked with the service's own token (which
    /// needs `read:groups`, or `read:groups!group=NAME`, to see members).
    pub async fn group_members(
        &self,
        hub: &HubService,
        name: &str,
    ) -> Result<Vec<String>, AuthError> {
        let encoded =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        let response = self
            .http
            .get(format!("{}/groups/{encoded}", hub.api_url))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("token {}", hub.api_token.expose()),
            )
            .send()
            .await
            .map_err(unreachable)?;
        let group: GroupAnswer = read_json(response, "GET /groups").await?;
        Ok(group.users)
    }
}

fn session_of(hub: &HubService, user: UserAnswer) -> Result<Session, AuthError> {
    let may_use = hub.access_scopes.is_empty()
        || user
            .scopes
            .iter()
            .any(|scope| hub.access_scopes.contains(scope));
    if !may_use {
        return Err(AuthError::NoAccess);
    }
    // The console's scopes as the Hub granted them, filters and all (the pages apply
    // `!user=` and `!group=`; other filters grant nothing here).
    let mut scopes: Vec<String> = user
        .scopes
        .into_iter()
        .filter(|scope| is_console_grant(scope))
        .collect();
    scopes.sort();
    scopes.dedup();
    Ok(Session {
        user: user.name,
        scopes,
        expires: unix_now() + SESSION_LIFETIME.as_secs(),
    })
}

fn unreachable(error: reqwest::Error) -> AuthError {
    AuthError::Unreachable(error.without_url().to_string())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    step: &'static str,
) -> Result<T, AuthError> {
    let status = response.status();
    if !status.is_success() {
        return Err(AuthError::Refused {
            step,
            status: status.as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(AuthError::Answer {
                step,
                reason: format!("over {MAX_ANSWER_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|error| AuthError::Answer {
        step,
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn managed_service() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"),
            ("JUPYTERHUB_SERVICE_PREFIX", "/services/jupyter-audit/"),
            ("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api/"),
            ("JUPYTERHUB_API_TOKEN", "service-secret"),
            ("JUPYTERHUB_CLIENT_ID", "service-jupyter-audit"),
            (
                "JUPYTERHUB_OAUTH_CALLBACK_URL",
                "/services/jupyter-audit/oauth_callback",
            ),
            (
                "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
                r#"["access:services!service=jupyter-audit", "access:services"]"#,
            ),
            ("JUPYTERHUB_BASE_URL", "/"),
        ])
    }

    fn service(env: &HashMap<&str, &str>) -> Result<HubService, ConsoleError> {
        HubService::from_lookup(|name| env.get(name).map(|value| (*value).to_owned()))
    }

    #[test]
    fn a_managed_services_environment_gives_where_to_listen_and_log_in() {
        let hub = service(&managed_service()).unwrap();
        assert_eq!(hub.listen, "127.0.0.1:10101");
        assert_eq!(hub.api_url, "http://127.0.0.1:8081/hub/api");
        assert_eq!(hub.callback_path, "/services/jupyter-audit/oauth_callback");
        assert_eq!(hub.authorize_url, "/hub/api/oauth2/authorize");
        assert_eq!(hub.logout_url, "/hub/logout");
        assert!(!hub.https);
        assert!(!format!("{hub:?}").contains("service-secret"));
        let pending = PendingLogin::new("/services/jupyter-audit/");
        let redirect = hub.authorize_redirect(&pending);
        assert!(redirect.contains("client_id=service%2Djupyter%2Daudit"));
        assert!(redirect.contains(&format!("state={}", encode_query(&pending.state))));
        assert!(!redirect.contains(&pending.verifier));
    }

    #[test]
    fn without_the_hubs_environment_serve_says_what_is_missing() {
        let mut env = managed_service();
        env.remove("JUPYTERHUB_API_TOKEN");
        let error = service(&env).unwrap_err().to_string();
        assert!(error.contains("JUPYTERHUB_API_TOKEN"), "{error}");
    }

    #[test]
    fn only_pages_of_the_console_are_returned_to_after_login() {
        let hub = service(&managed_service()).unwrap();
        for next in [
            "https://evil.example/",
            "//evil.example/services/jupyter-audit/",
            "/services/jupyter-audit//evil.example",
            "/hub/admin",
        ] {
            assert_eq!(hub.safe_next(next), "/services/jupyter-audit/", "{next}");
        }
        assert_eq!(
            hub.safe_next("/services/jupyter-audit/sessions?user=a"),
            "/services/jupyter-audit/sessions?user=a"
        );
    }

    #[test]
    fn a_login_is_finished_only_with_its_own_state() {
        let pending = PendingLogin::new("/");
        assert!(pending.matches(&pending.state.clone()));
        assert!(!pending.matches("another"));
        assert!(!pending.matches(""));
    }

    #[test]
    fn filtered_grants_name_users_and_groups() {
        let hub = service(&managed_service()).unwrap();
        let session = session_of(
            &hub,
            UserAnswer {
                name: "rita".to_owned(),
                scopes: [
                    "access:services",
                    "custom:jupyter-audit:read!group=research",
                    "custom:jupyter-audit:read!user=bob",
                    "custom:jupyter-audit:read!server=bob/x",
                    "custom:jupyter-audit:read-outputs!user=bob",
                    "custom:jupyter-audit:readers",
                ]
                .map(str::to_owned)
                .to_vec(),
            },
        )
        .unwrap();
        let read = session.grant(SCOPE_READ).unwrap();
        assert!(!read.all);
        assert_eq!(read.users, ["bob"]);
        assert_eq!(read.groups, ["research"]);
        let outputs = session.grant(SCOPE_READ_OUTPUTS).unwrap();
        assert_eq!(
            (outputs.all, outputs.users.as_slice()),
            (false, ["bob".to_owned()].as_slice())
        );
        assert!(!session.has(SCOPE_READ));
        assert!(
            session
                .scopes
                .iter()
                .all(|scope| !scope.contains("server=") && scope != "custom:jupyter-audit:readers")
        );
    }

    #[test]
    fn a_session_keeps_only_the_consoles_unfiltered_scopes_and_needs_access() {
        let hub = service(&managed_service()).unwrap();
        let user = |scopes: &[&str]| UserAnswer {
            name: "alice".to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        };
        let session = session_of(
            &hub,
            user(&[
                "access:services!service=jupyter-audit",
                SCOPE_READ,
                "custom:jupyter-audit:read-outputs!user=bob",
                "read:users:name!user=alice",
            ]),
        )
        .unwrap();
        assert_eq!(
            session.scopes,
            vec![
                SCOPE_READ.to_owned(),
                "custom:jupyter-audit:read-outputs!user=bob".to_owned()
            ]
        );
        assert!(session.has(SCOPE_READ) && !session.has(SCOPE_READ_OUTPUTS));
        assert!(matches!(
            session_of(&hub, user(&[SCOPE_READ])),
            Err(AuthError::NoAccess)
        ));
    }
}
