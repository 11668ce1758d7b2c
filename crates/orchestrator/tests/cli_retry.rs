//! `baton run` when the connection is lost after the start reached the server: the server has
//! started the execution, its answer never arrives, and the CLI tries again with the same
//! idempotency key. Exactly one execution results, with a key the CLI made or one the user
//! gave. A TCP proxy between the CLI and a real `baton serve` holds back the first frame of
//! the answer, so the loss falls at that moment every time; then it cuts the connection, or
//! the test kills the server with `kill -9` and starts it again.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_grpc::pb;
use serde_json::Value;
use support::{Clients, ServerProcess, TICK};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A proxy to `server` that holds back the first answer frame of its first connection (the
/// server has done the call by then) and never passes it on; later connections pass
/// everything.
struct Proxy {
    address: SocketAddr,
    /// Connections whose answer was held back.
    held: Arc<AtomicUsize>,
    /// Told when the answer is held back.
    holding: Arc<Notify>,
}

/// What the proxy does with the first connection once it holds its answer.
#[derive(Clone, Copy)]
enum Then {
    /// Closes it at once: the connection is lost.
    Cut,
    /// Keeps it until the server closes its side (the test kills the server), then closes it.
    WaitForTheServer,
}

impl Proxy {
    async fn start(server: SocketAddr, then: Then) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (held, holding) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let (counted, told) = (Arc::clone(&held), Arc::clone(&holding));
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((client, _)) = listener.accept().await {
                // While the server is down the client's connection closes at once.
                let Ok(upstream) = TcpStream::connect(server).await else { continue };
                let (holding_back, counted, told) =
                    (std::mem::take(&mut first), Arc::clone(&counted), Arc::clone(&told));
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = upstream.into_split();
                    let up = tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
                    if holding_back {
                        if answer_begins(&mut server_read, &mut client_write).await {
                            counted.fetch_add(1, Ordering::SeqCst);
                            told.notify_one();
                            if let Then::WaitForTheServer = then {
                                let _ = tokio::io::copy(&mut server_read, &mut tokio::io::sink()).await;
                            }
                        }
                    } else {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    }
                    // Dropping both halves of each socket closes the connection both ways.
                    up.abort();
                });
            }
        });
        Self { address, held, holding }
    }
}

/// Passes the server's HTTP/2 frames on to the client until one belongs to a stream (not the
/// connection's stream 0), which it holds back; true when it stopped there.
async fn answer_begins(from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) -> bool {
    loop {
        let mut header = [0u8; 9];
        if from.read_exact(&mut header).await.is_err() {
            return false;
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if stream != 0 {
            return true;
        }
        let mut payload = vec![0; length];
        if from.read_exact(&mut payload).await.is_err() || to.write_all(&header).await.is_err() {
            return false;
        }
        if to.write_all(&payload).await.is_err() {
            return false;
        }
    }
}

/// Runs `baton --server <server> <args>` off the runtime.
async fn baton(server: SocketAddr, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"));
    command.arg("--server").arg(format!("http://{server}")).args(args).env_remove("BATON_SERVER").kill_on_drop(true);
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("baton ends").unwrap()
}

/// The executions of `tick` the server has, only those started with `key` when one is given.
async fn ticks(clients: &mut Clients, key: &str) -> Vec<pb::Execution> {
    let request = pb::ListExecutionsRequest {
        workflow: "tick".to_owned(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    };
    clients.executions.list_executions(request).await.unwrap().into_inner().executions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_answer_is_lost_is_retried_with_its_key_into_one_execution() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    let mut clients = Clients::new(server.channel().await);
    clients.apply(TICK).await;

    // A key the CLI makes.
    let proxy = Proxy::start(server.grpc, Then::Cut).await;
    let output = baton(proxy.address, &["--output", "json", "run", "tick"]).await;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert_eq!(proxy.held.load(Ordering::SeqCst), 1, "the proxy cut the first answer: {text}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The execution the retry found is the one the lost attempt started, shown as started.
    assert_eq!(answer["existing"], Value::Bool(false), "{answer}");
    let executions = ticks(&mut clients, "").await;
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(answer["execution"]["id"].as_str(), Some(executions[0].id.as_str()));

    // A key the user gives: the same, under that key.
    let proxy = Proxy::start(server.grpc, Then::Cut).await;
    let output = baton(proxy.address, &["--output", "json", "run", "tick", "--idempotency-key", "order-7"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(proxy.held.load(Ordering::SeqCst), 1);
    assert_eq!(ticks(&mut clients, "").await.len(), 2);
    let keyed = ticks(&mut clients, "order-7").await;
    assert_eq!(keyed.len(), 1, "{keyed:?}");

    // Each run without a key gets its own: two runs, two executions.
    for _ in 0..2 {
        let output = baton(server.grpc, &["run", "tick"]).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(ticks(&mut clients, "").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_server_is_killed_before_it_answers_is_one_execution_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&dir.path().join("data"), &[]).await;
    Clients::new(server.channel().await).apply(TICK).await;
    let proxy = Proxy::start(server.grpc, Then::WaitForTheServer).await;
    let address = proxy.address;
    let run = tokio::spawn(async move { baton(address, &["run", "tick", "--idempotency-key", "restart-1"]).await });
    // The start is durable and its answer on the way: kill -9 the server, then start it again.
    tokio::time::timeout(Duration::from_secs(30), proxy.holding.notified())
        .await
        .expect("the start reached the server");
    server.kill9();
    server.restart().await;
    let output = run.await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut clients = Clients::new(server.channel().await);
    let keyed = ticks(&mut clients, "restart-1").await;
    assert_eq!(keyed.len(), 1, "{keyed:?}");
    assert_eq!(ticks(&mut clients, "").await.len(), 1);
}
