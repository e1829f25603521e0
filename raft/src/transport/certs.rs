//! Generating a cluster CA and node certificates (feature `certgen`).
//!
//! Meant for tests, development clusters and the gateway's bootstrap command. The
//! certificates follow the conventions of [`super::tls`]: a node certificate carries
//! the DNS subject alternative name `node-<id>.raft` and the common name `node-<id>`,
//! and is usable for both TLS server and client authentication.
//!
//! Everything is returned as PEM strings.
//!
//! ```
//! use raft::transport::certs::ClusterCa;
//!
//! let ca = ClusterCa::generate().unwrap();
//! let node = ca.issue_node(1).unwrap();
//! let material = ca.tls_material(&node);
//! assert!(raft::transport::tls::build_tls_configs(1, &material).is_ok());
//! ```

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::CertificateDer;

use super::tls::{node_server_name, TlsMaterial};
use crate::core::NodeId;

/// The common name of CAs made by [`ClusterCa::generate`].
pub const CA_COMMON_NAME: &str = "raft cluster CA";

/// Errors generating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed (key generation, encoding or a bad PEM key).
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The CA certificate PEM could not be read or holds no certificate.
    #[error("invalid CA certificate PEM")]
    BadCaCertificate,
    /// The CA certificate and key do not belong together, or the certificate was not
    /// made by [`ClusterCa::generate`].
    #[error("the CA certificate does not match the CA key or was not made by ClusterCa")]
    CaMismatch,
    /// Node id zero is reserved.
    #[error("node id 0 is reserved")]
    ZeroNodeId,
}

/// A PEM certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A cluster certificate authority able to issue node certificates.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl ClusterCa {
    /// Generates a new self-signed CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let params = ca_params();
        let cert_pem = params.self_signed(&key)?.pem();
        let key_pem = key.serialize_pem();
        Ok(ClusterCa {
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA previously made by [`ClusterCa::generate`] from its PEM certificate
    /// and key (for example persisted by the gateway), checking that they match.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der: CertificateDer<'static> =
            rustls_pemfile::certs(&mut std::io::BufReader::new(cert_pem.as_bytes()))
                .next()
                .ok_or(CertError::BadCaCertificate)?
                .map_err(|_| CertError::BadCaCertificate)?;
        let given = webpki::EndEntityCert::try_from(&der).map_err(|_| CertError::BadCaCertificate)?;
        // Issue the same self-signed certificate again; the subject and key must match
        // what was given, otherwise certificates we issue would not chain to it.
        let params = ca_params();
        let again = params.self_signed(&key)?;
        let again = webpki::EndEntityCert::try_from(again.der()).map_err(|_| CertError::BadCaCertificate)?;
        if given.subject() != again.subject()
            || given.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice()
        {
            return Err(CertError::CaMismatch);
        }
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM. This is what every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM. Keep it secret; nodes do not need it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for node `id` (SAN `node-<id>.raft`, CN `node-<id>`), valid
    /// for TLS server and client authentication, with a fresh key.
    pub fn issue_node(&self, id: NodeId) -> Result<IssuedCert, CertError> {
        if id == 0 {
            return Err(CertError::ZeroNodeId);
        }
        self.issue_for_names(&format!("node-{id}"), vec![node_server_name(id)])
    }

    /// Issues a certificate with an arbitrary common name and DNS names. Useful for
    /// tests of identity checks (a certificate naming no node or several nodes).
    pub fn issue_for_names(
        &self,
        common_name: &str,
        dns_names: Vec<String>,
    ) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The TLS material of a node holding `cert`: this CA plus the node's certificate
    /// and key.
    pub fn tls_material(&self, cert: &IssuedCert) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.cert_pem.clone(),
            cert_chain_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        }
    }

    /// Issues a node certificate for `id` and returns the node's complete TLS material.
    pub fn node_material(&self, id: NodeId) -> Result<TlsMaterial, CertError> {
        Ok(self.tls_material(&self.issue_node(id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::{build_tls_configs, node_id_from_cert};
    use rustls::client::danger::ServerCertVerifier;

    fn leaf_der(pem: &str) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut std::io::BufReader::new(pem.as_bytes()))
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn node_certificates_carry_their_id() {
        let ca = ClusterCa::generate().unwrap();
        let cert = ca.issue_node(42).unwrap();
        assert_eq!(node_id_from_cert(&leaf_der(&cert.cert_pem)), Some(42));
        build_tls_configs(42, &ca.tls_material(&cert)).unwrap();
        let err = build_tls_configs(41, &ca.tls_material(&cert)).unwrap_err();
        assert!(matches!(
            err,
            crate::transport::tls::TlsError::IdentityMismatch {
                expected: 41,
                found: Some(42)
            }
        ));
    }

    #[test]
    fn ambiguous_or_anonymous_certificates_name_no_node() {
        let ca = ClusterCa::generate().unwrap();
        let two = ca
            .issue_for_names("x", vec!["node-1.raft".into(), "node-2.raft".into()])
            .unwrap();
        assert_eq!(node_id_from_cert(&leaf_der(&two.cert_pem)), None);
        let none = ca.issue_for_names("x", vec!["example.com".into()]).unwrap();
        assert_eq!(node_id_from_cert(&leaf_der(&none.cert_pem)), None);
        assert!(ca.issue_node(0).is_err());
    }

    #[test]
    fn a_persisted_ca_can_be_reloaded() {
        let ca = ClusterCa::generate().unwrap();
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        // A certificate issued by the reloaded CA is trusted by the original one.
        let cert = again.issue_node(3).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(leaf_der(ca.cert_pem())).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::transport::tls::crypto_provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &leaf_der(&cert.cert_pem),
                &[],
                &rustls::pki_types::ServerName::try_from("node-3.raft").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        // ... and only for the node it names.
        assert!(verifier
            .verify_server_cert(
                &leaf_der(&cert.cert_pem),
                &[],
                &rustls::pki_types::ServerName::try_from("node-4.raft").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_err());

        let other = ClusterCa::generate().unwrap();
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(CertError::CaMismatch)
        ));
        assert!(ClusterCa::from_pem("nonsense", ca.key_pem()).is_err());
    }
}
