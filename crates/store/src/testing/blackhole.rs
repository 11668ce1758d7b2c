//! A TCP proxy in front of a PostgreSQL server that can cut the network: what tests of a node
//! cut off from its database put between the two.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A TCP proxy to the database that can blackhole every connection through it: bytes are
/// read and dropped, so statements hang as behind a dead network, until it is restored; the
/// connections that were cut stay cut.
#[derive(Debug)]
pub struct BlackholeProxy {
    /// The connection string to give a client instead of the database's.
    pub url: String,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl BlackholeProxy {
    /// Starts relaying to the database of `url` (a key-value or URL connection string) on a
    /// port of 127.0.0.1, on the current tokio runtime.
    ///
    /// # Panics
    /// When `url` does not parse or the port cannot be bound.
    pub async fn start(url: &str) -> Self {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Unix(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            tokio_postgres::config::Host::Tcp(host) => Target::Tcp(format!("{host}:{port}")),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (cut, generation) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (cut_, generation_) = (Arc::clone(&cut), Arc::clone(&generation));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (cut, generation) = (Arc::clone(&cut_), Arc::clone(&generation_));
                let target = target.clone();
                tokio::spawn(async move {
                    let born = generation.load(Ordering::SeqCst);
                    let (client_read, client_write) = client.into_split();
                    match target {
                        Target::Unix(path) => {
                            let server = tokio::net::UnixStream::connect(path).await.unwrap();
                            let (server_read, server_write) = server.into_split();
                            relay(client_read, server_write, server_read, client_write, cut, generation, born).await;
                        }
                        Target::Tcp(address) => {
                            let server = tokio::net::TcpStream::connect(address).await.unwrap();
                            let (server_read, server_write) = server.into_split();
                            relay(client_read, server_write, server_read, client_write, cut, generation, born).await;
                        }
                    }
                });
            }
        });
        let dbname = config.get_dbname().unwrap();
        let user = config.get_user().unwrap();
        Self { url: format!("host=127.0.0.1 port={} user={user} dbname={dbname}", address.port()), cut, generation }
    }

    /// Blackholes every connection open now, for good, and every new one until [`Self::restore`].
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone)]
enum Target {
    Unix(std::path::PathBuf),
    Tcp(String),
}

async fn relay(
    client_read: impl AsyncRead + Unpin + Send + 'static,
    server_write: impl AsyncWrite + Unpin + Send + 'static,
    server_read: impl AsyncRead + Unpin + Send + 'static,
    client_write: impl AsyncWrite + Unpin + Send + 'static,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let one_way = |mut from: Box<dyn AsyncRead + Unpin + Send>, mut to: Box<dyn AsyncWrite + Unpin + Send>| {
        let (cut, generation) = (Arc::clone(&cut), Arc::clone(&generation));
        async move {
            let mut buffer = vec![0; 16 << 10];
            loop {
                let Ok(n) = from.read(&mut buffer).await else { return };
                if n == 0 {
                    return;
                }
                // A connection that lived through a cut stays cut.
                if cut.load(Ordering::SeqCst) || generation.load(Ordering::SeqCst) != born {
                    continue;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let up = tokio::spawn(one_way(Box::new(client_read), Box::new(server_write)));
    let down = tokio::spawn(one_way(Box::new(server_read), Box::new(client_write)));
    let _ = tokio::join!(up, down);
}
