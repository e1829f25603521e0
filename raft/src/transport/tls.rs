//! Mutual TLS for the QUIC peer transport.
//!
//! Every node holds a certificate issued by the cluster CA. The node's identity is
//! carried by exactly one DNS subject alternative name of the form `node-<id>.raft`
//! (see [`node_server_name`]); the subject common name is set to `node-<id>` for humans
//! but is never used for authentication.
//!
//! * Outbound: the dialer connects with server name `node-<id>.raft` for the peer it
//!   means to reach, so rustls' WebPKI verifier only accepts a certificate chained to
//!   the cluster CA *and* naming that node. The transport checks the identity again
//!   with [`node_id_from_cert`] after the handshake.
//! * Inbound: the listener requires a client certificate chained to the cluster CA and
//!   derives the peer's node id from it with [`node_id_from_cert`].
//!
//! Only TLS 1.3 is offered, with the ring crypto provider chosen explicitly (the
//! process-wide default provider is never consulted), and ALPN [`ALPN`].

use std::fmt;
use std::io::BufReader;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::core::NodeId;

/// The ALPN protocol identifier of the peer transport, version 1.
pub const ALPN: &[u8] = b"raft/1";

const NAME_PREFIX: &str = "node-";
const NAME_SUFFIX: &str = ".raft";

/// The DNS name that identifies node `id` in its certificate (and that a dialer uses as
/// the TLS server name): `node-<id>.raft`.
pub fn node_server_name(id: NodeId) -> String {
    format!("{NAME_PREFIX}{id}{NAME_SUFFIX}")
}

/// Parses a node DNS name (`node-<id>.raft`, ASCII case-insensitive) back into its id.
///
/// The id must be canonical decimal (no sign, no leading zeros) and non-zero, so that
/// every node has exactly one name.
pub fn parse_node_name(name: &str) -> Option<NodeId> {
    let lower = name.to_ascii_lowercase();
    let digits = lower.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let id: NodeId = digits.parse().ok()?;
    (id != 0).then_some(id)
}

/// The node id a certificate was issued for, if it names exactly one node.
///
/// Looks at the DNS subject alternative names only. A certificate naming no node, or
/// naming several different nodes, yields `None`. This does **not** check the chain:
/// call it only on certificates that rustls already verified against the cluster CA
/// (for example those returned by `quinn::Connection::peer_identity`).
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut found: Option<NodeId> = None;
    for name in parsed.valid_dns_names() {
        if let Some(id) = parse_node_name(name) {
            match found {
                None => found = Some(id),
                Some(prev) if prev == id => {}
                Some(_) => return None,
            }
        }
    }
    found
}

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        /// Which input was malformed.
        what: &'static str,
        /// The parse error.
        source: std::io::Error,
    },
    /// A PEM input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// The key PEM held no private key.
    #[error("no private key found in the node key PEM")]
    NoPrivateKey,
    /// The node's own certificate does not carry the node id it is configured with.
    #[error("the node certificate names node {found:?}, but this node is {expected}")]
    IdentityMismatch {
        /// The configured node id.
        expected: NodeId,
        /// The id the certificate names, if any.
        found: Option<NodeId>,
    },
    /// rustls rejected the configuration (bad key, unusable CA certificate, ...).
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The PEM-encoded TLS material of one node.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate(s) every peer certificate must chain to.
    pub ca_pem: String,
    /// This node's certificate chain, leaf first (the leaf must name this node).
    pub cert_chain_pem: String,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The rustls configurations of one node: the server side accepts peers' connections,
/// the client side dials peers.
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    /// Server configuration: TLS 1.3, ALPN `raft/1`, client certificate required.
    pub server: Arc<rustls::ServerConfig>,
    /// Client configuration: TLS 1.3, ALPN `raft/1`, presents the node certificate and
    /// trusts only the cluster CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// The crypto provider used by the transport: ring, chosen explicitly.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

/// Builds the mutual-TLS server and client configurations of node `node_id`.
///
/// Fails if a PEM input is malformed or empty, if rustls rejects the key or the CA, or
/// if the node's own leaf certificate does not name `node_id` (a misconfiguration that
/// would otherwise only show up as every peer rejecting us).
pub fn build_tls_configs(node_id: NodeId, material: &TlsMaterial) -> Result<TlsConfigs, TlsError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&material.ca_pem, "CA certificate")? {
        roots.add(ca)?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&material.cert_chain_pem, "node certificate chain")?;
    let found = node_id_from_cert(&chain[0]);
    if found != Some(node_id) {
        return Err(TlsError::IdentityMismatch {
            expected: node_id,
            found,
        });
    }
    let key = read_key(&material.key_pem)?;

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        assert_eq!(node_server_name(7), "node-7.raft");
        assert_eq!(parse_node_name("node-7.raft"), Some(7));
        assert_eq!(parse_node_name("NODE-12.RAFT"), Some(12));
        assert_eq!(parse_node_name(&node_server_name(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn non_canonical_node_names_are_rejected() {
        for bad in [
            "node-0.raft",
            "node-07.raft",
            "node-.raft",
            "node-+7.raft",
            "node--7.raft",
            "node-7.raft.evil",
            "xnode-7.raft",
            "node-7",
            "node-18446744073709551616.raft",
        ] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(node_id_from_cert(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
