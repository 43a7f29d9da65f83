//! Reaching the PostgreSQL server a URL names: its connection string, its password, TLS.
//!
//! The URL is libpq's, in either form: `postgresql://user@host:port/db?sslmode=…` or
//! `host=… port=… user=… dbname=… sslmode=…`. Three parameters are ours and are taken
//! out before tokio-postgres reads the rest: `sslmode` (libpq's five modes, carried out
//! with rustls), `sslrootcert` (the CA file) and `passfile`.
//!
//! A password never comes from the URL or the command line. It is read from
//! `password_file` (the password alone) when given, else from the pgpass file
//! (`passfile=`, PGPASSFILE or ~/.pgpass, libpq's format and rules).
//!
//! TLS follows libpq's meanings: `disable` never; `prefer` (the default) and `require`
//! encrypt without checking the certificate, unless `sslrootcert` is given, when the
//! chain must lead to it; `verify-ca` checks the chain, `verify-full` the chain and the
//! host name. Both `verify-*` modes need `sslrootcert`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::Host;

use super::PostgresError;

/// libpq's default socket directory on Debian, used when the URL names no host.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;

/// A server to connect to, with its credentials and TLS resolved.
#[derive(Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    /// None: no TLS (`sslmode=disable`).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The URL as given, for messages (it holds no password).
    shown: String,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// How to reach the server: its URL and where the password is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostgresOptions {
    pub url: String,
    /// A file that holds the password (alone, one line).
    pub password_file: Option<PathBuf>,
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = PostgresError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries without TLS first: not worth a downgrade path here.
            other => {
                return Err(PostgresError::Url(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// A connection string split into the parameters we carry out and the rest, which goes
/// to tokio-postgres unchanged.
#[derive(Debug, Default, PartialEq, Eq)]
struct SplitUrl {
    rest: String,
    sslmode: SslMode,
    sslrootcert: Option<PathBuf>,
    passfile: Option<PathBuf>,
}

impl SplitUrl {
    /// Takes our parameters out of `url`, in either of libpq's forms.
    fn parse(url: &str) -> Result<Self, PostgresError> {
        let mut split = SplitUrl::default();
        let mut take = |key: &str, value: String| -> Result<bool, PostgresError> {
            match key {
                "sslmode" => split.sslmode = value.parse()?,
                "sslrootcert" => split.sslrootcert = Some(PathBuf::from(value)),
                "passfile" => split.passfile = Some(PathBuf::from(value)),
                _ => return Ok(false),
            }
            Ok(true)
        };
        let rest = if url.starts_with("postgresql://") || url.starts_with("postgres://") {
            split_url_query(url, &mut take)?
        } else {
            split_key_values(url, &mut take)?
        };
        split.rest = rest;
        Ok(split)
    }
}

/// The URL without the query parameters `take` claims (it gets them percent-decoded).
fn split_url_query(
    url: &str,
    take: &mut impl FnMut(&str, String) -> Result<bool, PostgresError>,
) -> Result<String, PostgresError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_owned());
    };
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| PostgresError::Url("a URL parameter is not UTF-8".into()))
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !take(&decode(key)?, decode(value)?)? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// A `key=value …` string without the pairs `take` claims; the others are written back
/// quoted, so that any value survives.
fn split_key_values(
    text: &str,
    take: &mut impl FnMut(&str, String) -> Result<bool, PostgresError>,
) -> Result<String, PostgresError> {
    let mut kept = Vec::new();
    for (key, value) in key_values(text)? {
        if !take(&key, value.clone())? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

/// libpq's `key = value` pairs: values bare or in single quotes, `\` escapes the next
/// character. Errors never quote a value (it could be a password).
fn key_values(text: &str) -> Result<Vec<(String, String)>, PostgresError> {
    let malformed = |what: &str| PostgresError::Url(format!("malformed connection string: {what}"));
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(malformed(&format!("`{key}` has no `=`")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(malformed(&format!("the value of `{key}` is unquoted"))),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

impl PostgresTarget {
    /// Parses `options.url`, finds the password and prepares TLS. It reads the password,
    /// pgpass and CA files: make targets at start-up, not on every connection. With
    /// several hosts, pgpass is looked up for the first.
    pub fn new(options: &PostgresOptions) -> Result<Self, PostgresError> {
        let split = SplitUrl::parse(&options.url)?;
        let mut config = tokio_postgres::Config::from_str(&split.rest)
            .map_err(|e| PostgresError::Url(e.to_string()))?;
        if config.get_password().is_some() {
            return Err(PostgresError::Url(
                "the URL holds a password; keep it in a password file instead \
                 (--password-file, PGPASSFILE or ~/.pgpass)"
                    .into(),
            ));
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            config.host_path(DEFAULT_SOCKET_DIR);
        }
        if config.get_user().is_none() {
            config.user(os_user_name()?);
        }
        if let Some(path) = &options.password_file {
            config.password(read_password(path)?);
        } else if let Some(password) = pgpass_password(&config, split.passfile.as_deref()) {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("jupyter-audit");
        }
        // libpq never uses TLS on a Unix socket, whatever sslmode says.
        let only_sockets = config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| matches!(host, Host::Unix(_)));
        let mode = if only_sockets {
            SslMode::Disable
        } else {
            split.sslmode
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => None,
            mode => Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                mode,
                split.sslrootcert.as_deref(),
            )?)),
        };
        Ok(PostgresTarget {
            config,
            tls,
            shown: options.url.clone(),
        })
    }

    /// The URL, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Opens one connection; its I/O runs in a task of the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PostgresError> {
        let failed = |source: tokio_postgres::Error| {
            // tokio-postgres says only "password missing" when the server asks for one.
            let cause = std::error::Error::source(&source).map(ToString::to_string);
            if self.config.get_password().is_none() && cause.as_deref() == Some("password missing")
            {
                return PostgresError::Url(format!(
                    "{} asks for a password and none was found: give --password-file, or a \
                     pgpass entry (PGPASSFILE or ~/.pgpass, mode 0600)",
                    self.shown
                ));
            }
            PostgresError::Connect {
                target: self.shown.clone(),
                source,
            }
        };
        match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
        }
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!(%error, "PostgreSQL connection ended");
    }
}

/// The name of the user this process runs as: libpq's default user.
fn os_user_name() -> Result<String, PostgresError> {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        _ => Err(PostgresError::Url(format!(
            "no user= in the URL and uid {uid} has no name"
        ))),
    }
}

/// The password in `path`: its first line, without the line end.
/// Refused when group or others may read or write it (as libpq treats a pgpass file,
/// but an error: the operator named this file, and a shared password is a leaked one).
fn read_password(path: &Path) -> Result<String, PostgresError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|source| PostgresError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(PostgresError::PasswordFile {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "group or others have access (mode {:04o}): refused; make it 0600 or \
                     0400, owned by the collector's user",
                    metadata.permissions().mode() & 0o7777
                ),
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| PostgresError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The password the pgpass file holds for this connection (its first host), if any.
fn pgpass_password(config: &tokio_postgres::Config, passfile: Option<&Path>) -> Option<String> {
    let path = match passfile {
        Some(path) => path.to_path_buf(),
        None => match std::env::var_os("PGPASSFILE") {
            Some(path) => PathBuf::from(path),
            None => home_dir()?.join(".pgpass"),
        },
    };
    let text = read_pgpass(&path)?;
    let host = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
        // libpq looks up `localhost` for its default socket directory.
        (Some(Host::Unix(dir)), _) if dir == Path::new(DEFAULT_SOCKET_DIR) => {
            "localhost".to_owned()
        }
        (Some(Host::Unix(dir)), _) => dir.to_string_lossy().into_owned(),
        (Some(Host::Tcp(name)), _) => name.clone(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    let user = config.get_user()?;
    let dbname = config.get_dbname().unwrap_or(user);
    let wanted = PgpassKey {
        host: &host,
        port: &port.to_string(),
        dbname,
        user,
    };
    lookup_pgpass(&text, &wanted)
}

fn home_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        return Some(PathBuf::from(home));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
    Some(user.dir)
}

/// The pgpass file's text, unless it is missing, not a plain file, or readable by group
/// or others (then ignored with a warning, as libpq does).
fn read_pgpass(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file: ignored");
        return None;
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access: ignored (permissions should be 0600 or less)"
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the password file");
            None
        }
    }
}

/// What a pgpass line is matched against.
#[derive(Debug)]
struct PgpassKey<'a> {
    host: &'a str,
    port: &'a str,
    dbname: &'a str,
    user: &'a str,
}

/// One field of a pgpass line: `*` (unescaped, alone) matches anything.
#[derive(Debug, PartialEq, Eq)]
enum PgpassField {
    Any,
    Text(String),
}

impl PgpassField {
    fn matches(&self, wanted: &str) -> bool {
        match self {
            PgpassField::Any => true,
            PgpassField::Text(text) => text == wanted,
        }
    }
}

/// The password of the first line of `text` (`host:port:db:user:password`) that matches.
fn lookup_pgpass(text: &str, wanted: &PgpassKey<'_>) -> Option<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(pgpass_line)
        .find(|(fields, _)| {
            fields[0].matches(wanted.host)
                && fields[1].matches(wanted.port)
                && fields[2].matches(wanted.dbname)
                && fields[3].matches(wanted.user)
        })
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty())
}

/// The four match fields and the password of a pgpass line (`\` escapes `:` and `\`), or
/// None for a line with fewer fields.
fn pgpass_line(line: &str) -> Option<([PgpassField; 4], String)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut fields = Vec::with_capacity(4);
    let mut current = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while fields.len() < 4 {
        match chars.next()? {
            '\\' => {
                current.extend(chars.next());
                escaped_any = true;
            }
            ':' => {
                let field = if current == "*" && !escaped_any {
                    PgpassField::Any
                } else {
                    PgpassField::Text(std::mem::take(&mut current))
                };
                current.clear();
                escaped_any = false;
                fields.push(field);
            }
            c => current.push(c),
        }
    }
    let mut password = String::new();
    while let Some(c) = chars.next() {
        if c == '\\' {
            password.extend(chars.next());
        } else {
            password.push(c);
        }
    }
    let fields: [PgpassField; 4] = fields.try_into().ok()?;
    Some((fields, password))
}

/// The rustls client configuration for `mode` (not `disable`).
fn tls_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<rustls::ClientConfig, PostgresError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, rootcert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            let mode = if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            };
            return Err(PostgresError::Tls(format!(
                "sslmode={mode} needs sslrootcert=FILE: the CA certificate(s) that signed \
                 the server's certificate"
            )));
        }
        // libpq's require/prefer: encrypted, the certificate unchecked.
        (_, None) => Arc::new(AnyCertificate(provider)),
        (mode, Some(path)) => {
            let chain =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(path)?), provider)
                    .build()
                    .map_err(|e| PostgresError::Tls(e.to_string()))?;
            if mode == SslMode::VerifyFull {
                chain
            } else {
                // libpq checks the chain whenever it has a root certificate, and the
                // host name only in verify-full.
                Arc::new(ChainOnly(chain))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CA certificates in a PEM file.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, PostgresError> {
    let unusable =
        |why: String| PostgresError::Tls(format!("sslrootcert {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| unusable(e.to_string()))?;
        roots.add(cert).map_err(|e| unusable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unusable("no PEM certificate in it".into()));
    }
    Ok(roots)
}

/// `require`/`prefer` without a CA: any certificate, but the handshake signatures are
/// still checked (the session key belongs to whoever holds that certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require`/`prefer` with a CA): the chain must lead to the CA; the
/// name in the certificate is not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki compares the name only after the chain has been verified.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take_nothing(_: &str, _: String) -> Result<bool, PostgresError> {
        Ok(false)
    }

    #[test]
    fn our_parameters_are_taken_out_of_a_url() {
        let split = SplitUrl::parse(
            "postgresql://fwd@db.example:6432/audit?sslmode=verify-full&connect_timeout=5\
             &sslrootcert=%2Fetc%2Fja%2Fca.pem&passfile=/etc/ja/pgpass",
        )
        .unwrap();
        assert_eq!(split.sslmode, SslMode::VerifyFull);
        assert_eq!(split.sslrootcert, Some(PathBuf::from("/etc/ja/ca.pem")));
        assert_eq!(split.passfile, Some(PathBuf::from("/etc/ja/pgpass")));
        assert_eq!(
            split.rest,
            "postgresql://fwd@db.example:6432/audit?connect_timeout=5"
        );
        let plain = SplitUrl::parse("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(plain.rest, "postgres://u@h/db");
        assert_eq!(plain.sslmode, SslMode::Require);
        assert_eq!(
            SplitUrl::parse("postgres://u@h/db").unwrap().sslmode,
            SslMode::Prefer
        );
    }

    #[test]
    fn our_parameters_are_taken_out_of_key_values_and_the_rest_survives() {
        let split = SplitUrl::parse(
            r"host=/run/pg port = 5433 user=fwd dbname='my db' sslmode=verify-ca sslrootcert='/a b/ca.pem' application_name=it\'s",
        )
        .unwrap();
        assert_eq!(split.sslmode, SslMode::VerifyCa);
        assert_eq!(split.sslrootcert, Some(PathBuf::from("/a b/ca.pem")));
        let config = tokio_postgres::Config::from_str(&split.rest).unwrap();
        assert_eq!(config.get_dbname(), Some("my db"));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_application_name(), Some("it's"));
        assert_eq!(config.get_hosts(), &[Host::Unix(PathBuf::from("/run/pg"))]);
    }

    #[test]
    fn unknown_sslmodes_and_malformed_strings_are_refused_without_echoing_values() {
        assert!(SplitUrl::parse("host=h sslmode=allow").is_err());
        let error = key_values("host=h password='s3cret")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("password") && !error.contains("s3cret"),
            "{error}"
        );
        assert!(key_values("host").is_err());
        assert_eq!(
            split_key_values("", &mut take_nothing).unwrap(),
            String::new()
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        for url in [
            "postgresql://u:hunter2@h/db",
            "host=h user=u password=hunter2",
            "postgresql://u@h/db?password=hunter2",
        ] {
            let options = PostgresOptions {
                url: url.into(),
                password_file: None,
            };
            let error = PostgresTarget::new(&options).unwrap_err().to_string();
            assert!(error.contains("password file"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let options = PostgresOptions {
                url: format!("host=h user=u sslmode={mode}"),
                password_file: None,
            };
            let error = PostgresTarget::new(&options).unwrap_err().to_string();
            assert!(error.contains("needs sslrootcert"), "{error}");
        }
        let options = PostgresOptions {
            url: "host=h user=u sslmode=require".into(),
            password_file: None,
        };
        assert!(PostgresTarget::new(&options).is_ok());
    }

    fn key<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> PgpassKey<'a> {
        PgpassKey {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn pgpass_takes_the_first_matching_line_with_wildcards() {
        let text = "# comment\n\
                    db.example:5432:audit:fwd:first\n\
                    *:*:*:fwd:second\n\
                    *:5433:*:*:third\n\
                    short:line\n";
        let find = |k| lookup_pgpass(text, &k);
        assert_eq!(
            find(key("db.example", "5432", "audit", "fwd")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(key("other", "5432", "audit", "fwd")).as_deref(),
            Some("second")
        );
        assert_eq!(
            find(key("other", "5433", "x", "reader")).as_deref(),
            Some("third")
        );
        assert_eq!(find(key("other", "5432", "x", "reader")), None);
    }

    #[test]
    fn pgpass_escapes_colons_and_backslashes_and_a_star_can_be_literal() {
        let text = "h\\:1:5432:d\\\\b:\\*:pa\\:ss\\\\word\r\n";
        assert_eq!(
            lookup_pgpass(text, &key("h:1", "5432", "d\\b", "*")).as_deref(),
            Some("pa:ss\\word")
        );
        // An escaped star is the name `*`, not a wildcard.
        assert_eq!(
            lookup_pgpass(text, &key("h:1", "5432", "d\\b", "fwd")),
            None
        );
        // An empty password is no password.
        assert_eq!(lookup_pgpass("*:*:*:*:\n", &key("h", "1", "d", "u")), None);
    }

    #[test]
    fn pgpass_readable_by_others_is_ignored_and_socket_dirs_match_by_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(
            &path,
            "/tmp/sock:5432:*:fwd:secret\nlocalhost:5432:*:fwd:local\n",
        )
        .unwrap();
        let config =
            tokio_postgres::Config::from_str("host=/tmp/sock user=fwd dbname=audit").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(pgpass_password(&config, Some(&path)), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            pgpass_password(&config, Some(&path)).as_deref(),
            Some("secret")
        );
        let default_dir =
            tokio_postgres::Config::from_str("host=/var/run/postgresql user=fwd dbname=audit")
                .unwrap();
        assert_eq!(
            pgpass_password(&default_dir, Some(&path)).as_deref(),
            Some("local")
        );
    }
}
