use clap::{CommandFactory as _, Parser, Subcommand};

use super::*;

/// The commands as `main` wires them: `serve` beside the client commands, options global.
#[derive(Debug, Parser)]
#[command(name = "baton")]
struct Cli {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(Box<crate::config::ServeArgs>),
    #[command(flatten)]
    Client(ClientCommand),
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied()))
}

fn client(args: &[&str]) -> (ClientCommand, ClientOptions) {
    match parse(args) {
        Ok(Cli { options, command: Command::Client(command) }) => (command, options),
        other => panic!("{args:?} parsed to {other:?}"),
    }
}

#[test]
fn the_commands_are_consistent_beside_serve() {
    Cli::command().debug_assert();
}

#[test]
fn options_are_global_and_have_defaults() {
    let (_, options) = client(&["service", "list", "--server", "http://10.0.0.1:50051", "--output", "json"]);
    assert_eq!(options.server, "http://10.0.0.1:50051");
    assert_eq!(options.output, OutputFormat::Json);
    let (_, options) = client(&["--output", "table", "service", "get", "pay"]);
    assert_eq!(options.output, OutputFormat::Table);
    assert!(parse(&["service", "list", "--output", "yaml"]).is_err());
}

#[test]
fn run_takes_input_version_key_and_one_of_wait_or_watch() {
    let (command, _) =
        client(&["run", "order", "--input", "{\"a\":1}", "--version", "3", "--idempotency-key", "k", "--watch"]);
    let ClientCommand::Run(args) = command else { panic!("{command:?}") };
    assert_eq!((args.name.as_str(), args.input.as_str(), args.version), ("order", "{\"a\":1}", Some(3)));
    assert_eq!(args.idempotency_key.as_deref(), Some("k"));
    assert!(args.watch && !args.wait);
    let (command, _) = client(&["run", "order"]);
    let ClientCommand::Run(args) = command else { panic!("{command:?}") };
    assert_eq!(args.input, "{}");
    assert!(parse(&["run", "order", "--wait", "--watch"]).is_err());
}

#[test]
fn exec_list_takes_states_repeated_or_comma_separated() {
    let (command, _) = client(&["exec", "list", "--state", "running,paused", "--state", "failed", "--limit", "5"]);
    let ClientCommand::Exec(ExecCommand::List { workflow, states, idempotency_key, limit }) = command else {
        panic!("{command:?}")
    };
    assert_eq!((workflow, idempotency_key), (None, None));
    assert_eq!(states, [StateFilter::Running, StateFilter::Paused, StateFilter::Failed]);
    assert_eq!(limit, 5);
    let (command, _) = client(&["exec", "list", "--idempotency-key", "order-42"]);
    let ClientCommand::Exec(ExecCommand::List { idempotency_key, .. }) = command else { panic!("{command:?}") };
    assert_eq!(idempotency_key.as_deref(), Some("order-42"));
    assert!(parse(&["exec", "list", "--state", "sleeping"]).is_err());
    assert!(parse(&["exec", "list", "--limit", "0"]).is_err());
}

#[test]
fn exec_watch_and_cancel_take_their_options() {
    let (command, _) = client(&["exec", "watch", "e1", "--from", "7"]);
    assert!(matches!(command, ClientCommand::Exec(ExecCommand::Watch { ref id, from_sequence: 7 }) if id == "e1"));
    let (command, _) = client(&["exec", "cancel", "e1", "--reason", "operator"]);
    assert!(matches!(command, ClientCommand::Exec(ExecCommand::Cancel { ref reason, .. }) if reason == "operator"));
}

#[test]
fn plan_and_orchestrate_take_a_goal() {
    let (command, _) = client(&[
        "plan",
        "--have",
        "order",
        "--want",
        "tracking,receipt",
        "--max-latency",
        "2000",
        "--min-availability",
        "0.9",
    ]);
    let ClientCommand::Plan(goal) = command else { panic!("{command:?}") };
    assert_eq!(goal.have, ["order"]);
    assert_eq!(goal.want, ["tracking", "receipt"]);
    assert_eq!((goal.max_latency, goal.max_cost, goal.min_availability), (Some(2000.0), None, Some(0.9)));
    assert!(parse(&["plan", "--have", "order"]).is_err(), "--want is required");

    let (command, _) = client(&["orchestrate", "--have", "order", "--want", "tracking", "--input", "{}", "--wait"]);
    let ClientCommand::Orchestrate(args) = command else { panic!("{command:?}") };
    assert!(args.wait);
    assert_eq!(args.goal.want, ["tracking"]);
}

/// A port nothing listens on: a command that got as far as connecting would exit 1, not 2.
const NOBODY: &str = "http://127.0.0.1:1";

async fn exit_of(args: &[&str]) -> ExitCode {
    let (command, mut options) = client(args);
    options.server = NOBODY.to_owned();
    run(command, &options).await
}

#[tokio::test]
async fn usage_errors_exit_2_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let bad_spec = dir.path().join("bad.yaml");
    std::fs::write(&bad_spec, "id: Not Valid\nendpoint: {protocol: http, url: http://x}\ncapabilities: [c]\n").unwrap();
    let missing = dir.path().join("missing.yaml").display().to_string();
    let bad_spec = bad_spec.display().to_string();
    for args in [
        &["run", "order", "--input", "{not json"][..],
        &["service", "register", &missing],
        &["service", "register", &bad_spec],
        &["workflow", "apply", &missing],
        &["plan", "--want", "x", "--min-availability", "2"],
        &["orchestrate", "--want", "x", "--input", "[1]"],
    ] {
        assert_eq!(exit_of(args).await, ExitCode::from(2), "{args:?}");
    }
    let (command, mut options) = client(&["service", "list"]);
    options.token_file = Some(dir.path().join("no-token"));
    assert_eq!(run(command, &options).await, ExitCode::from(2));
}

#[tokio::test]
async fn an_unreachable_server_exits_1() {
    assert_eq!(exit_of(&["service", "list"]).await, ExitCode::from(1));
    assert_eq!(exit_of(&["run", "order", "--input", "{}"]).await, ExitCode::from(1));
}

#[tokio::test]
async fn pages_are_fetched_until_the_last_or_the_limit() {
    let pages = |limit| {
        all_pages(limit, |token: String| async move {
            let page: u32 = if token.is_empty() { 0 } else { token.parse().unwrap() };
            let items: Vec<u32> = (page * 3..page * 3 + 3).collect();
            let next = if page < 2 { (page + 1).to_string() } else { String::new() };
            Ok::<_, tonic::Status>((items, next))
        })
    };
    assert_eq!(pages(usize::MAX).await.unwrap(), (0..9).collect::<Vec<_>>());
    assert_eq!(pages(4).await.unwrap(), [0, 1, 2, 3]);
    let stuck = all_pages(usize::MAX, |_| async { Ok::<_, tonic::Status>((vec![1], "same".to_owned())) });
    assert_eq!(stuck.await.unwrap(), [1, 1], "a repeated token ends the listing");
}
