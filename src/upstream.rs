//! The pooled upstream client: keep-alive connections, HTTP/1.1 and HTTP/2 by ALPN over rustls.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::body::ProxyBody;

/// The client every route shares; cheap to clone.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How the proxy talks to upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Limit on the TCP connect (TLS handshake excluded).
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response headers. Streaming bodies are
    /// not bounded by it.
    pub response_header_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Extra PEM trust anchors, added to the bundled Mozilla roots (private CAs, tests).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            extra_roots: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {path} holds no certificate")]
    EmptyCaFile { path: String },
    #[error("CA certificate in {path} rejected: {source}")]
    BadCa { path: String, source: rustls::Error },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Reads every certificate of a PEM file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamSetupError> {
    let display = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| UpstreamSetupError::CaFile {
            path: display.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(UpstreamSetupError::EmptyCaFile { path: display });
    }
    Ok(certs)
}

pub fn build_client(settings: &UpstreamSettings) -> Result<UpstreamClient, UpstreamSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &settings.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|source| UpstreamSetupError::BadCa {
                path: "extra roots".into(),
                source,
            })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    // ALPN offers h2 and http/1.1; plain-http upstreams speak HTTP/1.1.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .build(connector))
}
