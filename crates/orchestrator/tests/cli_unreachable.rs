//! The `baton` CLI against servers that are not Baton: one that takes the connection and never
//! answers, and an HTTP/1 server. Each command ends within its timeout with one line that says
//! what is wrong, not a hang or a bare "h2 protocol error".

use std::process::Output;
use std::time::{Duration, Instant};

/// Runs the `baton` binary with `args`; panics when it does not end within `within`.
async fn baton(args: &[&str], within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env_remove("BATON_SERVER")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, child)
        .await
        .unwrap_or_else(|_| panic!("baton {args:?} did not end within {within:?}"))
        .unwrap();
    (output, started.elapsed())
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_the_command_within_its_timeout() {
    // Takes connections and holds them, never reading or writing a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for command in [&["exec", "list"][..], &["workflow", "get", "checkout"], &["exec", "watch", "x"]] {
        let mut args = vec!["--server", &server, "--timeout", "1s"];
        args.extend_from_slice(command);
        let (output, took) = baton(&args, Duration::from_secs(30)).await;
        assert_eq!(output.status.code(), Some(1), "{command:?}: {output:?}");
        let message = stderr(&output);
        assert!(message.contains(&format!("no answer from {server} within 1s")), "{command:?}: {message}");
        assert!(message.contains("--timeout"), "{command:?}: {message}");
        assert!(took < Duration::from_secs(15), "{command:?} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_server_is_named_as_not_speaking_grpc() {
    // Answers whatever comes as an HTTP/1-only server does (nginx, Python's http.server): 400.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut request = [0; 1024];
                let _ = socket.read(&mut request).await;
                let answer = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let (output, _) = baton(&["--server", &server, "exec", "list"], Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains(r#"speaks HTTP/1 (it answered "HTTP/1.1 400 Bad Request")"#), "{message}");
    assert!(message.contains("not gRPC over HTTP/2"), "{message}");
    assert!(!message.contains("h2 protocol error"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_that_is_not_grpc_is_named_so() {
    // An HTTP server that also speaks HTTP/2, like the web console: a 404 without a gRPC status.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let (output, _) = baton(&["--server", &server, "exec", "list"], Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("answered HTTP 404 without a gRPC status: it is not a gRPC server"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_takes_no_connection_fails_the_command_within_its_connect_timeout() {
    // A listener that never accepts, its queue of one filled: the kernel drops further SYNs, so
    // a connection is never made (as behind a firewall that drops packets).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let address = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(address)).await
        {
            fillers.push(stream);
        }
    }
    let server = format!("http://{address}");
    let (output, took) =
        baton(&["--server", &server, "--connect-timeout", "1s", "exec", "list"], Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = stderr(&output);
    assert!(message.contains("no connection within 1s (--connect-timeout)"), "{message}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop((listener, fillers));
}
