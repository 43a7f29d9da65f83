//! The console over https when the Hub runs with `internal_ssl`: the Hub gives each
//! service its certificate and key (JUPYTERHUB_SSL_CERTFILE, JUPYTERHUB_SSL_KEYFILE) and
//! the CA of the Hub's internal clients (JUPYTERHUB_SSL_CLIENT_CA); the console then
//! serves https with that certificate and, like the Hub's own services, takes only
//! clients with a certificate that CA signed (the Hub's proxy, the Hub).
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and
//! runs each handshake in a task of its own (bounded in time and in number), so that a
//! slow or silent client holds up nobody else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::ConsoleError;
use super::auth::HubTls;

/// The longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 128;
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// The server's TLS configuration, when the Hub gave the console a certificate and key.
pub fn server_config(tls: &HubTls) -> Result<Option<Arc<ServerConfig>>, ConsoleError> {
    let Some((cert, key)) = &tls.identity else {
        return Ok(None);
    };
    let unusable = |path: &Path, reason: String| ConsoleError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|error| unusable(cert, error.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|error| unusable(cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(unusable(cert, "no certificate in it".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|error| unusable(key, error.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| unusable(cert, error.to_string()))?;
    let builder = match &tls.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca)
                .map_err(|error| unusable(ca, error.to_string()))?
            {
                let certificate = certificate.map_err(|error| unusable(ca, error.to_string()))?;
                roots
                    .add(certificate)
                    .map_err(|error| unusable(ca, error.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| unusable(ca, error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|error| unusable(key, error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Connections whose TLS handshake is done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` in the background; must be called inside the runtime.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(place) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let handed_to = sender.clone();
                tokio::spawn(async move {
                    let _place = place;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = handed_to.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%error, %peer, "TLS handshake failed");
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
                if sender.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (the runtime is stopping): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
