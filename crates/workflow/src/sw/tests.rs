use std::time::Duration;

use baton_core::program::{
    Action, CallTarget, CaseAction, Collect, Flow, HttpOutput, ListenMode, Program, Task, Then, Wait,
};
use serde_json::{Value, json};

use super::*;

/// The workflow documents of a vendored feature file, in order.
fn documents(feature: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut lines = feature.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "Given a workflow with definition:" {
            continue;
        }
        let open = lines.next().expect("a doc string follows");
        let indent = open.len() - open.trim_start().len();
        let mut text = String::new();
        for line in lines.by_ref() {
            if line.trim() == "\"\"\"" {
                break;
            }
            text.push_str(line.get(indent..).unwrap_or(""));
            text.push('\n');
        }
        found.push(serde_yaml::from_str(&text).expect("the kit's documents are YAML"));
    }
    found
}

fn feature(name: &str) -> Vec<Program> {
    let text = match name {
        "branch" => include_str!("../../../../conformance/serverless-workflow/features/branch.feature"),
        "call" => include_str!("../../../../conformance/serverless-workflow/features/call.feature"),
        "data-flow" => include_str!("../../../../conformance/serverless-workflow/features/data-flow.feature"),
        "do" => include_str!("../../../../conformance/serverless-workflow/features/do.feature"),
        "emit" => include_str!("../../../../conformance/serverless-workflow/features/emit.feature"),
        "flow" => include_str!("../../../../conformance/serverless-workflow/features/flow.feature"),
        "for" => include_str!("../../../../conformance/serverless-workflow/features/for.feature"),
        "raise" => include_str!("../../../../conformance/serverless-workflow/features/raise.feature"),
        "set" => include_str!("../../../../conformance/serverless-workflow/features/set.feature"),
        "switch" => include_str!("../../../../conformance/serverless-workflow/features/switch.feature"),
        "try" => include_str!("../../../../conformance/serverless-workflow/features/try.feature"),
        other => panic!("no feature {other}"),
    };
    documents(text).iter().map(|d| compile(d).unwrap_or_else(|e| panic!("{name}: {e}")).program).collect()
}

/// Each task of a block: its name, keyword and reference.
fn shape(tasks: &[Task]) -> Vec<(&str, &str, &str)> {
    tasks.iter().map(|t| (t.name.as_str(), t.action.keyword(), t.reference.as_str())).collect()
}

fn sw(body: &str) -> String {
    format!("document: {{dsl: '1.0.3', namespace: default, name: test, version: '1.0.0'}}\n{body}")
}

fn parse(body: &str) -> Result<SwWorkflow> {
    let document: Value = serde_yaml::from_str(&sw(body)).expect("YAML");
    compile(&document)
}

fn program(body: &str) -> Program {
    parse(body).unwrap_or_else(|e| panic!("{body}\n{e}")).program
}

#[track_caller]
fn refused(body: &str, expected: &str) {
    match parse(body) {
        Ok(_) => panic!("{body}\naccepted, wanted an error containing {expected:?}"),
        Err(e) => assert!(e.to_string().contains(expected), "{body}\n{e}\nshould contain {expected:?}"),
    }
}

fn render(template: &Template, input: Value) -> Value {
    template.render(&input).unwrap()
}

#[test]
fn the_kits_documents_map_onto_programs() {
    // branch: a competing fork of three one-task branches.
    let [fork] = &feature("branch")[..] else { panic!("one scenario") };
    assert_eq!(fork.name.as_str(), "fork");
    assert_eq!(fork.root.flow, Flow::Sequence);
    let Action::Fork(branches) = &fork.root.tasks[0].action else { panic!("a fork") };
    assert!(branches.compete);
    let names: Vec<&str> = branches.branches.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["setRed", "setGreen", "setBlue"]);
    assert_eq!(branches.branches[1].1.tasks[0].reference, "/do/0/branchWithCompete/fork/branches/1/setGreen");

    // call: three HTTP calls (the two OpenAPI calls are checked below).
    let call = documents(include_str!("../../../../conformance/serverless-workflow/features/call.feature"));
    assert_eq!(call.len(), 5);
    let content = compile(&call[0]).unwrap().program;
    let Action::Call(find) = &content.root.tasks[0].action else { panic!("a call") };
    let CallTarget::Http(http) = &find.target else { panic!("http") };
    assert_eq!(http.method, "GET");
    assert_eq!(
        render(&http.uri, json!({"status": "available"})),
        json!("https://petstore.swagger.io/v2/pet/findByStatus?status=available")
    );
    assert_eq!(http.output, HttpOutput::Content);
    assert_eq!(render(content.root.tasks[0].output.as_ref().unwrap(), json!([{"id": 7}, {"id": 8}])), json!({"id": 7}));
    let response = compile(&call[1]).unwrap().program;
    let Action::Call(get) = &response.root.tasks[0].action else { panic!("a call") };
    let CallTarget::Http(http) = &get.target else { panic!("http") };
    assert_eq!(http.output, HttpOutput::Response);
    assert_eq!(render(&http.uri, json!({"petId": 1})), json!("https://petstore.swagger.io/v2/pet/1"));
    let basic = compile(&call[2]).unwrap().program;
    let Action::Call(login) = &basic.root.tasks[0].action else { panic!("a call") };
    let CallTarget::Http(http) = &login.target else { panic!("http") };
    let (user, password) = http.basic_auth.as_ref().expect("basic credentials");
    let input = json!({"username": "serverless-workflow", "password": "conformance-test"});
    assert_eq!(
        (render(user, input.clone()), render(password, input.clone())),
        (input["username"].clone(), input["password"].clone())
    );
    assert_eq!(render(&http.uri, input), json!("https://httpbin.org/basic-auth/serverless-workflow/conformance-test"));

    // data-flow: input.from and output.as as bare expressions, `$input` in an output filter.
    let flows = feature("data-flow");
    let task = &flows[0].root.tasks[0];
    let claims = json!({"user": {"claims": {"subject": "6AsnRgGEB0q2O7ux9JXFAw"}}});
    assert_eq!(render(task.input.as_ref().unwrap(), claims), json!("6AsnRgGEB0q2O7ux9JXFAw"));
    assert_eq!(render(flows[1].root.tasks[0].output.as_ref().unwrap(), json!({"id": 1, "name": "x"})), json!(1));
    let second = &flows[2].root.tasks[1];
    let ids = second.output.as_ref().unwrap().render_vars(&json!({"id": 2}), &[json!(1)]).unwrap();
    assert_eq!(ids, json!({"ids": [1, 2]}));

    // do: a nested sequence of three sets.
    let [nested] = &feature("do")[..] else { panic!("one scenario") };
    let Action::Do(block) = &nested.root.tasks[0].action else { panic!("a do") };
    assert_eq!(block.flow, Flow::Sequence);
    assert_eq!(
        shape(&block.tasks),
        [
            ("setRed", "set", "/do/0/compositeExample/do/0/setRed"),
            ("setGreen", "set", "/do/0/compositeExample/do/1/setGreen"),
            ("setBlue", "set", "/do/0/compositeExample/do/2/setBlue"),
        ]
    );

    // emit: the event's attributes, data rendered from the input.
    let [emit] = &feature("emit")[..] else { panic!("one scenario") };
    let Action::Emit(event) = &emit.root.tasks[0].action else { panic!("an emit") };
    let rendered = render(&event.event, json!({"user": {"firstName": "John", "lastName": "Doe"}}));
    assert_eq!(rendered["data"], json!({"greetings": "Hello John Doe!"}));
    assert_eq!(rendered["type"], "com.fake-source.user.greeted.v1");

    // flow: an implicit sequence, then explicit jumps.
    let flow = feature("flow");
    assert!(flow[0].root.tasks.iter().all(|t| t.then == Then::Continue));
    let thens: Vec<Then> = flow[1].root.tasks.iter().map(|t| t.then).collect();
    assert_eq!(thens, [Then::Goto(2), Then::End, Then::Goto(1)]);

    // for: the item renamed, the index by default, iterations threaded one after the other.
    let [each] = &feature("for")[..] else { panic!("one scenario") };
    let Action::For(looped) = &each.root.tasks[0].action else { panic!("a for") };
    assert_eq!((looped.each.as_str(), looped.at.as_str()), ("color", "index"));
    assert_eq!((looped.concurrency, looped.collect), (1, Collect::Thread));
    assert_eq!(render(&looped.items, json!({"colors": ["red"]})), json!(["red"]));
    assert_eq!(looped.body.tasks[0].reference, "/do/0/loopColors/do/0/markProcessed");

    // raise: an inline error.
    let [raise] = &feature("raise")[..] else { panic!("one scenario") };
    let Action::Raise(error) = &raise.root.tasks[0].action else { panic!("a raise") };
    assert_eq!(render(&error.status, json!({})), json!(400));
    assert_eq!(render(&error.r#type, json!({})), json!("https://serverlessworkflow.io/errors/types/compliance"));
    assert_eq!(render(error.title.as_ref().unwrap(), json!({})), json!("Compliance Error"));
    assert_eq!(raise.root.tasks[0].reference, "/do/0/raiseError");

    // set: literal and computed fields.
    let [set] = &feature("set")[..] else { panic!("one scenario") };
    let Action::Set(value) = &set.root.tasks[0].action else { panic!("a set") };
    let input = json!({"configuration": {"size": {"width": 6}, "fill": {"red": 69}}});
    assert_eq!(render(value, input), json!({"shape": "circle", "size": {"width": 6}, "fill": {"red": 69}}));

    // switch: cases jump within the list; a default case, wherever written, is tried last.
    let switch = feature("switch");
    let Action::Switch(cases) = &switch[0].root.tasks[0].action else { panic!("a switch") };
    let targets: Vec<(&str, bool)> =
        cases.cases.iter().map(|c| (c.name.as_str(), matches!(c.then, CaseAction::Flow(Then::Goto(_))))).collect();
    assert_eq!(targets, [("red", true), ("green", true), ("blue", true)]);
    assert!(matches!(cases.cases[1].then, CaseAction::Flow(Then::Goto(2))));
    assert_eq!(render(cases.cases[0].when.as_ref().unwrap(), json!({"color": "red"})), json!(true));
    assert_eq!(switch[1].root.tasks[0].then, Then::End);
    let Action::Switch(with_default) = &switch[2].root.tasks[0].action else { panic!("a switch") };
    let last = with_default.cases.last().unwrap();
    assert_eq!((last.name.as_str(), last.when.is_none()), ("anyOtherColor", true));
    assert!(matches!(last.then, CaseAction::Flow(Then::Goto(4))));

    // try: a caught 404 with a renamed error variable and a catch block.
    let tries = feature("try");
    let Action::Try(caught) = &tries[0].root.tasks[0].action else { panic!("a try") };
    assert_eq!(caught.body.tasks[0].reference, "/do/0/tryGetPet/try/0/getPet");
    assert_eq!(caught.catch.filter.status, Some(404));
    assert_eq!(
        caught.catch.filter.r#type.as_deref(),
        Some("https://serverlessworkflow.io/dsl/errors/types/communication")
    );
    assert_eq!(caught.catch.variable, "err");
    let catch_body = caught.catch.body.as_ref().expect("a catch block");
    assert_eq!(catch_body.tasks[0].reference, "/do/0/tryGetPet/catch/do/0/setError");
    let Action::Try(uncaught) = &tries[1].root.tasks[0].action else { panic!("a try") };
    assert_eq!(uncaught.catch.filter.status, Some(503));
}

#[test]
fn the_kits_openapi_calls_name_their_document_and_operation() {
    let call = documents(include_str!("../../../../conformance/serverless-workflow/features/call.feature"));
    let expected = [("findPetsByStatus", HttpOutput::Content, "status"), ("getPetById", HttpOutput::Response, "petId")];
    for (document, (operation, output, parameter)) in call[3..].iter().zip(expected) {
        let program = compile(document).unwrap().program;
        let Action::Call(call) = &program.root.tasks[0].action else { panic!("a call") };
        let CallTarget::OpenApi(api) = &call.target else { panic!("openapi") };
        assert_eq!(render(&api.document, json!({})), json!("https://petstore.swagger.io/v2/swagger.json"));
        assert_eq!((api.operation_id.as_str(), api.output), (operation, output));
        let parameters = render(api.parameters.as_ref().unwrap(), json!({"status": "available", "petId": 1}));
        assert!(parameters.get(parameter).is_some_and(|v| !v.is_null()), "{parameters}");
    }
}

#[test]
fn documents_name_and_describe_the_workflow() {
    let named = parse("do: [{a: {set: {x: 1}}}]\n").unwrap();
    assert_eq!((named.name.as_str(), named.version.as_str()), ("test", "1.0.0"));
    let document: Value = serde_yaml::from_str(
        "document: {dsl: '1.0.0', namespace: shop, name: order-pet, version: '0.1.0', title: Order a pet, \
         summary: '# Order', tags: {team: pets, tier: 2}}\ndo: [{a: {set: {x: 1}}}]\n",
    )
    .unwrap();
    let described = compile(&document).unwrap();
    assert_eq!(described.name.as_str(), "shop.order-pet");
    assert_eq!(described.description, "Order a pet");
    assert_eq!(described.labels.get("team").map(String::as_str), Some("pets"));
    assert_eq!(described.labels.get("tier").map(String::as_str), Some("2"));
    assert!(is_document(&document));
    assert!(!is_document(&json!({"name": "w", "steps": []})));
}

#[test]
fn every_supported_construct_maps() {
    let program = program(
        r#"
use:
  errors:
    notFound: {type: https://example.com/errors/not-found, status: 404, title: Not found}
  retries:
    thrice: {delay: {seconds: 1}, backoff: {exponential: {}}, limit: {attempt: {count: 3}}}
  timeouts:
    short: {after: PT5S}
  authentications:
    petstore: {bearer: {token: '${ $context.token }'}}
input:
  from: .order
output:
  as: '${ {result: .} }'
timeout:
  after: {minutes: 10}
do:
  - check:
      if: .amount > 0
      call: http
      with:
        method: post
        endpoint: {uri: 'https://shop.test/orders/{id}', authentication: {use: petstore}}
        headers: {X-Trace: '${ $workflow.id }'}
        query: {verbose: 'true'}
        body: {amount: '${ .amount }', note: 'costs ${ 5 }'}
        output: response
      timeout: short
      export: {as: '${ $context + {checked: true} }'}
  - pay:
      call: baton
      with:
        query: {capabilities: [payment.charge]}
        input: {amount: '${ .content.amount }'}
  - ship:
      call: baton
      with: {service: shipping, alternatives: [shipping-backup]}
  - pause:
      wait: PT1M30S
  - approval:
      listen:
        to:
          one: {with: {type: com.shop.order.approved.v1}}
      timeout: {after: {hours: 48}}
  - both:
      listen:
        to:
          all:
            - with: {type: com.shop.paid}
            - with: {type: com.shop.packed}
  - announce:
      emit:
        event:
          with: {source: 'https://shop.test', type: com.shop.order.shipped.v1, data: '${ . }'}
  - child:
      run:
        workflow: {namespace: shop, name: invoice, version: '1.2.0', input: {order: '${ . }'}}
  - guarded:
      try:
        - fail:
            raise: {error: notFound}
      catch:
        errors: {with: {status: 404, details: missing}}
        as: failure
        when: '$failure.status == 404'
        exceptWhen: '${ $failure.title == "ignore" }'
        retry: thrice
        do:
          - note:
              set: '${ $failure }'
  - inline:
      try:
        - again: {wait: {milliseconds: 5}}
      catch:
        retry: {delay: PT0.5S, limit: {attempt: {count: 0}}}
  - loop:
      for: {each: line, at: n, in: '${ .lines }'}
      while: '$n < 10'
      do:
        - total: {set: {n: '${ $n }', line: '${ $line }'}}
  - end:
      set: done
      then: exit
"#,
    );
    assert_eq!(program.name.as_str(), "test");
    assert_eq!(render(program.input.as_ref().unwrap(), json!({"order": {"amount": 3}})), json!({"amount": 3}));
    assert_eq!(render(program.output.as_ref().unwrap(), json!(7)), json!({"result": 7}));
    assert_eq!(program.deadline, Some(Duration::from_secs(600)));
    let tasks = &program.root.tasks;
    let keywords: Vec<&str> = tasks.iter().map(|t| t.action.keyword()).collect();
    assert_eq!(
        keywords,
        ["call", "call", "call", "wait", "listen", "listen", "emit", "run", "try", "try", "for", "set"]
    );

    let check = &tasks[0];
    assert_eq!(render(check.condition.as_ref().unwrap(), json!({"amount": 5})), json!(true));
    assert_eq!(check.task_timeout, Some(Duration::from_secs(5)));
    assert_eq!(check.retry.max_attempts, 1);
    assert!(check.export.is_some());
    let Action::Call(call) = &check.action else { panic!("a call") };
    let CallTarget::Http(http) = &call.target else { panic!("http") };
    assert_eq!((http.method.as_str(), http.output), ("POST", HttpOutput::Response));
    assert_eq!(render(&http.uri, json!({"id": "a/b"})), json!("https://shop.test/orders/a%2Fb"));
    assert!(http.bearer.is_some() && http.basic_auth.is_none());
    assert_eq!(render(http.query.as_ref().unwrap(), json!({})), json!({"verbose": "true"}));
    // A string that is not one expression as a whole is text in the DSL.
    assert_eq!(render(http.body.as_ref().unwrap(), json!({"amount": 3})), json!({"amount": 3, "note": "costs ${ 5 }"}));

    let Action::Call(pay) = &tasks[1].action else { panic!("a call") };
    assert!(matches!(&pay.target, CallTarget::Query(q) if q.capabilities == ["payment.charge"]));
    assert_eq!(render(&pay.payload, json!({"content": {"amount": 9}})), json!({"amount": 9}));
    let Action::Call(ship) = &tasks[2].action else { panic!("a call") };
    let CallTarget::Services(ids) = &ship.target else { panic!("services") };
    assert_eq!(ids.iter().map(|i| i.as_str()).collect::<Vec<_>>(), ["shipping", "shipping-backup"]);
    assert_eq!(render(&ship.payload, json!({"x": 1})), json!({"x": 1}));

    assert!(matches!(tasks[3].action, Action::Wait(Wait::For(d)) if d == Duration::from_secs(90)));
    let Action::Listen(approval) = &tasks[4].action else { panic!("a listen") };
    assert_eq!(
        (approval.signals.as_slice(), approval.mode),
        (&["com.shop.order.approved.v1".to_owned()][..], ListenMode::Any)
    );
    assert_eq!(approval.timeout, Some(Duration::from_secs(48 * 3600)));
    assert_eq!(tasks[4].task_timeout, None);
    // The DSL's listen yields the events consumed, as a list.
    assert_eq!(render(tasks[4].output.as_ref().unwrap(), json!({"ok": true})), json!([{"ok": true}]));
    let Action::Listen(both) = &tasks[5].action else { panic!("a listen") };
    assert_eq!((both.signals.len(), both.mode), (2, ListenMode::All));
    assert!(tasks[5].output.is_none());

    let Action::Run(child) = &tasks[7].action else { panic!("a run") };
    assert_eq!((child.name.as_str(), child.version), ("shop.invoice", None));
    assert_eq!(render(&child.input, json!(1)), json!({"order": 1}));

    let Action::Try(guarded) = &tasks[8].action else { panic!("a try") };
    let Action::Raise(raise) = &guarded.body.tasks[0].action else { panic!("a raise") };
    assert_eq!(render(&raise.status, json!({})), json!(404));
    assert_eq!(guarded.catch.filter.detail.as_deref(), Some("missing"));
    assert_eq!(guarded.catch.variable, "failure");
    let retry = guarded.catch.retry.as_ref().unwrap();
    assert_eq!((retry.max_attempts, retry.initial_backoff, retry.multiplier), (4, Duration::from_secs(1), 2.0));
    assert!(guarded.catch.when.is_some() && guarded.catch.except_when.is_some());
    let Action::Try(inline) = &tasks[9].action else { panic!("a try") };
    let retry = inline.catch.retry.as_ref().unwrap();
    assert_eq!((retry.max_attempts, retry.initial_backoff, retry.multiplier), (1, Duration::from_millis(500), 1.0));
    assert!(inline.catch.body.is_none());

    let Action::For(looped) = &tasks[10].action else { panic!("a for") };
    assert!(looped.condition.is_some());
    let Action::Set(total) = &looped.body.tasks[0].action else { panic!("a set") };
    assert_eq!(
        total
            .render_vars(
                &json!({}),
                &[json!(0), json!(0), json!(0), json!(0), json!(0), json!(0), json!("a"), json!(3)]
            )
            .unwrap(),
        json!({"n": 3, "line": "a"})
    );

    assert_eq!(tasks[11].then, Then::Exit);
    assert_eq!(tasks[11].name.as_str(), "end");
}

#[test]
fn unsupported_constructs_are_refused_with_their_place() {
    let call = |kind: &str, with: &str| format!("do:\n  - c:\n      call: {kind}\n      with: {with}\n");
    refused(
        &call("grpc", "{proto: {endpoint: 'file://a.proto'}, service: {name: s, host: h}, method: m}"),
        "unsupported: call: grpc at /do/0/c/call",
    );
    refused(
        &call("asyncapi", "{document: {endpoint: 'https://a.test/'}, operation: o, message: {}}"),
        "unsupported: call: asyncapi at /do/0/c/call",
    );
    refused(&call("a2a", "{method: message/send}"), "unsupported: call: a2a at /do/0/c/call");
    refused(
        &call("mcp", "{method: tools/list, transport: {stdio: {command: x}}}"),
        "unsupported: call: mcp at /do/0/c/call",
    );
    refused(&call("log", "{message: hi}"), "unsupported: call of function \"log\"");
    for (process, body) in
        [("container", "{image: alpine}"), ("script", "{language: js, code: '1'}"), ("shell", "{command: ls}")]
    {
        refused(
            &format!("do:\n  - r:\n      run:\n        {process}: {body}\n"),
            &format!("unsupported: run: {process} at /do/0/r/run/{process}"),
        );
    }
    refused(
        "do:\n  - r:\n      run: {await: false, workflow: {namespace: default, name: x, version: '1.0.0'}}\n",
        "unsupported: run without await",
    );
    refused(
        "schedule: {every: PT1M}\ndo: []\n",
        "unsupported: schedule (start executions from a scheduler of your own) at /schedule",
    );
    refused(
        "use: {functions: {f: {set: {a: 1}}}}\ndo: []\n",
        "unsupported: use.functions (call tasks inline) at /use/functions",
    );
    refused("use: {extensions: [{x: {extend: all}}]}\ndo: []\n", "unsupported: use.extensions at /use/extensions");
    refused("use: {secrets: [s]}\ndo: []\n", "unsupported: use.secrets");
    refused("use: {catalogs: {c: {endpoint: 'https://c.test/'}}}\ndo: []\n", "unsupported: use.catalogs");
    refused(
        "use: {authentications: {o: {oauth2: {authority: 'https://a.test/', grant: client_credentials}}}}\ndo: []\n",
        "unsupported: oauth2 authentication (only basic and bearer) at /use/authentications/o/oauth2",
    );
    refused(
        &call("http", "{method: get, endpoint: {uri: 'https://a.test/', authentication: {basic: {use: creds}}}}"),
        "unsupported: secret-based basic authentication",
    );
    refused(
        &call(
            "http",
            "{method: get, endpoint: {uri: 'https://a.test/', authentication: {digest: {username: u, password: p}}}}",
        ),
        "unsupported: digest authentication",
    );
    refused(
        &call("http", "{method: get, endpoint: 'https://a.test/{+path}'}"),
        "unsupported: URI template operator `+`",
    );
    refused(&call("http", "{method: get, endpoint: 'https://a.test/', redirect: true}"), "unsupported: redirect: true");
    refused(
        &call(
            "openapi",
            "{document: {endpoint: {uri: 'https://a.test/api.json', authentication: {basic: {username: u, password: p}}}}, operationId: o}",
        ),
        "unsupported: authentication to fetch an OpenAPI document at /do/0/c/with/document/endpoint/authentication",
    );
    refused(
        "input: {schema: {document: {type: object}}}\ndo: []\n",
        "unsupported: input.schema (data is not validated against schemas) at /input/schema",
    );
    refused("do:\n  - s: {set: {a: 1}, output: {schema: {document: {}}}}\n", "unsupported: output.schema");
    refused("do:\n  - w: {wait: '${ .delay }'}\n", "unsupported: a duration computed by an expression at /do/0/w/wait");
    refused("do:\n  - l: {listen: {to: {any: []}}}\n", "unsupported: listening to any event");
    refused(
        "do:\n  - l: {listen: {to: {one: {with: {type: a.b, source: 'https://s.test/'}}}}}\n",
        "unsupported: event filter on `source`",
    );
    refused(
        "do:\n  - l: {listen: {to: {one: {with: {type: a.b}, correlate: {c: {from: .x}}}}}}\n",
        "unsupported: event correlation",
    );
    refused("do:\n  - l: {listen: {to: {any: [{with: {type: a}}], until: .done}}}\n", "unsupported: listen.to.until");
    refused(
        "do:\n  - l: {listen: {to: {one: {with: {type: a}}}, read: envelope}}\n",
        "unsupported: listen.read: envelope",
    );
    refused(
        "do:\n  - l: {listen: {to: {one: {with: {type: a}}}}, foreach: {do: []}}\n",
        "unsupported: listen with foreach",
    );
    refused(
        "do:\n  - e: {emit: {event: {with: {source: 'https://s.test/', type: t}, extra: 1}}}\n",
        "unsupported: emit.event.extra",
    );
    refused(
        "do:\n  - r: {raise: {error: {type: 'https://e.test/', status: 400, instance: /x}}}\n",
        "unsupported: an error's instance",
    );
    let try_with =
        |retry: &str| format!("do:\n  - t:\n      try: [{{w: {{wait: PT1S}}}}]\n      catch: {{retry: {retry}}}\n");
    refused(&try_with("{limit: {attempt: {count: 2}}, backoff: {linear: {}}}"), "unsupported: linear backoff");
    refused(&try_with("{limit: {attempt: {count: 2}}, jitter: {from: PT1S, to: PT2S}}"), "unsupported: retry.jitter");
    refused(&try_with("{limit: {attempt: {count: 2}}, when: .x}"), "unsupported: retry.when");
    refused(&try_with("{limit: {duration: PT1M, attempt: {count: 2}}}"), "unsupported: retry.limit.duration");
    refused(&try_with("{limit: {attempt: {count: 2, duration: PT1S}}}"), "unsupported: retry.limit.attempt.duration");
    refused(
        &try_with("{limit: {attempt: {count: 2}}, backoff: {exponential: {factor: 3}}}"),
        "unsupported: exponential backoff settings",
    );
    refused("evaluate: {language: js}\ndo: []\n", "unsupported: expression language \"js\"");
    let document: Value =
        serde_yaml::from_str("document: {dsl: '0.8', namespace: default, name: x, version: '1.0.0'}\ndo: []\n")
            .unwrap();
    assert_eq!(
        compile(&document).unwrap_err().to_string(),
        "unsupported: DSL version \"0.8\" (Baton reads 1.0.x) at /document/dsl"
    );
}

#[test]
fn mistakes_are_placed() {
    refused(
        "do:\n  - a: {set: {x: 1}, then: nowhere}\n",
        "invalid /do/0/a/then \"nowhere\": names no task of the same list",
    );
    refused(
        "do:\n  - s:\n      switch:\n        - x: {when: .a, then: gone}\n",
        "invalid /do/0/s/switch/0/x/then \"gone\"",
    );
    refused(
        "do:\n  - s:\n      switch:\n        - x: {then: end}\n        - y: {then: end}\n",
        "is a second case without `when`",
    );
    refused(
        "do:\n  - a: {set: {x: 1}}\n  - a: {set: {x: 2}}\n",
        "invalid /do/1 \"a\": names a second task of this list",
    );
    refused("do:\n  - 'get pet': {set: {x: 1}}\n", "task name must be 1 to 128 letters");
    refused("do:\n  - a: {set: {x: '${ .a. }'}}\n", "invalid /do/0/a/set/x");
    refused("do:\n  - a: {set: {x: '${ $nope }'}}\n", "uses undefined $nope");
    refused("do:\n  - a: {set: '${ .a } and ${ .b }'}\n", "closes its `${` early");
    refused("do:\n  - a: {set: {x: 1}, if: '.a |'}\n", "invalid /do/0/a/if");
    refused(
        "do:\n  - f: {for: {each: input, in: .xs}, do: []}\n",
        "invalid /do/0/f/for \"input\": is already a variable here",
    );
    refused("do:\n  - f: {for: {each: 'a-b', in: .xs}, do: []}\n", "must be a variable name");
    refused(
        "do:\n  - t:\n      try: [{w: {wait: PT1S}}]\n      catch: {retry: {delay: PT1S}}\n",
        "invalid /do/0/t/catch/retry/limit/attempt/count \"(absent)\": a retry policy needs limit.attempt.count",
    );
    refused(
        "do:\n  - t:\n      try: [{w: {wait: PT1S}}]\n      catch: {retry: nope}\n",
        "names no policy in use.retries",
    );
    refused(
        "do:\n  - r: {raise: {error: nope}}\n",
        "invalid /do/0/r/raise/error \"nope\": names no error in use.errors",
    );
    refused("do:\n  - a: {set: {x: 1}, timeout: nope}\n", "names no timeout in use.timeouts");
    refused("do:\n  - w: {wait: P1M}\n", "invalid /do/0/w/wait \"P1M\": uses `M` (years or months)");
    refused("do:\n  - w: {wait: PT}\n", "has `T` without");
    refused("do:\n  - l: {listen: {to: {one: {with: {type: 'a b'}}}}}\n", "/do/0/l/listen/to/one/with/type");
    refused(
        "do:\n  - c:\n      call: http\n      with: {method: 'ge t', endpoint: 'https://a.test/'}\n",
        "invalid /do/0/c/with/method",
    );
    refused(
        "do:\n  - c:\n      call: http\n      with: {method: get, endpoint: {uri: 'https://a.test/', authentication: {use: nope}}}\n",
        "names no policy in use.authentications",
    );
    refused("do:\n  - c: {call: baton, with: {service: Bad}}\n", "invalid /do/0/c/with/service \"Bad\"");
    refused(
        "do:\n  - c: {call: baton, with: {service: a, query: {capabilities: [x]}}}\n",
        "exactly one of `service` and `query`",
    );
    refused(
        "do:\n  - c: {call: baton, with: {service: a, colour: red}}\n",
        "unknown field `colour` (call: baton takes",
    );
    refused("do:\n  - c: {call: baton, with: {query: {colour: red}}}\n", "invalid /do/0/c/with/query");
    refused("do:\n  - c: {call: baton}\n", "call: baton needs `with`");
    refused(
        "do:\n  - r:\n      run:\n        workflow: {namespace: Shop, name: x, version: '1.0.0'}\n",
        "invalid /do/0/r/run/workflow/name \"Shop.x\"",
    );
    let upper: Value =
        serde_yaml::from_str("document: {dsl: '1.0.3', namespace: default, name: Pets, version: '1.0.0'}\ndo: []\n")
            .unwrap();
    assert!(compile(&upper).unwrap_err().to_string().starts_with("invalid /document/name \"Pets\""));
    // The schema's own checks, placed.
    refused("do:\n  - a: {set: {x: 1}, colour: red}\n", "schema at /do/0/a: unknown field `colour`");
    refused("do:\n  - a: [1]\n", "schema at /do/0/a: want object, but got array");
    refused("do:\n  - a: {frobnicate: 1}\n", "schema at /do/0/a: a task needs one of `call`, `for`, `do`");
    refused(
        "do:\n  - a: {set: {x: 1}}\n    b: {set: {x: 1}}\n",
        "schema at /do/0: a task list item is an object with one key",
    );
    refused("do:\n  - a: {do: 5}\n", "schema at /do/0/a/do: want array, but got number");
    refused("colour: red\ndo: []\n", "schema at /: unknown field `colour`");
    let missing: Value =
        serde_yaml::from_str("document: {dsl: '1.0.3', namespace: default, name: x}\ndo: []\n").unwrap();
    assert_eq!(
        compile(&missing).unwrap_err().to_string(),
        "document does not match the Serverless Workflow schema at /document: missing `version`"
    );
}

#[test]
fn limits_hold_and_hostile_documents_end_quickly() {
    // Nesting past the depth limit stops at the limit, whatever lies deeper.
    let mut inner = json!({"leaf": {"set": {"a": 1}, "bogus": 1}});
    for i in 0..200 {
        inner = json!({ format!("n{i}"): {"do": [inner]} });
    }
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "deep", "version": "1.0.0"},
        "do": [inner]
    });
    let error = compile(&document).unwrap_err().to_string();
    assert!(error.contains("nested too deep, the limit is 64 levels"), "{error}");
    // A schema error deep inside nested tasks is found in linear time: each task is checked
    // once, on its own.
    let mut inner = json!({"leaf": {"set": {"a": 1}, "bogus": 1}});
    for i in 0..60 {
        inner = json!({ format!("n{i}"): {"do": [inner]} });
    }
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "deep", "version": "1.0.0"},
        "do": [inner]
    });
    let error = compile(&document).unwrap_err().to_string();
    assert!(error.ends_with("/leaf: unknown field `bogus`"), "{error}");
    // Too many tasks in all.
    let many: Vec<Value> = (0..=crate::MAX_STEPS).map(|i| json!({ format!("t{i}"): {"set": {"i": i}} })).collect();
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "many", "version": "1.0.0"},
        "do": many
    });
    assert!(compile(&document).unwrap_err().to_string().contains("10001 steps, the limit is 10000"));
    // Too many fork branches.
    let branches: Vec<Value> = (0..=MAX_BRANCHES).map(|i| json!({ format!("b{i}"): {"set": {"i": i}} })).collect();
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "wide", "version": "1.0.0"},
        "do": [{"f": {"fork": {"branches": branches}}}]
    });
    assert!(compile(&document).unwrap_err().to_string().contains("the limit is 256"));
    // Too many switch cases.
    let cases: Vec<Value> =
        (0..=MAX_BRANCHES).map(|i| json!({ format!("c{i}"): {"when": ".x", "then": "end"} })).collect();
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "wide", "version": "1.0.0"},
        "do": [{"s": {"switch": cases}}]
    });
    assert!(compile(&document).unwrap_err().to_string().contains("cases, the limit is 256"));
    // Too many expressions that need jq, however the tasks are spread.
    let sets: Vec<Value> = (0..=crate::MAX_JQ_EXPRESSIONS)
        .map(|i| json!({ format!("t{i}"): {"set": {"n": format!("${{ .n + {i} }}")}} }))
        .collect();
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "costly", "version": "1.0.0"},
        "do": sets
    });
    let error = compile(&document).unwrap_err().to_string();
    assert!(error.contains("1001 expressions that need jq (not plain paths), the limit is 1000"), "{error}");
    // A retry count past the bound.
    refused(
        "do:\n  - t:\n      try: [{w: {wait: PT1S}}]\n      catch: {retry: {limit: {attempt: {count: 1000000}}}}\n",
        "must be 0 to 100000",
    );
}

#[test]
fn the_documented_examples_compile() {
    let docs = include_str!("../../../../docs/workflow-format.md");
    let section = docs.split("\n## Serverless Workflow DSL 1.0\n").nth(1).expect("the docs have the section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let examples: Vec<&str> = section.split("```yaml\n").skip(1).filter_map(|b| b.split("\n```").next()).collect();
    let mut keywords = std::collections::BTreeSet::new();
    for example in &examples {
        let document: Value = serde_yaml::from_str(example).unwrap_or_else(|e| panic!("{example}\n{e}"));
        let workflow = compile(&document).unwrap_or_else(|e| panic!("{example}\n{e}"));
        for task in workflow.program.root.all_tasks() {
            keywords.insert(task.action.keyword());
            if let Action::Call(call) = &task.action {
                keywords.insert(match call.target {
                    CallTarget::Http(_) => "call: http",
                    CallTarget::OpenApi(_) => "call: openapi",
                    CallTarget::Services(_) | CallTarget::Query(_) => "call: baton",
                });
            }
        }
    }
    // An example of every supported construct.
    let every = [
        "call: baton",
        "call: http",
        "call: openapi",
        "do",
        "emit",
        "for",
        "fork",
        "listen",
        "raise",
        "run",
        "set",
        "switch",
        "try",
        "wait",
    ];
    for keyword in every {
        assert!(keywords.contains(keyword), "no documented example of {keyword}");
    }
}

#[test]
fn the_largest_document_allowed_compiles() {
    // 10,000 tasks, each jumping to the next by name: checks and lookups stay linear.
    let last = crate::MAX_STEPS - 1;
    let many: Vec<Value> = (0..crate::MAX_STEPS)
        .map(|i| {
            let then = if i == last { "end".to_owned() } else { format!("t{}", i + 1) };
            json!({ format!("t{i}"): {"wait": "PT0S", "then": then} })
        })
        .collect();
    let document = json!({
        "document": {"dsl": "1.0.3", "namespace": "default", "name": "many", "version": "1.0.0"},
        "do": many
    });
    let program = compile(&document).unwrap().program;
    assert_eq!(program.root.tasks.len(), crate::MAX_STEPS);
    assert_eq!(program.root.tasks[0].then, Then::Goto(1));
    assert_eq!(program.root.tasks[last].then, Then::End);
}
