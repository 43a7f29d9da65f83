//! The console's HTTP server: the routes under the service prefix, the session check every
//! page goes through (no session: off to the Hub to log in; a scope missing: 403 saying
//! which), and the security headers every answer carries.
//!
//! What the console shows is written by notebook users (code, outputs), so every answer
//! forbids scripts, frames elsewhere and sniffing from the start. The pages themselves
//! live in [`super::pages`]; this module owns the state they share ([`Console`]), the
//! [`SignedIn`] extractor, the page shell and the headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Query, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use maud::{DOCTYPE, Markup, html};
use rand::RngCore;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use super::auth::{
    AuthError, Grant, HubClient, HubService, LOGIN_LIFETIME, PendingLogin, SCOPE_READ,
    SCOPE_READ_OUTPUTS, SESSION_LIFETIME, Session,
};
use super::index::{SessionRow, Visibility};
use super::pages;
use super::pool::IndexPool;
use super::tls::TlsListener;
use super::trail::{ReviewTrail, Reviewer, Viewed};
use super::{ConsoleError, ConsoleSource, ServeOptions};

const SESSION_COOKIE: &str = "jupyter-audit-session";
const STATE_COOKIE: &str = "jupyter-audit-oauth-state";

/// Scripts other than the console's own file, plugins, forms to elsewhere and framing
/// by other sites are off; styles and images come only from the console itself (images
/// also inline, as notebooks embed them); frames only from the console (the sandboxed
/// HTML outputs, which answer with a sandboxing CSP of their own).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'self'";

/// What every page handler shares.
#[derive(Clone)]
pub struct Console {
    pub hub: Arc<HubService>,
    client: HubClient,
    /// Encrypts and authenticates the console's cookies. New at every start: a restart
    /// means logging in again (through the Hub, usually without a prompt).
    cookie_key: Key,
    /// Signs the per-session CSRF tokens of the console's forms.
    csrf_key: Arc<[u8; 32]>,
    pub source: Arc<ConsoleSource>,
    pub index: Arc<IndexPool>,
    pub trail: ReviewTrail,
    pub health: Arc<pages::health::HealthCache>,
    /// Members of the Hub groups filtered grants name, and when the Hub was asked.
    groups: Arc<Mutex<GroupMembers>>,
}

/// Hub groups: when the Hub was asked, and who it said is in each.
type GroupMembers = HashMap<String, (Instant, Vec<String>)>;

/// How long the members of a Hub group are taken as the Hub last said.
const GROUP_MEMBERS_FOR: Duration = Duration::from_secs(60);
/// Groups whose members are remembered at once.
const MAX_GROUPS_REMEMBERED: usize = 1024;

impl Console {
    /// An address under the service prefix (`rest` without its leading `/`).
    pub fn url(&self, rest: &str) -> String {
        format!("{}{rest}", self.hub.prefix)
    }

    /// The sessions `grant` shows: all, or those of its Hub users and of the members
    /// of its groups (asked of the Hub, remembered for [`GROUP_MEMBERS_FOR`]; a group
    /// the Hub does not answer for shows nobody).
    pub async fn visibility(&self, grant: &Grant) -> Visibility {
        if grant.all {
            return Visibility::All;
        }
        let mut users = grant.users.clone();
        for group in &grant.groups {
            users.extend(self.group_members(group).await);
        }
        users.sort();
        users.dedup();
        Visibility::HubUsers(users)
    }

    async fn group_members(&self, group: &str) -> Vec<String> {
        let now = Instant::now();
        if let Ok(groups) = self.groups.lock()
            && let Some((asked, members)) = groups.get(group)
            && now.duration_since(*asked) < GROUP_MEMBERS_FOR
        {
            return members.clone();
        }
        let members = match self.client.group_members(&self.hub, group).await {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(%error, %group, "the Hub did not say who is in a group a grant names: it shows nobody (the console's token needs read:groups)");
                return Vec::new();
            }
        };
        if let Ok(mut groups) = self.groups.lock() {
            if groups.len() >= MAX_GROUPS_REMEMBERED {
                groups.clear();
            }
            groups.insert(group.to_owned(), (now, members.clone()));
        }
        members
    }

    /// The CSRF token of a signed-in session: an HMAC of who and until when.
    pub fn csrf_token(&self, session: &Session) -> String {
        use hmac::Mac;
        self.csrf_mac(session)
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Whether `token` is the CSRF token of `session` (the MAC's own constant-time check).
    pub fn csrf_matches(&self, session: &Session, token: &str) -> bool {
        use hmac::Mac;
        let (Some(mac), Ok(token)) = (self.csrf_mac(session), hex::decode(token)) else {
            return false;
        };
        mac.verify_slice(&token).is_ok()
    }

    fn csrf_mac(&self, session: &Session) -> Option<hmac::Hmac<sha2::Sha256>> {
        use hmac::{Mac, digest::KeyInit};
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.csrf_key[..]).ok()?;
        mac.update(session.user.as_bytes());
        mac.update(&[0]);
        mac.update(session.expires.to_string().as_bytes());
        Some(mac)
    }
}

#[cfg(test)]
impl Console {
    /// A console over `store` and `index` for handler tests (no Hub is asked anything).
    pub(crate) fn for_tests(
        hub: HubService,
        store: std::path::PathBuf,
        index: Arc<IndexPool>,
    ) -> Self {
        let client = HubClient::new(&hub.tls).unwrap();
        Console {
            hub: Arc::new(hub),
            client,
            cookie_key: Key::generate(),
            csrf_key: Arc::new([7; 32]),
            source: Arc::new(ConsoleSource::Store(store)),
            index,
            trail: ReviewTrail::kept_in_memory().0,
            health: Arc::new(pages::health::HealthCache::default()),
            groups: Arc::default(),
        }
    }
}

/// A signed-in reviewer holding at least `custom:jupyter-audit:read`; the rejection is
/// the login redirect or the 403 page.
pub struct SignedIn {
    pub session: Session,
    pub reviewer: Reviewer,
    /// The sessions `read` shows them.
    pub visible: Visibility,
    /// The sessions whose outputs `read-outputs` shows them; None without it.
    pub outputs: Option<Visibility>,
}

impl SignedIn {
    /// Whether `row`'s session may be shown at all.
    pub fn may_see(&self, row: &SessionRow) -> bool {
        self.visible.allows(row)
    }

    /// Whether `row`'s outputs may be shown.
    pub fn may_see_outputs(&self, row: &SessionRow) -> bool {
        self.may_see(row)
            && self
                .outputs
                .as_ref()
                .is_some_and(|outputs| outputs.allows(row))
    }
}

impl FromRequestParts<Console> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let jar = PrivateCookieJar::<Key>::from_request_parts(parts, console)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = match signed_in(console, jar, &parts.uri, &parts.headers) {
            Ok(session) => session,
            Err(response) => return Err(*response),
        };
        let Some(read) = session.grant(SCOPE_READ) else {
            return Err(refuse(console, &session, &parts.uri, SCOPE_READ).await);
        };
        let visible = console.visibility(&read).await;
        let outputs = match session.grant(SCOPE_READ_OUTPUTS) {
            Some(grant) => Some(console.visibility(&grant).await),
            None => None,
        };
        let reviewer = Reviewer {
            name: session.user.clone(),
            outputs_visible: outputs.is_some(),
            scopes: session.scopes.clone(),
        };
        Ok(SignedIn {
            session,
            reviewer,
            visible,
            outputs,
        })
    }
}

impl FromRef<Console> for Key {
    fn from_ref(console: &Console) -> Self {
        console.cookie_key.clone()
    }
}

/// Runs the console until SIGTERM or SIGINT.
pub async fn serve(options: ServeOptions) -> Result<(), ConsoleError> {
    match &options.source {
        ConsoleSource::Store(dir) if !dir.is_dir() => return Err(ConsoleError::Store(dir.clone())),
        ConsoleSource::Store(_) => {}
        // A bad URL or password file is said now, not at every catch-up.
        ConsoleSource::Postgres(postgres) => {
            crate::postgres::connect::PostgresTarget::new(postgres)?;
        }
    }
    let hub = HubService::from_env()?;
    let index_path = match options.index {
        Some(path) => path,
        None => super::default_index_path(&options.source)?,
    };
    let index =
        IndexPool::start(&options.source, &index_path).map_err(|error| ConsoleError::Index {
            path: index_path.clone(),
            reason: error.to_string(),
        })?;
    tracing::info!(index = %index_path.display(), "console index");
    let mut csrf_key = [0u8; 32];
    rand::rng().fill_bytes(&mut csrf_key);
    let console = Console {
        client: HubClient::new(&hub.tls)?,
        cookie_key: new_cookie_key()?,
        csrf_key: Arc::new(csrf_key),
        source: Arc::new(options.source),
        hub: Arc::new(hub),
        index,
        trail: ReviewTrail::connect(options.collector_socket),
        health: Arc::new(pages::health::HealthCache::default()),
        groups: Arc::default(),
    };
    let listen = console.hub.listen.clone();
    let prefix = console.hub.prefix.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| ConsoleError::Listen {
            address: listen.clone(),
            source,
        })?;
    // Under the Hub's internal_ssl the service is reached over https with the
    // certificate the Hub made for it.
    match super::tls::server_config(&console.hub.tls)? {
        Some(config) => {
            let listener = TlsListener::new(listener, config).map_err(ConsoleError::Server)?;
            tracing::info!(%listen, %prefix, "review console listening (https)");
            axum::serve(listener, router(console))
                .with_graceful_shutdown(stopped())
                .await
                .map_err(ConsoleError::Server)
        }
        None => {
            tracing::info!(%listen, %prefix, "review console listening");
            axum::serve(listener, router(console))
                .with_graceful_shutdown(stopped())
                .await
                .map_err(ConsoleError::Server)
        }
    }
}

fn new_cookie_key() -> Result<Key, ConsoleError> {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    Key::try_from(&bytes[..]).map_err(|error| ConsoleError::HttpClient(error.to_string()))
}

async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn router(console: Console) -> Router {
    let prefix = console.hub.prefix.clone();
    // One console per process: a second router (tests) keeps the first address.
    let _ = BARE_STYLESHEET.set(console.url("static/console.css"));
    let at = |rest: &str| format!("{prefix}{rest}");
    let mut routes = Router::new()
        .route(&prefix, get(pages::sessions::list))
        .route(&at("user/{name}"), get(pages::sessions::timeline))
        .route(&at("session/{id}"), get(pages::session::show))
        .route(
            &at("session/{id}/output/{sequence}"),
            get(pages::session::output),
        )
        .route(&at("session/{id}/download"), get(pages::download::download))
        .route(&at("session/{id}/mark"), post(pages::session::mark))
        .route(&at("search"), get(pages::search::search))
        .route(&at("health"), get(pages::health::health))
        .route(&at("running"), get(pages::running::running))
        .route(&at("running/fragment"), get(pages::running::fragment))
        .route(&at("static/{file}"), get(pages::static_file))
        .route(&at("logout"), get(logout))
        .route(&console.hub.callback_path, get(oauth_callback));
    let bare = prefix.trim_end_matches('/');
    if !bare.is_empty() {
        let to = prefix.clone();
        routes = routes.route(bare, get(move || async move { Redirect::to(&to) }));
    }
    let header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    routes
        .fallback(not_found)
        .with_state(console)
        // Not overriding: the output route answers with a stricter, sandboxing policy.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(header::REFERRER_POLICY, "no-referrer"))
        .layer(header(header::X_FRAME_OPTIONS, "SAMEORIGIN"))
        // Pages show the trail: no copies in shared caches or the browser's.
        .layer(header(header::CACHE_CONTROL, "no-store"))
}

/// The signed-in Hub user, or where to send the browser instead (the Hub's login).
fn signed_in(
    console: &Console,
    jar: PrivateCookieJar,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Session, Box<Response>> {
    let session = jar
        .get(SESSION_COOKIE)
        .and_then(|cookie| serde_json::from_str::<Session>(cookie.value()).ok())
        .filter(Session::is_valid);
    match session {
        None => Err(Box::new(start_login(console, jar, uri, headers))),
        Some(session) => Ok(session),
    }
}

/// The 403 for a signed-in Hub user without `needs`, put on the record first (see
/// [`ReviewTrail::denied`]); the refusal stands whether or not the record could be
/// written.
pub async fn refuse(
    console: &Console,
    session: &Session,
    uri: &Uri,
    needs: &'static str,
) -> Response {
    let viewed = asked_view(console, uri).await;
    refuse_view(console, session, viewed, needs).await
}

/// [`refuse`] when the handler knows what was asked.
pub async fn refuse_view(
    console: &Console,
    session: &Session,
    viewed: Viewed,
    needs: &'static str,
) -> Response {
    match console
        .trail
        .denied(&session.user, &session.scopes, viewed)
        .await
    {
        Ok(recorded) => {
            tracing::info!(user = %session.user, missing = needs, recorded, "page refused");
        }
        Err(error) => {
            tracing::warn!(%error, user = %session.user, "a refused page could not be recorded");
        }
    }
    forbidden(&session.user, needs)
}

/// Which page `uri` asks for, as a view's record names it (the session's
/// `jupyter.session_id` looked up in the index).
async fn asked_view(console: &Console, uri: &Uri) -> Viewed {
    let rest = uri
        .path()
        .strip_prefix(console.hub.prefix.as_str())
        .unwrap_or_default();
    let query = uri.query().unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').collect();
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let session_id = |row: &str| {
        let row = row.parse::<i64>().ok();
        async move {
            let Some(id) = row else {
                return String::new();
            };
            match console.index.query(move |index| index.session(id)).await {
                Ok(Some(session)) => session.session_id,
                _ => String::new(),
            }
        }
    };
    match parts.as_slice() {
        ["user", name, ..] => Viewed::Timeline {
            user: decoded(name),
        },
        ["session", row, "output", sequence, ..] => Viewed::Output {
            session_id: session_id(row).await,
            sequence: sequence.parse().unwrap_or_default(),
        },
        ["session", row, "download", ..] => Viewed::Download {
            session_id: session_id(row).await,
            outputs: false,
        },
        ["session", row, ..] => Viewed::Session {
            session_id: session_id(row).await,
            outputs: false,
        },
        ["search", ..] => Viewed::Search {
            query: query_value(query, "q"),
        },
        ["health", ..] => Viewed::Health,
        ["running", ..] => Viewed::Running,
        _ => Viewed::Sessions {
            filters: query.to_owned(),
        },
    }
}

/// The value of `name` in a query string, decoded ("" when absent).
fn query_value(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

fn start_login(
    console: &Console,
    jar: PrivateCookieJar,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let hub = &console.hub;
    let asked = uri
        .path_and_query()
        .map_or(hub.prefix.as_str(), |path| path.as_str());
    let pending = PendingLogin::new(hub.safe_next(asked));
    let Ok(value) = serde_json::to_string(&pending) else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Login could not start.");
    };
    let cookie = cookie(
        hub,
        secure(hub, headers),
        STATE_COOKIE,
        value,
        LOGIN_LIFETIME.as_secs(),
    );
    let location = hub.authorize_redirect(&pending);
    (jar.add(cookie), Redirect::to(&location)).into_response()
}

/// Browsers reach the console over https: the Hub's environment says so, or the proxy
/// in front of it does (configurable-http-proxy sets X-Forwarded-Proto). A forged header
/// can only make the cookies stricter.
fn secure(hub: &HubService, headers: &HeaderMap) -> bool {
    hub.https
        || headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|proto| proto.split(',').next().map(str::trim) == Some("https"))
}

fn cookie(
    hub: &HubService,
    secure: bool,
    name: &'static str,
    value: String,
    max_age: u64,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(hub.prefix.clone())
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(time::Duration::seconds(
            i64::try_from(max_age).unwrap_or(i64::MAX),
        ))
        .build()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

async fn oauth_callback(
    State(console): State<Console>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let hub = &console.hub;
    let pending = jar
        .get(STATE_COOKIE)
        .and_then(|cookie| serde_json::from_str::<PendingLogin>(cookie.value()).ok());
    let jar = jar.remove(Cookie::build(STATE_COOKIE).path(hub.prefix.clone()));
    let Some(pending) = pending.filter(|pending| {
        query
            .state
            .as_deref()
            .is_some_and(|state| pending.matches(state))
    }) else {
        return (
            jar,
            error_page(
                StatusCode::BAD_REQUEST,
                "This login was not started here or took too long. Open the console again.",
            ),
        )
            .into_response();
    };
    if let Some(error) = query.error {
        tracing::info!(%error, "the Hub did not grant a login");
        return (
            jar,
            error_page(StatusCode::FORBIDDEN, "The Hub did not grant the login."),
        )
            .into_response();
    }
    let Some(code) = query.code else {
        return (
            jar,
            error_page(StatusCode::BAD_REQUEST, "The Hub sent no code."),
        )
            .into_response();
    };
    match console.client.finish_login(hub, &pending, &code).await {
        Ok(session) => {
            tracing::info!(user = %session.user, scopes = ?session.scopes, "signed in");
            let Ok(value) = serde_json::to_string(&session) else {
                return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Login failed.");
            };
            let jar = jar.add(cookie(
                hub,
                secure(hub, &headers),
                SESSION_COOKIE,
                value,
                SESSION_LIFETIME.as_secs(),
            ));
            (jar, Redirect::to(hub.safe_next(&pending.next))).into_response()
        }
        Err(AuthError::NoAccess) => (
            jar,
            error_page(
                StatusCode::FORBIDDEN,
                "Your Hub account may not use this service.",
            ),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "login with the Hub failed");
            (
                jar,
                error_page(
                    StatusCode::BAD_GATEWAY,
                    "Login with the Hub failed; try again.",
                ),
            )
                .into_response()
        }
    }
}

/// `P/logout`: forgets the console's login (its session cookie) and sends the browser
/// on to the Hub's logout, which ends the Hub login too (else the next page would sign
/// the browser in again without a prompt) and deletes the Hub's OAuth tokens of that
/// login.
async fn logout(State(console): State<Console>, jar: PrivateCookieJar) -> Response {
    let hub = &console.hub;
    if let Some(session) = jar
        .get(SESSION_COOKIE)
        .and_then(|cookie| serde_json::from_str::<Session>(cookie.value()).ok())
    {
        tracing::info!(user = %session.user, "signed out");
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path(hub.prefix.clone()));
    (jar, Redirect::to(&hub.logout_url)).into_response()
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "No such page.")
}

fn forbidden(user: &str, scope: &'static str) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Forbidden",
        html! {
            h1 { "Forbidden" }
            p {
                "Your Hub account " strong { (user) } " lacks the scope "
                code #missing-scope { (scope) } ", which this page needs."
            }
            p { "A Hub admin grants it with a role (c.JupyterHub.load_roles)." }
        },
    )
}

pub fn error_page(status: StatusCode, text: &str) -> Response {
    page(
        status,
        status.canonical_reason().unwrap_or("Error"),
        html! { p { (text) } },
    )
}

/// A bare page (login errors, 403): no navigation, the console's stylesheet only.
/// The stylesheet's address for bare pages, which are answered from places that do not
/// hold the console (extractors, error paths); set once when the router is built.
static BARE_STYLESHEET: OnceLock<String> = OnceLock::new();

fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                @if let Some(stylesheet) = BARE_STYLESHEET.get() {
                    link rel="stylesheet" href=(stylesheet);
                }
            }
            body { main class="bare" { (body) } }
        }
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        document.into_string(),
    )
        .into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hub(public_url: Option<&str>) -> HubService {
        HubService::from_lookup(|name| {
            match name {
                "JUPYTERHUB_SERVICE_URL" => Some("http://127.0.0.1:10101"),
                "JUPYTERHUB_SERVICE_PREFIX" => Some("/services/jupyter-audit/"),
                "JUPYTERHUB_API_URL" => Some("http://127.0.0.1:8081/hub/api"),
                "JUPYTERHUB_API_TOKEN" => Some("secret"),
                "JUPYTERHUB_CLIENT_ID" => Some("service-jupyter-audit"),
                "JUPYTERHUB_PUBLIC_URL" => public_url,
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap()
    }

    #[test]
    fn cookies_are_secure_where_browsers_use_https() {
        let plain = hub(None);
        let mut headers = HeaderMap::new();
        assert!(!secure(&plain, &headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(secure(&plain, &headers));
        assert!(secure(
            &hub(Some("https://hub.example/")),
            &HeaderMap::new()
        ));
        let set = cookie(&plain, true, SESSION_COOKIE, "v".to_owned(), 60).to_string();
        for attribute in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/services/jupyter-audit/",
        ] {
            assert!(set.contains(attribute), "{set}");
        }
    }
}
