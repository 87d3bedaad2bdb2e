//! rustls configurations for the relay: both sides present a certificate signed by the
//! cluster CA (`[cluster.tls]`) and check the peer's against it; the client checks the
//! server's name against the owner's host name.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::config::ClusterTls;

/// Both ends of the relay's TLS.
#[derive(Clone)]
pub struct RelayTls {
    /// Accepts relayed sessions (client certificate required).
    pub acceptor: TlsAcceptor,
    /// Connects to other hosts (presents this host's certificate).
    pub connector: TlsConnector,
}

impl std::fmt::Debug for RelayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayTls")
    }
}

fn certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", p.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate in the file", p.display());
    }
    Ok(certs)
}

fn key(p: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", p.display()))?
        .with_context(|| format!("{}: no private key in the file", p.display()))
}

impl RelayTls {
    /// Reads the CA, certificate and key of `[cluster.tls]`.
    pub fn load(t: &ClusterTls) -> anyhow::Result<RelayTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&t.ca)? {
            roots
                .add(c)
                .with_context(|| format!("{}: unusable CA certificate", t.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&t.cert)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .context("[cluster.tls] client verifier")?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key(&t.key)?)
            .context("[cluster.tls] cert and key do not match")?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key(&t.key)?)
            .context("[cluster.tls] cert and key do not match")?;
        Ok(RelayTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}
