//! A TCP proxy that injects faults into the bytes a client sends: it drops the connection after
//! N bytes, or flips one byte, or (for as long as it runs) renames a request header, so that the
//! server never sees it (a store that ignores `If-None-Match`). Placed between Cassette and a real server, it shows that dropped
//! connections are retried and corrupted bodies are caught.
//!
//! A fault is armed once and fires on the first connection whose client-to-server byte count
//! crosses its offset (so a small request on a pooled connection does not consume it); every
//! other connection passes through untouched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward this many bytes of one connection, then close it (both directions).
    DropAfter(u64),
    /// Invert the byte at this offset of one connection's client-to-server stream.
    CorruptAt(u64),
}

impl Fault {
    fn offset(self) -> u64 {
        match self {
            Fault::DropAfter(n) | Fault::CorruptAt(n) => n,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    armed: Mutex<Vec<Fault>>,
    connections: AtomicU64,
    fired: AtomicU64,
    /// Header names renamed in every request (lowercase, equal lengths), and how often.
    renames: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    renamed: AtomicU64,
}

impl State {
    /// Renames the configured header names in `chunk`, in place (same length: nothing shifts).
    /// A header split across two reads is missed; requests' headers arrive in one read here.
    fn rename_headers(&self, chunk: &mut [u8]) {
        let renames = self.renames.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (from, to) in renames.iter() {
            let mut i = 0;
            while i + from.len() < chunk.len() {
                let at = &chunk[i..i + from.len()];
                let line_start = i >= 2 && chunk[i - 2..i] == *b"\r\n";
                if line_start && at.eq_ignore_ascii_case(from) && chunk[i + from.len()] == b':' {
                    chunk[i..i + from.len()].copy_from_slice(to);
                    self.renamed.fetch_add(1, Ordering::SeqCst);
                    i += from.len();
                } else {
                    i += 1;
                }
            }
        }
    }
}

impl State {
    /// Takes an armed fault whose offset falls in `[start, end)`.
    fn take(&self, start: u64, end: u64) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = armed.iter().position(|f| (start..end).contains(&f.offset()))?;
        self.fired.fetch_add(1, Ordering::SeqCst);
        Some(armed.remove(i))
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    /// The port clients connect to.
    pub port: u16,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on a free local port forwarding to `127.0.0.1:upstream`, on its own threads
    /// so that it keeps running whatever the test's runtime does.
    pub fn start(upstream: u16) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        // Bound with std: callers may already be inside a runtime, where `block_on` is not allowed.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else { return };
            while let Ok((client, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = relay(client, server, st).await;
                    }
                });
            }
        });
        Ok(Self { port, state, runtime: Some(runtime) })
    }

    /// Arms a fault for the next connection that reaches its offset.
    pub fn arm(&self, fault: Fault) {
        self.state.armed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(fault);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Faults that fired so far.
    pub fn fired(&self) -> u64 {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// From now on, renames the request header `from` to `to` (same length, e.g.
    /// `if-none-match` to `x-ignored-hdr`) in every request: the server never sees it.
    pub fn rename_header(&self, from: &str, to: &str) {
        assert_eq!(from.len(), to.len(), "a renamed header keeps its length");
        let mut r = self.state.renames.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.push((from.to_ascii_lowercase().into_bytes(), to.as_bytes().to_vec()));
    }

    /// Headers renamed so far.
    pub fn renamed(&self) -> u64 {
        self.state.renamed.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Tests drop the proxy from inside their own runtime, where blocking is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut seen = 0u64;
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                let _ = sw.shutdown().await;
                return Ok::<_, std::io::Error>(());
            }
            let chunk = &mut buf[..n];
            match state.take(seen, seen + n as u64) {
                Some(Fault::DropAfter(at)) => {
                    let keep = usize::try_from(at - seen).unwrap_or(n);
                    sw.write_all(&chunk[..keep]).await?;
                    // Returning drops both halves: the connection is cut mid-request.
                    return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fault: dropped"));
                }
                Some(Fault::CorruptAt(at)) => {
                    let i = usize::try_from(at - seen).unwrap_or(0);
                    chunk[i] = !chunk[i];
                }
                None => {}
            }
            state.rename_headers(chunk);
            seen += n as u64;
            sw.write_all(chunk).await?;
        }
    };
    let down = async move {
        tokio::io::copy(&mut sr, &mut cw).await?;
        let _ = cw.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    // A fault (or error) on the way up cuts the connection at once; a client that finished
    // sending still gets the rest of the response; the server closing ends everything.
    tokio::pin!(up);
    tokio::pin!(down);
    tokio::select! {
        r = &mut up => match r {
            Ok(()) => down.await,
            Err(e) => Err(e),
        },
        r = &mut down => r,
    }
}
