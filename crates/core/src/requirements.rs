//! What a caller asks of a service: [`ServiceRequirements`], and how a spec is judged against them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::service::{AuthScheme, Encryption, Protocol, Qos, ServiceSpec, check_term};

/// Security a caller requires.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityRequirements {
    /// The service must accept at least one of these (empty: any).
    pub auth_schemes: Vec<AuthScheme>,
    /// The service must offer at least this encryption.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_encryption: Option<Encryption>,
    /// The service must hold every one of these compliance tags.
    pub compliance: Vec<String>,
}

impl SecurityRequirements {
    /// True when nothing is required.
    pub fn is_empty(&self) -> bool {
        self.auth_schemes.is_empty() && self.min_encryption.is_none() && self.compliance.is_empty()
    }

    /// True when `spec` offers what is required.
    pub fn satisfied_by(&self, spec: &ServiceSpec) -> bool {
        let offered = spec.security();
        (self.auth_schemes.is_empty() || self.auth_schemes.iter().any(|s| offered.auth_schemes.contains(s)))
            && self.min_encryption.is_none_or(|min| offered.encryption >= min)
            && self.compliance.iter().all(|tag| offered.compliance.binary_search(tag).is_ok())
    }
}

/// What a caller asks of a service: every stated condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceRequirements {
    /// Every one of these capabilities.
    pub capabilities: Vec<String>,
    /// Any one of these protocols (empty: any).
    pub protocols: Vec<Protocol>,
    /// Every one of these data formats.
    pub formats: Vec<String>,
    /// p99 latency at most this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_p99_ms: Option<f64>,
    /// Throughput at least this many requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_throughput_rps: Option<f64>,
    /// Cost per call at most this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// Availability at least this, in `[0, 1]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_availability: Option<f64>,
    /// Security the service must offer.
    pub security: SecurityRequirements,
    /// Labels that must all be present with these values.
    pub labels: BTreeMap<String, String>,
}

impl ServiceRequirements {
    /// Requirements asking for one capability.
    pub fn capability(name: &str) -> Self {
        Self { capabilities: vec![name.to_owned()], ..Self::default() }
    }

    /// True when no condition is stated.
    pub fn is_empty(&self) -> bool {
        self.capabilities.is_empty()
            && self.protocols.is_empty()
            && self.formats.is_empty()
            && self.max_latency_p99_ms.is_none()
            && self.min_throughput_rps.is_none()
            && self.max_cost.is_none()
            && self.min_availability.is_none()
            && self.security.is_empty()
            && self.labels.is_empty()
    }

    /// Rejects empty requirements (use a listing for "everything") and bounds no service could meet.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::invalid(
                "requirements",
                "{}",
                "state at least one condition; list services to see them all",
            ));
        }
        for (field, terms) in [
            ("requirements.capabilities", &self.capabilities),
            ("requirements.formats", &self.formats),
            ("requirements.security.compliance", &self.security.compliance),
        ] {
            for (i, term) in terms.iter().enumerate() {
                check_term(&format!("{field}[{i}]"), term)?;
            }
        }
        let bounds = [
            ("requirements.max_latency_p99_ms", self.max_latency_p99_ms),
            ("requirements.min_throughput_rps", self.min_throughput_rps),
            ("requirements.max_cost", self.max_cost),
            ("requirements.min_availability", self.min_availability),
        ];
        for (field, value) in bounds {
            if let Some(v) = value
                && (!v.is_finite() || v < 0.0)
            {
                return Err(Error::invalid(field, v, "must be a finite number >= 0"));
            }
        }
        if let Some(a) = self.min_availability
            && a > 1.0
        {
            return Err(Error::invalid("requirements.min_availability", a, "must be in [0, 1]"));
        }
        if self.security.auth_schemes.contains(&AuthScheme::None) && self.security.auth_schemes.len() > 1 {
            return Err(Error::invalid(
                "requirements.security.auth_schemes",
                format!("{:?}", self.security.auth_schemes),
                "`none` contradicts the other schemes: it admits unauthenticated services",
            ));
        }
        Ok(())
    }

    /// True when `qos` meets every QoS bound (the conditions an index may only approximate).
    pub fn qos_within_bounds(&self, qos: &Qos) -> bool {
        self.max_latency_p99_ms.is_none_or(|max| qos.latency_p99_ms <= max)
            && self.min_throughput_rps.is_none_or(|min| qos.throughput_rps >= min)
            && self.max_cost.is_none_or(|max| qos.cost <= max)
            && self.min_availability.is_none_or(|min| qos.availability >= min)
    }

    /// True when `spec` meets every condition. This is the linear-scan definition of a match;
    /// the registry's indexes must agree with it exactly.
    pub fn matches(&self, spec: &ServiceSpec) -> bool {
        self.capabilities.iter().all(|c| spec.capabilities().binary_search(c).is_ok())
            && (self.protocols.is_empty() || self.protocols.contains(&spec.protocol()))
            && self.formats.iter().all(|f| spec.formats().binary_search(f).is_ok())
            && self.qos_within_bounds(spec.qos())
            && self.security.satisfied_by(spec)
            && self.labels.iter().all(|(k, v)| spec.labels().get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec::from_json(
            r#"{"id":"pay","endpoint":{"protocol":"grpc","url":"http://127.0.0.1:9000"},
                "capabilities":["charge","refund"],"formats":["json","protobuf"],
                "qos":{"latency_p50_ms":20,"latency_p99_ms":80,"throughput_rps":500,"cost":0.2,"availability":0.999},
                "security":{"auth_schemes":["bearer"],"encryption":"tls","compliance":["pci-dss"]},
                "labels":{"region":"eu"}}"#,
        )
        .unwrap()
    }

    fn check(requirements: &str, expected: bool) {
        let req: ServiceRequirements = serde_json::from_str(requirements).unwrap();
        assert_eq!(req.matches(&spec()), expected, "{requirements}");
    }

    #[test]
    fn each_condition_is_checked() {
        check(r#"{"capabilities":["charge"]}"#, true);
        check(r#"{"capabilities":["charge","refund"]}"#, true);
        check(r#"{"capabilities":["charge","void"]}"#, false);
        check(r#"{"protocols":["http","grpc"]}"#, true);
        check(r#"{"protocols":["http"]}"#, false);
        check(r#"{"formats":["json","protobuf"]}"#, true);
        check(r#"{"formats":["xml"]}"#, false);
        check(r#"{"max_latency_p99_ms":80}"#, true);
        check(r#"{"max_latency_p99_ms":79.9}"#, false);
        check(r#"{"min_throughput_rps":500}"#, true);
        check(r#"{"min_throughput_rps":501}"#, false);
        check(r#"{"max_cost":0.1}"#, false);
        check(r#"{"min_availability":0.99}"#, true);
        check(r#"{"min_availability":0.9999}"#, false);
        check(r#"{"security":{"auth_schemes":["mtls","bearer"]}}"#, true);
        check(r#"{"security":{"auth_schemes":["mtls"]}}"#, false);
        check(r#"{"security":{"min_encryption":"tls"}}"#, true);
        check(r#"{"security":{"min_encryption":"mtls"}}"#, false);
        check(r#"{"security":{"compliance":["pci-dss"]}}"#, true);
        check(r#"{"security":{"compliance":["hipaa"]}}"#, false);
        check(r#"{"labels":{"region":"eu"}}"#, true);
        check(r#"{"labels":{"region":"us"}}"#, false);
    }

    #[test]
    fn empty_and_contradictory_requirements_are_rejected() {
        let err =
            |json: &str| serde_json::from_str::<ServiceRequirements>(json).unwrap().validate().unwrap_err().to_string();
        assert!(err("{}").contains("state at least one condition"));
        assert!(err(r#"{"min_availability":2}"#).contains("invalid requirements.min_availability \"2\""));
        assert!(err(r#"{"max_latency_p99_ms":-5}"#).contains("invalid requirements.max_latency_p99_ms \"-5\""));
        assert!(err(r#"{"capabilities":[""]}"#).contains("invalid requirements.capabilities[0]"));
        assert!(err(r#"{"security":{"auth_schemes":["none","mtls"]}}"#).contains("contradicts"));
        assert!(serde_json::from_str::<ServiceRequirements>(r#"{"capability":"x"}"#).is_err());
    }
}
