//! A throwaway PKI for tests and benches (feature `test-pki`): a CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate and a cluster node's certificate (both
//! usages), each signed by the CA, all PEM.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Certificates and keys of one throwaway CA. Two `TestPki`s do not trust each other.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// A server certificate for `localhost` and `127.0.0.1`.
    pub server_cert_pem: String,
    /// Its key.
    pub server_key_pem: String,
    /// A client certificate (for mutual TLS).
    pub client_cert_pem: String,
    /// Its key.
    pub client_key_pem: String,
    /// A cluster node's certificate, for the server names: it serves, and a node presents it as
    /// a client when it forwards a call to another node under mutual TLS, so it carries both
    /// usages.
    pub node_cert_pem: String,
    /// Its key.
    pub node_key_pem: String,
}

impl TestPki {
    /// A fresh CA named `name`, with its server certificate (for `localhost` and
    /// `127.0.0.1`) and client certificate.
    pub fn new(name: &str) -> Self {
        Self::for_names(name, &["localhost", "127.0.0.1"])
    }

    /// As [`TestPki::new`], the server certificate naming `server_names` instead.
    pub fn for_names(name: &str, server_names: &[&str]) -> Self {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key")).expect("a CA certificate");
        let issue = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("valid names");
            params.distinguished_name.push(DnType::CommonName, format!("{name} {usages:?}"));
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &ca).expect("a signed certificate");
            (cert.pem(), key.serialize_pem())
        };
        let names = || server_names.iter().map(|n| (*n).to_owned()).collect();
        let (server_cert_pem, server_key_pem) = issue(names(), vec![ExtendedKeyUsagePurpose::ServerAuth]);
        let (client_cert_pem, client_key_pem) =
            issue(vec![format!("{name}-client")], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let (node_cert_pem, node_key_pem) =
            issue(names(), vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]);
        Self {
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
            node_cert_pem,
            node_key_pem,
        }
    }
}
