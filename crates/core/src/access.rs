//! How Baton gets into a service: the [`Credentials`] it presents and the [`TlsSettings`] it
//! checks the service's certificate with and proves its own identity by.
//!
//! Both name secrets ([`SecretName`]) rather than hold them: a spec travels through the
//! registry, `GetService` answers and the CLI, a secret's value only lives with the server
//! that calls the service.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::SecretName;

/// What Baton presents to a service on every call, by reference to a secret.
///
/// Written `{kind: bearer, secret: NAME}`, `{kind: basic, username: USER, secret: NAME}` or
/// `{kind: header, header: x-api-key, secret: NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Credentials {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The token's secret.
        secret: SecretName,
    },
    /// `Authorization: Basic base64(<username>:<secret>)`.
    Basic {
        /// The user name, sent as it is.
        username: String,
        /// The password's secret.
        secret: SecretName,
    },
    /// `<header>: <secret>`, e.g. an API key.
    Header {
        /// The header's name, lowercase.
        header: String,
        /// The value's secret.
        secret: SecretName,
    },
}

impl Credentials {
    /// The secret the credentials refer to.
    pub fn secret(&self) -> &SecretName {
        match self {
            Self::Bearer { secret } | Self::Basic { secret, .. } | Self::Header { secret, .. } => secret,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            Self::Bearer { .. } => Ok(()),
            Self::Basic { username, .. } => {
                if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
                    return Err(Error::invalid(
                        "credentials.username",
                        username,
                        "must be non-empty, without ':' or control characters",
                    ));
                }
                Ok(())
            }
            Self::Header { header, .. } => {
                check_header_name("credentials.header", header)?;
                // `authorization` is allowed here: `Authorization: Token <key>` is a common scheme.
                if header != "authorization" && is_reserved_header(header) {
                    return Err(Error::invalid("credentials.header", header, "is a header Baton sets itself"));
                }
                Ok(())
            }
        }
    }
}

/// How Baton checks an `https` service's certificate and which certificate it presents.
///
/// Written `{ca: NAME, client_cert: NAME, client_key: NAME}`, every part optional; each names
/// a secret holding PEM. The CA certificates are trusted besides the system's roots and the
/// server's `--services-ca` bundle; a client certificate and key (both or neither) are
/// presented to services that ask for one (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificates (PEM) to trust for this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretName>,
    /// The client certificate chain (PEM), leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<SecretName>,
    /// The client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<SecretName>,
}

impl TlsSettings {
    /// True when nothing is set: system roots, the server's bundle, no client certificate.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// Every secret the settings name.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretName> {
        [&self.ca, &self.client_cert, &self.client_key].into_iter().flatten()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => Err(Error::invalid("tls.client_key", "", "client_cert needs client_key")),
            (None, Some(key)) => {
                Err(Error::invalid("tls.client_cert", "", format!("client_key {key} needs client_cert")))
            }
            _ => Ok(()),
        }
    }
}

/// Headers Baton sets on every call, which neither credentials nor a step may set.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "authorization",
];

/// True for a header (or gRPC metadata key) Baton sets itself: the transport's, the
/// idempotency key, `x-baton-*`, trace context, `authorization` and gRPC's own `grpc-*`.
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name)
        || name.starts_with("x-baton-")
        || name.starts_with("grpc-")
        || name.starts_with(':')
}

/// Checks a header name: a lowercase HTTP token (`[a-z0-9!#$%&'*+.^_`|~-]+`).
pub fn check_header_name(field: &str, name: &str) -> Result<()> {
    let token = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "!#$%&'*+.^_`|~-".contains(c);
    if name.is_empty() || name.len() > 256 || !name.chars().all(token) {
        return Err(Error::invalid(field, name, "must be a lowercase header name (a-z, 0-9, and !#$%&'*+.^_`|~-)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(credentials: serde_json::Value, expected: Option<&str>) {
        let got = serde_json::from_value::<Credentials>(credentials.clone())
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
            .err();
        match (got.as_deref(), expected) {
            (None, None) => {}
            (Some(got), Some(want)) => assert!(got.contains(want), "{credentials}: {got:?} lacks {want:?}"),
            (got, want) => panic!("{credentials}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn credentials_name_a_secret_and_a_valid_header() {
        check(serde_json::json!({"kind": "bearer", "secret": "pay-token"}), None);
        check(serde_json::json!({"kind": "basic", "username": "baton", "secret": "pay-password"}), None);
        check(serde_json::json!({"kind": "header", "header": "x-api-key", "secret": "k"}), None);
        check(serde_json::json!({"kind": "header", "header": "authorization", "secret": "k"}), None);
        check(serde_json::json!({"kind": "bearer", "secret": "Pay"}), Some(r#"invalid secret "Pay""#));
        check(serde_json::json!({"kind": "bearer", "token": "abc"}), Some("unknown field `token`"));
        check(serde_json::json!({"kind": "oauth", "secret": "a"}), Some("unknown variant `oauth`"));
        check(
            serde_json::json!({"kind": "basic", "username": "a:b", "secret": "p"}),
            Some(r#"invalid credentials.username "a:b""#),
        );
        check(
            serde_json::json!({"kind": "header", "header": "X-Api-Key", "secret": "k"}),
            Some(r#"invalid credentials.header "X-Api-Key""#),
        );
        check(
            serde_json::json!({"kind": "header", "header": "idempotency-key", "secret": "k"}),
            Some("is a header Baton sets itself"),
        );
        check(serde_json::json!({"kind": "header", "header": "x-baton-step", "secret": "k"}), Some("sets itself"));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let tls = |json| serde_json::from_value::<TlsSettings>(json).unwrap().validate().err().map(|e| e.to_string());
        assert_eq!(tls(serde_json::json!({"ca": "shop-ca"})), None);
        assert_eq!(tls(serde_json::json!({"client_cert": "c", "client_key": "k"})), None);
        assert!(tls(serde_json::json!({"client_cert": "c"})).unwrap().contains("client_cert needs client_key"));
        assert!(tls(serde_json::json!({"client_key": "k"})).unwrap().contains("invalid tls.client_cert"));
    }
}
