//! OpenAPI operations as `call: openapi` names them: the operation found by its
//! `operationId` in an OpenAPI 3.x or Swagger 2.0 document, and the request its parameters
//! make (path, query and header parameters placed where the operation declares them, the body
//! from the body parameter or the request body).

use serde_json::{Map, Value};

/// How many `$ref`s in a row are followed before a document is taken to loop.
const MAX_REFS: usize = 16;
/// The HTTP methods a path item may hold operations under.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The request an operation makes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Operation {
    /// `GET`, `POST`, ...
    pub(crate) method: String,
    /// The absolute URL, path and query parameters in place.
    pub(crate) url: String,
    /// Header parameters.
    pub(crate) headers: Map<String, Value>,
    /// The body.
    pub(crate) body: Option<Value>,
}

/// A document read as JSON, or as YAML when it is not JSON.
pub(crate) fn read_document(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice(bytes) {
        Ok(document) => Ok(document),
        Err(json) => {
            let text = std::str::from_utf8(bytes).map_err(|_| format!("is neither JSON ({json}) nor YAML text"))?;
            serde_yaml::from_str(text).map_err(|yaml| format!("is neither JSON ({json}) nor YAML ({yaml})"))
        }
    }
}

/// The request of operation `operation_id` of `document` (fetched from `document_url`, which
/// relative server URLs and a missing host are taken from) with `parameters` by name.
pub(crate) fn resolve(
    document: &Value,
    document_url: &str,
    operation_id: &str,
    parameters: &Value,
) -> Result<Operation, String> {
    let base = url::Url::parse(document_url).map_err(|e| format!("{document_url:?} is not a URL: {e}"))?;
    let paths = document.get("paths").and_then(Value::as_object).ok_or("has no `paths`")?;
    let (path, item, method, operation) = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS.iter().filter_map(move |m| item.get(*m).map(|operation| (path, item, *m, operation)))
        })
        .find(|(_, _, _, operation)| operation.get("operationId").and_then(Value::as_str) == Some(operation_id))
        .ok_or_else(|| format!("has no operation {operation_id:?}"))?;
    let server = server_url(document, &base)?;
    let swagger = document.get("swagger").is_some();
    let given = parameters.as_object().cloned().unwrap_or_default();
    let mut used: Vec<&str> = Vec::new();
    let mut path = path.clone();
    let mut query: Vec<(String, String)> = Vec::new();
    let mut headers = Map::new();
    let mut body = None;
    // Path-level parameters first; an operation's own one of the same name and place wins.
    let mut declared: Vec<Value> = Vec::new();
    for parameter in item.get("parameters").into_iter().chain(operation.get("parameters")).flat_map(list) {
        let parameter = dereference(document, parameter)?.clone();
        let key = |p: &Value| (p.get("name").cloned(), p.get("in").cloned());
        declared.retain(|d| key(d) != key(&parameter));
        declared.push(parameter);
    }
    for parameter in &declared {
        let name = parameter.get("name").and_then(Value::as_str).ok_or("has a parameter without a name")?;
        let place = parameter.get("in").and_then(Value::as_str).unwrap_or("query");
        let required = place == "path" || parameter.get("required").and_then(Value::as_bool) == Some(true);
        let Some(value) = given.get(name).filter(|v| !v.is_null()) else {
            if required {
                return Err(format!("operation {operation_id:?} needs parameter {name:?} ({place})"));
            }
            continue;
        };
        used.push(name);
        match place {
            "path" => path = path.replace(&format!("{{{name}}}"), &encode_segment(&text(value))),
            "query" => {
                // Swagger 2.0 joins a list with commas unless told `multi`; OpenAPI 3's default
                // form style repeats the parameter.
                let multi = if swagger {
                    parameter.get("collectionFormat").and_then(Value::as_str) == Some("multi")
                } else {
                    parameter.get("explode").and_then(Value::as_bool).unwrap_or(true)
                };
                match value {
                    Value::Array(items) if multi => query.extend(items.iter().map(|i| (name.to_owned(), text(i)))),
                    Value::Array(items) => {
                        query.push((name.to_owned(), items.iter().map(text).collect::<Vec<_>>().join(",")));
                    }
                    other => query.push((name.to_owned(), text(other))),
                }
            }
            "header" => {
                headers.insert(name.to_owned(), Value::String(text(value)));
            }
            "body" => body = Some(value.clone()),
            other => {
                return Err(format!(
                    "operation {operation_id:?} has a {other} parameter {name:?}, which is not supported"
                ));
            }
        }
    }
    if operation.get("requestBody").is_some() && body.is_none() {
        body = match given.get("body") {
            Some(explicit) => Some(explicit.clone()),
            None => {
                let rest: Map<String, Value> = given
                    .iter()
                    .filter(|(k, _)| !used.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (!rest.is_empty()).then_some(Value::Object(rest))
            }
        };
    }
    if let Some(left) = path.find('{') {
        return Err(format!("operation {operation_id:?} leaves {} in its path unfilled", &path[left..]));
    }
    let mut url = url::Url::parse(&format!("{}{}", server.trim_end_matches('/'), path))
        .map_err(|e| format!("operation {operation_id:?} makes no URL: {e}"))?;
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in &query {
            pairs.append_pair(name, value);
        }
    }
    Ok(Operation { method: method.to_ascii_uppercase(), url: url.into(), headers, body })
}

/// The URL operations are relative to: Swagger 2.0's scheme, host and base path (the
/// document's own scheme and host when absent), or OpenAPI 3's first server (variables at
/// their defaults, relative to the document's URL).
fn server_url(document: &Value, base: &url::Url) -> Result<String, String> {
    if document.get("swagger").is_some() {
        let scheme = document
            .get("schemes")
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .and_then(Value::as_str)
            .unwrap_or(base.scheme());
        let own_host = match (base.host_str(), base.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err("has no host and neither has its URL".to_owned()),
        };
        let host = document.get("host").and_then(Value::as_str).map_or(own_host, str::to_owned);
        let base_path = document.get("basePath").and_then(Value::as_str).unwrap_or("/");
        return Ok(format!("{scheme}://{host}{base_path}"));
    }
    let server = document.get("servers").and_then(Value::as_array).and_then(|s| s.first());
    let Some(server) = server else { return Ok(base.join("/").map_err(|e| e.to_string())?.into()) };
    let mut url = server.get("url").and_then(Value::as_str).unwrap_or("/").to_owned();
    for (name, variable) in server.get("variables").and_then(Value::as_object).into_iter().flatten() {
        let default = variable.get("default").map(text).unwrap_or_default();
        url = url.replace(&format!("{{{name}}}"), &default);
    }
    Ok(base.join(&url).map_err(|e| format!("server {url:?} is not a URL: {e}"))?.into())
}

/// The items of a list (nothing for anything else).
fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// `value`, or what its `$ref` (a pointer into the document) leads to.
fn dereference<'d>(document: &'d Value, mut value: &'d Value) -> Result<&'d Value, String> {
    for _ in 0..MAX_REFS {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else { return Ok(value) };
        let pointer = reference.strip_prefix('#').ok_or_else(|| format!("refers outside itself ({reference:?})"))?;
        value = document.pointer(pointer).ok_or_else(|| format!("refers to {reference:?}, which it lacks"))?;
    }
    Err(format!("has more than {MAX_REFS} $refs in a row"))
}

/// A parameter value as text: text as it is, anything else as JSON.
fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// `text` percent-encoded for one path segment: unreserved characters kept.
fn encode_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn petstore() -> Value {
        json!({
            "swagger": "2.0",
            "host": "petstore.swagger.io",
            "basePath": "/v2",
            "schemes": ["https", "http"],
            "parameters": {"petId": {"name": "petId", "in": "path", "required": true, "type": "integer"}},
            "paths": {
                "/pet/findByStatus": {"get": {
                    "operationId": "findPetsByStatus",
                    "parameters": [{"name": "status", "in": "query", "required": true, "type": "array",
                                    "items": {"type": "string"}, "collectionFormat": "multi"}]
                }},
                "/pet/{petId}": {
                    "parameters": [{"$ref": "#/parameters/petId"}],
                    "get": {"operationId": "getPetById"},
                    "post": {"operationId": "updatePetWithForm", "parameters": [
                        {"$ref": "#/parameters/petId"},
                        {"name": "name", "in": "formData", "type": "string"}
                    ]}
                },
                "/pet": {"post": {"operationId": "addPet", "parameters": [
                    {"name": "body", "in": "body", "required": true, "schema": {}},
                    {"name": "api_key", "in": "header", "type": "string"}
                ]}}
            }
        })
    }

    const URL: &str = "https://petstore.swagger.io/v2/swagger.json";

    #[test]
    fn swagger_operations_resolve() {
        let find = resolve(&petstore(), URL, "findPetsByStatus", &json!({"status": "available"})).unwrap();
        assert_eq!(
            (find.method.as_str(), find.url.as_str()),
            ("GET", "https://petstore.swagger.io/v2/pet/findByStatus?status=available")
        );
        let many = resolve(&petstore(), URL, "findPetsByStatus", &json!({"status": ["a", "b c"]})).unwrap();
        assert_eq!(many.url, "https://petstore.swagger.io/v2/pet/findByStatus?status=a&status=b+c");
        let get = resolve(&petstore(), URL, "getPetById", &json!({"petId": 1})).unwrap();
        assert_eq!(get.url, "https://petstore.swagger.io/v2/pet/1");
        let slash = resolve(&petstore(), URL, "getPetById", &json!({"petId": "a/b"})).unwrap();
        assert_eq!(slash.url, "https://petstore.swagger.io/v2/pet/a%2Fb");
        let add = resolve(&petstore(), URL, "addPet", &json!({"body": {"name": "Milou"}, "api_key": "k"})).unwrap();
        assert_eq!((add.method.as_str(), add.body), ("POST", Some(json!({"name": "Milou"}))));
        assert_eq!(add.headers.get("api_key"), Some(&json!("k")));
    }

    #[test]
    fn openapi_3_servers_and_request_bodies_resolve() {
        let document = json!({
            "openapi": "3.0.3",
            "servers": [{"url": "/api/{version}", "variables": {"version": {"default": "v3"}}}],
            "paths": {"/orders/{id}": {"put": {
                "operationId": "updateOrder",
                "parameters": [{"name": "id", "in": "path", "required": true}, {"name": "dry", "in": "query"}],
                "requestBody": {"content": {"application/json": {}}}
            }}}
        });
        let put = resolve(
            &document,
            "http://127.0.0.1:9/spec/openapi.json",
            "updateOrder",
            &json!({"id": 7, "dry": true, "qty": 2}),
        )
        .unwrap();
        assert_eq!(put.url, "http://127.0.0.1:9/api/v3/orders/7?dry=true");
        assert_eq!(put.body, Some(json!({"qty": 2})));
        let none = json!({"openapi": "3.1.0", "paths": {"/x": {"get": {"operationId": "x"}}}});
        assert_eq!(resolve(&none, "https://a.test/docs/api.yaml", "x", &json!({})).unwrap().url, "https://a.test/x");
    }

    #[test]
    fn mistakes_are_named() {
        let error = |id: &str, parameters: Value| resolve(&petstore(), URL, id, &parameters).unwrap_err();
        assert_eq!(error("nope", json!({})), "has no operation \"nope\"");
        assert_eq!(error("getPetById", json!({})), "operation \"getPetById\" needs parameter \"petId\" (path)");
        assert!(error("updatePetWithForm", json!({"petId": 1, "name": "x"})).contains("formData parameter \"name\""));
        let looping = json!({"a": {"$ref": "#/a"}, "paths": {"/x": {"get": {"operationId": "x", "parameters": [{"$ref": "#/a"}]}}}});
        assert!(resolve(&looping, URL, "x", &json!({})).unwrap_err().contains("$refs in a row"));
        assert!(read_document(b"openapi: 3.0.0\npaths: {}\n").unwrap()["paths"].is_object());
        assert!(read_document(&[0xff, 0xfe]).unwrap_err().contains("neither JSON"));
    }
}
