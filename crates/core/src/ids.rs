//! Identifiers: validated names for services, workflows and steps, UUIDv7 for executions.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest name accepted: 128 bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks the name rule `[a-z0-9][a-z0-9._-]{0,127}`, naming `field` on failure.
pub fn validate_name(field: &str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value.len() > MAX_NAME_LEN {
        Some(format!("is {} bytes long, the limit is {MAX_NAME_LEN}", value.len()))
    } else if !value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("must start with a lowercase letter or a digit".to_owned())
    } else {
        value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("has {c:?}; only a-z, 0-9, '.', '_' and '-' are allowed"))
    };
    match reason {
        Some(reason) => Err(Error::invalid(field, value, reason)),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        name_type!($(#[$doc])* $name, $field, validate_name);
    };
    ($(#[$doc:meta])* $name:ident, $field:literal, $validate:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        // Shared text: ids are cloned into every event and call, so a clone must not allocate.
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` against the name rule.
            pub fn new(value: &str) -> Result<Self> {
                $validate($field, value)?;
                Ok(Self(value.into()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $validate($field, &s)?;
                Ok(Self(s.into()))
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }

        // Written from the shared text: `into = "String"` would copy it for every event.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A registered service's id, unique in a registry: `[a-z0-9][a-z0-9._-]{0,127}`.
    ServiceId,
    "id"
);
name_type!(
    /// A workflow definition's name: `[a-z0-9][a-z0-9._-]{0,127}`.
    WorkflowName,
    "workflow"
);
name_type!(
    /// A step's id or a task's path: one or more segments joined by `/`, each
    /// `[A-Za-z0-9_][A-Za-z0-9._-]*`, at most 1,024 bytes in all. A top-level step's path is its
    /// id (`charge`); a task nested in a loop, case or branch has its parents' segments before
    /// its own (`each/3/charge`).
    StepId,
    "step",
    validate_path
);
name_type!(
    /// The name of a secret the server holds (a file in its secrets directory or an
    /// environment variable): `[a-z0-9][a-z0-9._-]{0,127}`. Specs name secrets; they never
    /// hold their values.
    SecretName,
    "secret"
);

/// The longest task path accepted: 1,024 bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Checks the task path rule (see [`StepId`]), naming `field` on failure.
pub fn validate_path(field: &str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value.len() > MAX_PATH_LEN {
        Some(format!("is {} bytes long, the limit is {MAX_PATH_LEN}", value.len()))
    } else {
        value.split('/').find_map(|segment| {
            if !segment.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                Some(format!("has a segment {segment:?} that does not start with a letter, a digit or '_'"))
            } else {
                segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).map(|c| {
                    format!("has {c:?}; only letters, digits, '.', '_', '-' and '/' between segments are allowed")
                })
            }
        })
    };
    match reason {
        Some(reason) => Err(Error::invalid(field, value, reason)),
        None => Ok(()),
    }
}

impl StepId {
    /// The path of a task named `segment` below this one.
    pub fn child(&self, segment: &str) -> Result<Self> {
        Self::new(&format!("{self}/{segment}"))
    }

    /// The last segment: the task's own name.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

/// An execution's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ExecutionId(uuid::Uuid);

impl ExecutionId {
    /// A fresh id for the current time.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Wraps `uuid` when it is a version 7 UUID.
    pub fn from_uuid(uuid: uuid::Uuid) -> Result<Self> {
        if uuid.get_version_num() == 7 {
            Ok(Self(uuid))
        } else {
            Err(Error::invalid("execution_id", uuid, "must be a UUIDv7"))
        }
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// The partition of a cluster of `partitions` partitions (at least 1) this execution
    /// belongs to: FNV-1a of the id's 16 bytes, modulo `partitions`. Every node of a cluster
    /// computes the same, so the function never changes: a change would move executions to
    /// other owners in a running cluster.
    pub fn partition(&self, partitions: u32) -> u32 {
        partition_of(self.0.as_bytes(), partitions)
    }
}

impl ServiceId {
    /// The partition of a cluster of `partitions` partitions (at least 1) this service
    /// belongs to: FNV-1a of the id's bytes, modulo `partitions`. The node owning it runs the
    /// service's health checks; like [`ExecutionId::partition`] it never changes.
    pub fn partition(&self, partitions: u32) -> u32 {
        partition_of(self.as_str().as_bytes(), partitions)
    }
}

/// FNV-1a of `bytes` modulo `partitions` (at least 1).
fn partition_of(bytes: &[u8], partitions: u32) -> u32 {
    let hash = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3));
    u32::try_from(hash % u64::from(partitions.max(1))).expect("less than a u32")
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExecutionId({})", self.0)
    }
}

impl FromStr for ExecutionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let uuid = uuid::Uuid::parse_str(s).map_err(|e| Error::invalid("execution_id", s, e.to_string()))?;
        Self::from_uuid(uuid)
    }
}

impl TryFrom<String> for ExecutionId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

// Written from a stack buffer: `into = "String"` allocated and went through `fmt` for every
// journal event.
impl Serialize for ExecutionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
    }
}

impl From<ExecutionId> for String {
    fn from(id: ExecutionId) -> String {
        id.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        let id = |text: &str| ExecutionId::from_uuid(text.parse().unwrap()).unwrap();
        // Pinned (computed apart, in Python): every node of a cluster, of every version, must
        // place an id alike.
        let pinned = id("01890a5d-ac96-774b-bcce-b302099a8057");
        assert_eq!([1, 2, 64, 1000].map(|p| pinned.partition(p)), [0, 1, 51, 883]);
        assert_eq!(pinned.partition(0), 0, "no partitions counts as one");
        // FNV-1a of "billing" is 0x4005_5702_95af_d25c, computed apart like the execution's.
        let billing = ServiceId::new("billing").unwrap();
        assert_eq!([1, 64].map(|p| billing.partition(p)), [0, 28]);
        let mut counts = [0_u32; 64];
        for _ in 0..64_000 {
            counts[ExecutionId::generate().partition(64) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    fn check(input: &str, expected: Option<&str>) {
        let got = ServiceId::new(input).err().map(|e| e.to_string());
        assert_eq!(got.as_deref(), expected, "input {input:?}");
    }

    #[test]
    fn names_follow_the_rule() {
        check("a", None);
        check("0pay.v2_eu-west", None);
        check(&"a".repeat(128), None);
        check("", Some(r#"invalid id "": must not be empty"#));
        check("Pay", Some(r#"invalid id "Pay": must start with a lowercase letter or a digit"#));
        check("-pay", Some(r#"invalid id "-pay": must start with a lowercase letter or a digit"#));
        check("pay me", Some(r#"invalid id "pay me": has ' '; only a-z, 0-9, '.', '_' and '-' are allowed"#));
        check("paY", Some(r#"invalid id "paY": has 'Y'; only a-z, 0-9, '.', '_' and '-' are allowed"#));
        assert!(ServiceId::new(&"a".repeat(129)).unwrap_err().to_string().contains("129 bytes"));
    }

    #[test]
    fn names_deserialize_through_validation() {
        let ok: ServiceId = serde_json::from_str(r#""billing""#).unwrap();
        assert_eq!(ok.as_str(), "billing");
        let err = serde_json::from_str::<ServiceId>(r#""Billing""#).unwrap_err();
        assert!(err.to_string().contains("invalid id \"Billing\""), "{err}");
    }

    #[test]
    fn execution_ids_are_v7_and_sort_by_time() {
        let a = ExecutionId::generate();
        let b = ExecutionId::generate();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<ExecutionId>().unwrap(), a);
        let v4 = "6f1c1b9e-3f0a-4c5e-9d2b-1a2b3c4d5e6f";
        assert!(v4.parse::<ExecutionId>().unwrap_err().to_string().contains("must be a UUIDv7"));
        assert!("nope".parse::<ExecutionId>().is_err());
    }

    #[test]
    fn ids_serialize_as_their_text() {
        let id: ExecutionId = "01a22774-dac1-76b7-b935-7f8bc02e991c".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""01a22774-dac1-76b7-b935-7f8bc02e991c""#);
        assert_eq!(serde_json::from_str::<ExecutionId>(&json).unwrap(), id);
        let step = StepId::new("charge.v2").unwrap();
        assert_eq!(serde_json::to_string(&step).unwrap(), r#""charge.v2""#);
        assert_eq!(serde_yaml::to_string(&step).unwrap(), "charge.v2\n");
    }
}
