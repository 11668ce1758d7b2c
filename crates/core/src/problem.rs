//! Structured errors in the style of RFC 7807 (problem details), as workflows raise, catch and
//! report them: a type URI, a status, a title, a detail and the instance (the task's place in
//! the definition, an RFC 6901 pointer).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The prefix of the standard error types.
pub const STANDARD_TYPE_PREFIX: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/";

/// The standard error types, by short name, with their usual status.
pub const STANDARD_TYPES: [(&str, u16); 8] = [
    ("configuration", 400),
    ("validation", 400),
    ("expression", 400),
    ("authentication", 401),
    ("authorization", 403),
    ("timeout", 408),
    ("communication", 500),
    ("runtime", 500),
];

/// The full URI of a standard type's short name (`timeout`), or `name` itself when it is not
/// one.
pub fn expand_type(name: &str) -> String {
    if STANDARD_TYPES.iter().any(|(short, _)| *short == name) {
        format!("{STANDARD_TYPE_PREFIX}{name}")
    } else {
        name.to_owned()
    }
}

/// An error with its details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What kind of error: a URI (standard types start with [`STANDARD_TYPE_PREFIX`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status, as HTTP statuses go.
    pub status: u16,
    /// A short summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Where: the task that raised it, as a JSON pointer into the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Problem {
    /// A problem of the standard type `short` (`timeout`, `communication`, ...) with its usual
    /// status.
    pub fn standard(short: &str, detail: impl Into<String>) -> Self {
        let status = STANDARD_TYPES.iter().find(|(name, _)| *name == short).map_or(500, |(_, status)| *status);
        Self { kind: expand_type(short), status, title: None, detail: Some(detail.into()), instance: None }
    }

    /// A runtime error (the standard `runtime` type, status 500) saying `detail`.
    pub fn runtime(detail: impl Into<String>) -> Self {
        Self::standard("runtime", detail)
    }

    /// The same problem with its status set.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The same problem with its title set.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// The same problem placed at `instance`, unless it already has a place.
    pub fn at(mut self, instance: &str) -> Self {
        self.instance.get_or_insert_with(|| instance.to_owned());
        self
    }

    /// The short name of a standard type (`timeout`), `None` for other types.
    pub fn standard_name(&self) -> Option<&str> {
        self.kind.strip_prefix(STANDARD_TYPE_PREFIX)
    }

    /// What a person reads first: the detail, else the title, else the type.
    pub fn message(&self) -> String {
        match (&self.detail, &self.title) {
            (Some(detail), _) => detail.clone(),
            (None, Some(title)) => title.clone(),
            (None, None) => format!("{} ({})", self.standard_name().unwrap_or(&self.kind), self.status),
        }
    }

    /// The problem as a JSON value, as `catch ... as` variables and outputs show it.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.standard_name().unwrap_or(&self.kind);
        write!(f, "{kind} ({})", self.status)?;
        if let Some(title) = &self.title {
            write!(f, ": {title}")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(instance) = &self.instance {
            write!(f, " at {instance}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_expand_and_print_short() {
        let p = Problem::standard("timeout", "attempt timed out after 2s").at("/do/0/getPet");
        assert_eq!(p.kind, "https://serverlessworkflow.io/spec/1.0.0/errors/timeout");
        assert_eq!(p.status, 408);
        assert_eq!(p.to_string(), "timeout (408): attempt timed out after 2s at /do/0/getPet");
        assert_eq!(expand_type("https://example.com/x"), "https://example.com/x");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "https://serverlessworkflow.io/spec/1.0.0/errors/timeout");
        assert_eq!(serde_json::from_value::<Problem>(json).unwrap(), p);
    }
}
