//! URI templates (RFC 6570) as `call: http` endpoints write them, turned into Baton templates:
//! each `{name}` becomes an expression reading `name` from the task's input, percent-encoded
//! as simple string expansion encodes it (unreserved characters kept, everything else
//! `%XX`; a missing value expands to nothing; a list joins its items with commas; an object
//! its keys and values).
//!
//! Literal text cannot hold `{`, so it never reads as an expression; a `$` right before a
//! variable moves into the expression, since `$${` would read as an escaped `${`.

use crate::error::{Error, Result};

/// The jq program expanding the value at `.` the way RFC 6570 simple expansion does.
const EXPAND: &str = "if . == null then \"\" \
     elif type == \"array\" then map(@uri) | join(\",\") \
     elif type == \"object\" then to_entries | map((.key | @uri) + \",\" + (.value | @uri)) | join(\",\") \
     else @uri end";

/// The template text of the literal URI template `uri` written at `pointer`: `{name}` parts
/// become `${ }` expressions.
pub(super) fn template(pointer: &str, uri: &str) -> Result<String> {
    let mut out = String::with_capacity(uri.len() + 16);
    let mut rest = uri;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        let text = literal.trim_end_matches('$');
        let dollars = literal.len() - text.len();
        out.push_str(text);
        let close = rest[open..].find('}').ok_or_else(|| invalid(pointer, uri, "has `{` without its closing `}`"))?;
        let name = &rest[open + 1..open + close];
        if let Some(operator) = name.chars().next().filter(|c| "+#./;?&=,!@|".contains(*c)) {
            return Err(Error::Unsupported {
                construct: format!("URI template operator `{operator}` in {uri:?} (only simple {{name}} expansion)"),
                pointer: pointer.to_owned(),
            });
        }
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
        if !valid {
            return Err(if name.contains([',', ':', '*']) {
                Error::Unsupported {
                    construct: format!("URI template lists and modifiers in {uri:?} (only simple {{name}} expansion)"),
                    pointer: pointer.to_owned(),
                }
            } else {
                invalid(pointer, uri, &format!("has a malformed variable {{{name}}}"))
            });
        }
        // `a.b` names one variable (RFC 6570), not a path.
        let expansion = format!("(.[\"{name}\"] | {EXPAND})");
        if dollars == 0 {
            out.push_str(&format!("${{ {expansion} }}"));
        } else {
            out.push_str(&format!("${{ \"{}\" + {expansion} }}", "$".repeat(dollars)));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(invalid(pointer, uri, "has `}` without its opening `{`"));
    }
    out.push_str(rest);
    Ok(out)
}

fn invalid(pointer: &str, uri: &str, reason: &str) -> Error {
    baton_core::Error::invalid(pointer, uri, reason).into()
}

#[cfg(test)]
mod tests {
    use baton_core::Template;
    use serde_json::{Value, json};

    use super::*;

    fn expand(uri: &str, input: Value) -> String {
        let text = template("/do/0/t/with/endpoint", uri).unwrap();
        let template = Template::compile("uri", &Value::String(text)).unwrap();
        template.render(&input).unwrap().as_str().unwrap().to_owned()
    }

    #[test]
    fn simple_expansion_encodes_like_rfc_6570() {
        assert_eq!(expand("https://x.test/v2/pet/{petId}", json!({"petId": 1})), "https://x.test/v2/pet/1");
        assert_eq!(
            expand("https://x.test/find?status={status}", json!({"status": "sold out/new"})),
            "https://x.test/find?status=sold%20out%2Fnew"
        );
        assert_eq!(expand("https://x.test/{a}/{b}", json!({"a": "é", "b": null})), "https://x.test/%C3%A9/");
        assert_eq!(expand("https://x.test/{list}", json!({"list": ["a", 1, "b c"]})), "https://x.test/a,1,b%20c");
        assert_eq!(expand("https://x.test/{map}", json!({"map": {"k": "v w"}})), "https://x.test/k,v%20w");
        assert_eq!(expand("https://x.test/{a.b}", json!({"a.b": true})), "https://x.test/true");
        assert_eq!(expand("https://x.test/$${x}/{y}$", json!({"x": "a", "y": "b"})), "https://x.test/$$a/b$");
        assert_eq!(expand("https://x.test/plain", json!({})), "https://x.test/plain");
    }

    #[test]
    fn other_template_forms_are_refused() {
        let error = |uri: &str| template("/do/0/t/with/endpoint", uri).unwrap_err().to_string();
        assert!(error("https://x.test/{+path}").starts_with("unsupported: URI template operator `+`"));
        assert!(error("https://x.test/{?a,b}").contains("operator `?`"));
        assert!(error("https://x.test/{a,b}").contains("lists and modifiers"));
        assert!(error("https://x.test/{a:3}").contains("lists and modifiers"));
        assert!(error("https://x.test/{a").contains("without its closing"));
        assert!(error("https://x.test/a}").contains("without its opening"));
        assert!(error("https://x.test/{}").contains("malformed variable"));
        assert!(error("https://x.test/{a b}").contains("malformed variable"));
    }
}
