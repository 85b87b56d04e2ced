//! A TCP proxy between a NATS client and its server that reads the
//! server's messages and can drop chosen ones whole (the stream stays valid
//! NATS protocol): a delivery lost on the way, as a server dropping a slow
//! consumer's messages or a broken route would lose it. Its sockets keep
//! Nagle's algorithm, so what the client sends can reach the server tens
//! of milliseconds late, as over a real network: a client that takes its
//! own buffer flush for the server's receipt shows it.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Rules {
    /// (subject prefix, how many more to drop)
    drop: Vec<(String, usize)>,
    dropped: Vec<String>,
}

pub struct LossyProxy {
    pub port: u16,
    rules: Arc<Mutex<Rules>>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Listens on a free port, forwarding to `upstream` (host:port).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let r = rules.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };

                tokio::spawn(pipe(client, server, r.clone()));
            }
        });
        LossyProxy { port, rules, task }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops the next `n` messages whose subject starts with `prefix`.
    pub fn drop_next(&self, prefix: &str, n: usize) {
        self.rules
            .lock()
            .expect("rules")
            .drop
            .push((prefix.to_owned(), n));
    }

    /// Subjects of the messages dropped so far.
    pub fn dropped(&self) -> Vec<String> {
        self.rules.lock().expect("rules").dropped.clone()
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, rules: Arc<Mutex<Rules>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    // Client to server: as it is.
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut server_read = BufReader::new(server_read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match server_read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let mut words = text.split_whitespace();
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let body_len = match op.as_str() {
            // MSG <subject> <sid> [reply] <#bytes>; HMSG ... <#hdr> <#total>
            "MSG" | "HMSG" => args.last().and_then(|n| n.parse::<usize>().ok()),
            _ => None,
        };
        let mut body = Vec::new();
        if let Some(n) = body_len {
            body.resize(n + 2, 0);
            if server_read.read_exact(&mut body).await.is_err() {
                break;
            }
        }
        let lose = body_len.is_some() && {
            let subject = args.first().copied().unwrap_or_default();
            let mut r = rules.lock().expect("rules");
            match r
                .drop
                .iter_mut()
                .find(|(p, n)| *n > 0 && subject.starts_with(p.as_str()))
            {
                Some(rule) => {
                    rule.1 -= 1;
                    r.dropped.push(subject.to_owned());
                    true
                }
                None => false,
            }
        };
        if lose {
            continue;
        }
        if client_write.write_all(&line).await.is_err()
            || client_write.write_all(&body).await.is_err()
        {
            break;
        }
    }
    up.abort();
}
