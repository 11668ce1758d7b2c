//! A real tonic server on 127.0.0.1:0 over the in-memory workflow catalog, driven by a real
//! tonic client: applying, versioning, reading and paging definitions, and bad requests.

mod common;

use baton_grpc::pb::workflow_service_client::WorkflowServiceClient;
use baton_grpc::{Config, pb};
use common::assert_status;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn source(name: &str, steps: &[&str]) -> String {
    let steps: Vec<_> = steps.iter().map(|id| json!({"id": id, "service": "svc"})).collect();
    json!({"name": name, "description": format!("the {name} flow"), "steps": steps}).to_string()
}

fn apply(text: String) -> pb::ApplyDefinitionRequest {
    pb::ApplyDefinitionRequest { source: text, format: pb::DefinitionFormat::Unspecified as i32 }
}

async fn start() -> (common::Running, WorkflowServiceClient<Channel>) {
    let (_, backends) = common::fake_backends();
    let server = common::serve(backends, Config::default()).await;
    let client = WorkflowServiceClient::new(server.channel.clone());
    (server, client)
}

#[tokio::test]
async fn definitions_are_versioned_read_back_and_paged() {
    let (server, mut c) = start().await;
    let first = c.apply_definition(apply(source("checkout", &["pay"]))).await.unwrap().into_inner();
    assert_eq!(first.outcome, pb::ApplyOutcome::Created as i32);
    let summary = first.definition.unwrap();
    assert_eq!((summary.name.as_str(), summary.version, summary.step_count), ("checkout", 1, 1));
    assert_eq!(summary.description, "the checkout flow");
    assert!(!summary.content_hash.is_empty() && summary.created_at.is_some());

    let same = c.apply_definition(apply(source("checkout", &["pay"]))).await.unwrap().into_inner();
    assert_eq!((same.outcome, same.definition.unwrap().version), (pb::ApplyOutcome::Unchanged as i32, 1));
    let changed = c.apply_definition(apply(source("checkout", &["pay", "ship"]))).await.unwrap().into_inner();
    assert_eq!((changed.outcome, changed.definition.unwrap().version), (pb::ApplyOutcome::Created as i32, 2));
    for name in ["billing", "refund"] {
        c.apply_definition(apply(source(name, &["x"]))).await.unwrap();
    }

    let latest = c.get_definition(pb::GetDefinitionRequest { name: "checkout".into(), version: None }).await;
    let latest = latest.unwrap().into_inner();
    assert_eq!((latest.definition.unwrap().version, latest.format), (2, pb::DefinitionFormat::Json as i32));
    assert_eq!(latest.source, source("checkout", &["pay", "ship"]));
    let body: serde_json::Value = serde_json::from_str(&latest.definition_json).unwrap();
    assert_eq!(body["steps"][1]["id"], "ship");
    let v1 = c.get_definition(pb::GetDefinitionRequest { name: "checkout".into(), version: Some(1) }).await;
    assert_eq!(v1.unwrap().into_inner().definition.unwrap().step_count, 1);

    // Every workflow's latest version, by name, a page at a time.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListDefinitionsRequest { page_size: 2, page_token: token.clone(), name: String::new() };
        let page = c.list_definitions(request).await.unwrap().into_inner();
        assert!(page.definitions.len() <= 2);
        names.extend(page.definitions.into_iter().map(|d| (d.name, d.version)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, [("billing".to_owned(), 1), ("checkout".to_owned(), 2), ("refund".to_owned(), 1)]);
    // One workflow's versions, newest first; an oversized page is capped, not refused.
    let request =
        pb::ListDefinitionsRequest { page_size: 1_000_000, page_token: String::new(), name: "checkout".into() };
    let versions = c.list_definitions(request).await.unwrap().into_inner();
    let versions: Vec<u32> = versions.definitions.iter().map(|d| d.version).collect();
    assert_eq!(versions, [2, 1]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_definition_requests_get_typed_codes_naming_the_problem() {
    let (server, mut c) = start().await;
    c.apply_definition(apply(source("checkout", &["pay"]))).await.unwrap();

    assert_status(c.apply_definition(apply("  ".into())).await, Code::InvalidArgument, "source: must not be empty");
    assert_status(
        c.apply_definition(apply("{\"name\": ".into())).await,
        Code::InvalidArgument,
        "invalid source: definition does not parse as json",
    );
    assert_status(
        c.apply_definition(apply(source("dup", &["a", "a"]))).await,
        Code::InvalidArgument,
        r#"step "a" appears twice"#,
    );
    let unknown_field = json!({"name": "x", "steps": [], "colour": "red"}).to_string();
    assert_status(c.apply_definition(apply(unknown_field)).await, Code::InvalidArgument, "colour");
    let bad_format = pb::ApplyDefinitionRequest { source: source("x", &["a"]), format: 9 };
    assert_status(c.apply_definition(bad_format).await, Code::InvalidArgument, "format: unknown enum value 9");

    let get = |name: &str, version| pb::GetDefinitionRequest { name: name.into(), version };
    assert_status(c.get_definition(get("ghost", None)).await, Code::NotFound, r#"definition "ghost" not found"#);
    assert_status(
        c.get_definition(get("checkout", Some(7))).await,
        Code::NotFound,
        r#"definition "checkout" version 7 not found"#,
    );
    assert_status(
        c.get_definition(get("checkout", Some(0))).await,
        Code::InvalidArgument,
        "version: versions start at 1",
    );
    assert_status(c.get_definition(get("Check Out", None)).await, Code::InvalidArgument, "name: invalid workflow");
    assert_status(c.get_definition(get("", None)).await, Code::InvalidArgument, "must not be empty");
    let bad_token = pb::ListDefinitionsRequest { page_size: 1, page_token: "NOT A NAME".into(), name: String::new() };
    assert_status(c.list_definitions(bad_token).await, Code::InvalidArgument, "page_token");
    let bad_name = pb::ListDefinitionsRequest { page_size: 1, page_token: String::new(), name: "A".into() };
    assert_status(c.list_definitions(bad_name).await, Code::InvalidArgument, "name: invalid workflow");

    // Nothing above stored anything.
    let all = c.list_definitions(pb::ListDefinitionsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.definitions.len(), 1);
    server.shutdown().await;
}
