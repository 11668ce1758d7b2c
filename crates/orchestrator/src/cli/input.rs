//! What the client reads before any call: spec and definition files, `--input` JSON, the token
//! file and goal bounds. Everything here is checked up front so that a mistake is a usage error
//! (exit 2) rather than a half-done call.

use std::path::Path;

use baton_core::{ServiceDefinition, ServiceSpec};
use baton_grpc::pb;
use tonic::metadata::{Ascii, MetadataValue};

/// The text format of a file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFormat {
    /// `.yaml` or `.yml`.
    Yaml,
    /// `.json`.
    Json,
}

/// The format a path's extension names; `None` when it names neither.
pub(crate) fn format_of(path: &Path) -> Option<FileFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => Some(FileFormat::Yaml),
        "json" => Some(FileFormat::Json),
        _ => None,
    }
}

/// Reads a whole text file; the error names the file.
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Parses and checks a service spec written as YAML or JSON (`format`; `None`: JSON when the
/// text parses as JSON, else YAML), in the form of [`ServiceDefinition`].
pub(crate) fn parse_service_spec(text: &str, format: Option<FileFormat>) -> Result<ServiceSpec, String> {
    let format = format.unwrap_or_else(|| sniff(text));
    let definition: ServiceDefinition = match format {
        FileFormat::Json => serde_json::from_str(text).map_err(|e| format!("invalid JSON service spec: {e}"))?,
        FileFormat::Yaml => serde_yaml::from_str(text).map_err(|e| format!("invalid YAML service spec: {e}"))?,
    };
    ServiceSpec::new(definition).map_err(|e| format!("invalid service spec: {e}"))
}

/// Checks that a workflow definition's source parses as the format it claims (or detects it)
/// and returns the format to send. The server checks the definition itself.
pub(crate) fn definition_format(text: &str, format: Option<FileFormat>) -> Result<pb::DefinitionFormat, String> {
    let format = format.unwrap_or_else(|| sniff(text));
    match format {
        FileFormat::Json => {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| format!("invalid JSON definition: {e}"))?;
            Ok(pb::DefinitionFormat::Json)
        }
        FileFormat::Yaml => {
            let value: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| format!("invalid YAML definition: {e}"))?;
            if !value.is_mapping() {
                return Err("invalid YAML definition: expected a mapping at the top level".to_owned());
            }
            Ok(pb::DefinitionFormat::Yaml)
        }
    }
}

/// JSON when the text parses as JSON, else YAML.
fn sniff(text: &str) -> FileFormat {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() { FileFormat::Json } else { FileFormat::Yaml }
}

/// Checks an `--input` argument and returns it as compact JSON text. `@PATH` reads the JSON from
/// a file. With `object`, the value must be a JSON object.
pub(crate) fn input_json(arg: &str, object: bool) -> Result<String, String> {
    json_arg("--input", arg, object)
}

/// Checks a JSON argument of `flag` and returns it as compact JSON text; `@PATH` reads it from a
/// file. With `object`, the value must be a JSON object.
pub(crate) fn json_arg(flag: &str, arg: &str, object: bool) -> Result<String, String> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some(path) => (read_text(Path::new(path))?, path),
        None => (arg.to_owned(), flag),
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{origin}: invalid JSON: {e}"))?;
    if object && !value.is_object() {
        return Err(format!("{origin}: must be a JSON object (the provided concepts by name)"));
    }
    serde_json::to_string(&value).map_err(|e| format!("{origin}: {e}"))
}

/// The `authorization` metadata value for the token in a token file's text.
pub(crate) fn bearer(text: &str) -> Result<MetadataValue<Ascii>, String> {
    // The server's token file format: one token per line, blanks and `#` comments skipped; the
    // client sends the first.
    let Some(token) = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#')) else {
        return Err("the token file is empty".to_owned());
    };
    // The token's text stays out of the message: it is a secret.
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token file holds characters not allowed in a header value".to_owned())
}

/// Bounds of a goal from the command line, checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Bounds {
    /// `--max-latency`, milliseconds.
    pub(crate) max_latency_ms: Option<f64>,
    /// `--max-cost`.
    pub(crate) max_cost: Option<f64>,
    /// `--min-availability`, in [0, 1].
    pub(crate) min_availability: Option<f64>,
}

/// The goal for `have` and `want` within `bounds`; the error names the offending option.
pub(crate) fn goal(have: &[String], want: &[String], bounds: Bounds) -> Result<pb::Goal, String> {
    for (option, concepts) in [("--have", have), ("--want", want)] {
        if let Some(bad) = concepts.iter().find(|c| c.is_empty() || c.chars().any(char::is_whitespace)) {
            return Err(format!("{option}: concept {bad:?} must be non-empty and without spaces"));
        }
    }
    if want.is_empty() {
        return Err("--want: name at least one concept".to_owned());
    }
    if let Some(ms) = bounds.max_latency_ms
        && !(ms.is_finite() && ms > 0.0)
    {
        return Err(format!("--max-latency: {ms} must be a positive number of milliseconds"));
    }
    if let Some(cost) = bounds.max_cost
        && !(cost.is_finite() && cost >= 0.0)
    {
        return Err(format!("--max-cost: {cost} must be a number at least 0"));
    }
    if let Some(a) = bounds.min_availability
        && !(0.0..=1.0).contains(&a)
    {
        return Err(format!("--min-availability: {a} must be in [0, 1]"));
    }
    Ok(pb::Goal {
        provided: have.to_vec(),
        wanted: want.to_vec(),
        constraints: Some(pb::Constraints {
            max_latency_ms: bounds.max_latency_ms,
            max_cost: bounds.max_cost,
            min_availability: bounds.min_availability,
            ..pb::Constraints::default()
        }),
        objective: pb::Objective::Unspecified as i32,
        weights: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_YAML: &str = "\
id: payments-1
name: Payments
endpoint:
  protocol: http
  url: http://127.0.0.1:8080/charge
capabilities: [payment.charge]
inputs: [order]
outputs: [receipt]
qos:
  latency_p50_ms: 10
  latency_p99_ms: 40
  throughput_rps: 100
  cost: 0.5
health_check:
  kind: ttl
  ttl: 10s
labels:
  team: billing
";

    #[test]
    fn service_specs_parse_from_yaml_and_json() {
        let yaml = parse_service_spec(SPEC_YAML, Some(FileFormat::Yaml)).unwrap();
        assert_eq!(yaml.id().as_str(), "payments-1");
        assert_eq!(yaml.capabilities(), ["payment.charge"]);
        let json_text = serde_json::to_string(&yaml).unwrap();
        let json = parse_service_spec(&json_text, Some(FileFormat::Json)).unwrap();
        assert_eq!(json, yaml);
        // Without an extension, the text decides.
        assert_eq!(parse_service_spec(&json_text, None).unwrap(), yaml);
        assert_eq!(parse_service_spec(SPEC_YAML, None).unwrap(), yaml);
    }

    #[test]
    fn bad_service_specs_say_what_is_wrong() {
        let check = |text: &str, format, wanted: &str| {
            let error = parse_service_spec(text, format).unwrap_err();
            assert!(error.contains(wanted), "{error:?} lacks {wanted:?}");
        };
        check("{", Some(FileFormat::Json), "invalid JSON service spec");
        check("id: [", Some(FileFormat::Yaml), "invalid YAML service spec");
        check(&SPEC_YAML.replace("name:", "nom:"), None, "unknown field `nom`");
        check(&SPEC_YAML.replace("id: payments-1", "id: Payments One"), None, "invalid service spec");
        check(&SPEC_YAML.replace("http://127.0.0.1:8080/charge", "ftp://x"), None, "endpoint.url");
    }

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(format_of(Path::new("a/b.yaml")), Some(FileFormat::Yaml));
        assert_eq!(format_of(Path::new("b.YML")), Some(FileFormat::Yaml));
        assert_eq!(format_of(Path::new("b.json")), Some(FileFormat::Json));
        assert_eq!(format_of(Path::new("b.txt")), None);
        assert_eq!(format_of(Path::new("b")), None);
    }

    #[test]
    fn definitions_are_checked_for_syntax_only() {
        assert_eq!(definition_format("name: x\nsteps: []\n", Some(FileFormat::Yaml)), Ok(pb::DefinitionFormat::Yaml));
        assert_eq!(definition_format(r#"{"name": "x"}"#, None), Ok(pb::DefinitionFormat::Json));
        assert_eq!(definition_format("name: x\n", None), Ok(pb::DefinitionFormat::Yaml));
        assert!(definition_format("name: [", None).unwrap_err().contains("invalid YAML definition"));
        assert!(definition_format("{\"name\": ", Some(FileFormat::Json)).unwrap_err().contains("invalid JSON"));
        assert!(definition_format("- a\n- b\n", None).unwrap_err().contains("mapping"));
    }

    #[test]
    fn input_must_be_json() {
        assert_eq!(input_json(r#" { "a" : [1, 2] } "#, false), Ok(r#"{"a":[1,2]}"#.to_owned()));
        assert_eq!(input_json("3", false), Ok("3".to_owned()));
        assert!(input_json("{a: 1}", false).unwrap_err().starts_with("--input: invalid JSON"));
        assert!(input_json("[1]", true).unwrap_err().contains("must be a JSON object"));
        assert!(input_json("@/nonexistent/input.json", false).unwrap_err().starts_with("cannot read"));
    }

    #[test]
    fn input_reads_files_after_an_at_sign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.json");
        std::fs::write(&path, "{\"order\": {\"sku\": \"b\"}}\n").unwrap();
        assert_eq!(input_json(&format!("@{}", path.display()), true), Ok(r#"{"order":{"sku":"b"}}"#.to_owned()));
    }

    #[test]
    fn tokens_become_bearer_headers() {
        assert_eq!(bearer("  s3cret\n").unwrap(), "Bearer s3cret");
        assert_eq!(bearer("\n").unwrap_err(), "the token file is empty");
        assert_eq!(bearer("# ci token\n\n  first\nsecond\n").unwrap(), "Bearer first");
        let error = bearer("bad\u{7f}token").unwrap_err();
        assert!(!error.contains("bad"), "the message must not leak the token: {error}");
    }

    #[test]
    fn goals_are_checked() {
        let have = ["order".to_owned()];
        let want = ["tracking".to_owned()];
        let bounds = Bounds { max_latency_ms: Some(2000.0), max_cost: None, min_availability: Some(0.99) };
        let goal = goal(&have, &want, bounds).unwrap();
        assert_eq!(goal.provided, have);
        assert_eq!(goal.wanted, want);
        let constraints = goal.constraints.unwrap();
        assert_eq!(constraints.max_latency_ms, Some(2000.0));
        assert_eq!(constraints.min_availability, Some(0.99));
        assert_eq!(constraints.max_cost, None);

        let check = |have: &[String], want: &[String], bounds: Bounds, wanted: &str| {
            let error = super::goal(have, want, bounds).unwrap_err();
            assert!(error.starts_with(wanted), "{error:?} does not start with {wanted:?}");
        };
        check(&have, &[], Bounds::default(), "--want");
        check(&["a b".to_owned()], &want, Bounds::default(), "--have");
        check(&have, &want, Bounds { max_latency_ms: Some(0.0), ..Bounds::default() }, "--max-latency");
        check(&have, &want, Bounds { max_cost: Some(-1.0), ..Bounds::default() }, "--max-cost");
        check(&have, &want, Bounds { min_availability: Some(1.5), ..Bounds::default() }, "--min-availability");
    }
}
