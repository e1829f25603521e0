//! TLS for the client channel: server authentication with the cluster CA.
//!
//! * **Node side.** The node presents its own certificate (the one it uses on the peer
//!   channel, SAN `node-<id>.raft`). Clients present none: they are authenticated, if
//!   at all, by the shared token of the hello frame.
//! * **Client side.** A client is given addresses, not node ids, and is redirected to
//!   whichever node leads, so it cannot know which name to expect. It accepts a
//!   certificate that chains to the cluster CA (full WebPKI path validation, validity
//!   period and signature checks by rustls) *and* names exactly one node
//!   (`node-<id>.raft`): it verifies the chain with that node name as the expected
//!   server name. Any node of the cluster is an acceptable server; a certificate from
//!   another CA, or a CA-signed certificate that names no node, is not.
//!
//! Only TLS 1.3 is offered, with the ring provider chosen explicitly, and ALPN
//! `bank/1`.

use std::io::BufReader;
use std::sync::Arc;

use raft::transport::tls::{crypto_provider, node_id_from_cert, node_server_name};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::protocol::ALPN;

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be parsed.
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The parse error.
        source: std::io::Error,
    },
    /// A PEM input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// The key PEM held no private key.
    #[error("no private key found in the key PEM")]
    NoPrivateKey,
    /// The node's certificate does not name a node or does not chain to the CA.
    #[error("the node certificate is unusable: {0}")]
    BadNodeCertificate(String),
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The verifier could not be built (for example an unusable CA certificate).
    #[error("verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// Reads every certificate of a PEM bundle; at least one is required.
pub fn read_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn read_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_bytes()))
        .map_err(|source| TlsError::Pem {
            what: "node key",
            source,
        })?
        .ok_or(TlsError::NoPrivateKey)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(ca_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    Ok(Arc::new(roots))
}

/// The verifier clients use: chain to the cluster CA, and name exactly one node.
#[derive(Debug)]
pub struct NodeCertVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl NodeCertVerifier {
    /// A verifier trusting the CA certificate(s) in `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Self, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, crypto_provider()).build()?;
        Ok(NodeCertVerifier { inner })
    }
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is read from the (not yet trusted) certificate only to choose which
        // name to verify against; the full verification below then checks the chain,
        // the validity period and that the certificate really carries that name.
        let id = node_id_from_cert(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ))?;
        let name = ServerName::try_from(node_server_name(id))
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The node side: TLS 1.3, ALPN `bank/1`, no client certificate, presenting the node's
/// certificate chain. Checks that the leaf names a node and chains to `ca_pem`, so a
/// misconfigured node fails at start rather than at every client's handshake.
/// Returns the configuration and the node id the certificate names.
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<(rustls::ServerConfig, u64), TlsError> {
    let chain = read_certs(cert_chain_pem, "node certificate chain")?;
    let key = read_key(key_pem)?;
    let verifier = NodeCertVerifier::new(ca_pem)?;
    let id = node_id_from_cert(&chain[0]).ok_or_else(|| {
        TlsError::BadNodeCertificate("it names no node (expected one SAN node-<id>.raft)".into())
    })?;
    let placeholder = ServerName::try_from(crate::protocol::CLIENT_SERVER_NAME)
        .map_err(|e| TlsError::BadNodeCertificate(e.to_string()))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &placeholder, &[], UnixTime::now())
        .map_err(|e| TlsError::BadNodeCertificate(format!("not trusted by the cluster CA: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok((config, id))
}

/// The client side: TLS 1.3, ALPN `bank/1`, trusting nodes certified by `ca_pem` (see
/// the [module documentation](self)).
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(NodeCertVerifier::new(ca_pem)?);
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
