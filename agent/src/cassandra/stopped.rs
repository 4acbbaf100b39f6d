//! Positive proof that Cassandra is not running on this host, gathered without asking Cassandra.
//!
//! "nodetool cannot connect" is no such proof: a wrong JMX host or port, a firewall or JMX
//! authentication make a live node look stopped, and an in-place restore would then replace the
//! files under it. So before an in-place restore touches data files, every check available here
//! must say "stopped", and any of them saying "running" (or being unable to tell) refuses:
//! - no process holds a file in the node's data, local system or commit-log directories open
//!   (`/proc/<pid>/fd`); a process that cannot be inspected (another user's, when the agent is
//!   not root) and looks like Cassandra (`CassandraDaemon` in its command line) refuses too;
//! - nothing listens on the native transport port nor on the storage (internode) port: a TCP
//!   connection is refused (a timeout proves nothing);
//! - the process named by the pid file (`cassandra.pid_file`), when configured, is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Directories no process may hold a file in.
    pub dirs: Vec<PathBuf>,
    /// Ports nothing may listen on: what it is, host, port.
    pub ports: Vec<(&'static str, String, u16)>,
    /// Cassandra's pid file, if known.
    pub pid_file: Option<PathBuf>,
    /// How long a connection attempt may take before the answer counts as unknown.
    pub connect_timeout: Duration,
}

/// Runs every check: `Ok(what was checked)` when all of them show Cassandra stopped, `Err(why it
/// may be running, or what could not be checked)` otherwise. Blocking (file system and sockets).
pub fn check(w: &Watched) -> Result<Vec<String>, Vec<String>> {
    let mut proof = Vec::new();
    let mut against = Vec::new();
    match processes(&w.dirs) {
        Ok(()) => proof.push(format!(
            "no process holds a file open in {}",
            w.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
        Err(mut reasons) => against.append(&mut reasons),
    }
    for (what, host, port) in &w.ports {
        match port_closed(host, *port, w.connect_timeout) {
            Ok(()) => proof.push(format!("nothing listens on {host}:{port} ({what})")),
            Err(r) => against.push(format!("{r} ({what} port)")),
        }
    }
    if let Some(f) = &w.pid_file {
        match pid_file(f) {
            Ok(p) => proof.push(p),
            Err(r) => against.push(r),
        }
    }
    if against.is_empty() { Ok(proof) } else { Err(against) }
}

/// Every process with a file open under one of `dirs`; `Err` lists them (up to five), and
/// processes that could not be inspected but look like Cassandra.
fn processes(dirs: &[PathBuf]) -> Result<(), Vec<String>> {
    // `/proc/<pid>/fd` links are resolved paths: compare with resolved directories.
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())).collect();
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").map_err(|e| {
        vec![format!(
            "cannot list the processes of this host in /proc ({e}), so it is unknown whether one holds the node's files"
        )]
    })?;
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let fds = match std::fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let cmd = command_line(pid);
                if cmd.contains("CassandraDaemon") {
                    found.push(format!(
                        "process {pid} ({}) looks like Cassandra and cannot be inspected by this user: run the agent as Cassandra's user or as root, or stop that process",
                        short(&cmd)
                    ));
                }
                continue;
            }
            // Gone meanwhile, or a kernel thread.
            Err(_) => continue,
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if let Some(d) = dirs.iter().find(|d| target.starts_with(d)) {
                found.push(format!(
                    "process {pid} ({}) has {} open, in {}",
                    short(&command_line(pid)),
                    target.display(),
                    d.display()
                ));
                break;
            }
        }
        if found.len() >= 5 {
            break;
        }
    }
    if found.is_empty() { Ok(()) } else { Err(found) }
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let s: String = String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned();
    if s.is_empty() {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
    } else {
        s
    }
}

fn short(s: &str) -> String {
    if s.chars().count() <= 120 { s.to_owned() } else { format!("{}…", s.chars().take(120).collect::<String>()) }
}

/// `Ok` when a connection to `host:port` is refused on every address the host has.
fn port_closed(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host} to check whether anything listens on {host}:{port}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address to check whether anything listens on {host}:{port}"));
    }
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Err(format!("something listens on {host}:{port} ({a}): Cassandra may be running")),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                return Err(format!(
                    "cannot tell whether anything listens on {host}:{port} ({a}): {e}; check the address and port settings"
                ));
            }
        }
    }
    Ok(())
}

fn pid_file(f: &Path) -> Result<String, String> {
    let text = match std::fs::read_to_string(f) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(format!("no pid file at {}", f.display())),
        Err(e) => return Err(format!("cannot read the pid file {}: {e}", f.display())),
    };
    let pid: u32 =
        text.trim().parse().map_err(|_| format!("the pid file {} does not hold a process id", f.display()))?;
    if Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!(
            "process {pid} named by the pid file {} is running ({})",
            f.display(),
            short(&command_line(pid))
        ));
    }
    Ok(format!("process {pid} named by the pid file {} is gone", f.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_holding_a_file_or_a_listening_port_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let file = data.join("nb-1-big-Data.db");
        std::fs::write(&file, b"x").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let w = Watched {
            dirs: vec![data.clone()],
            ports: vec![("native transport", "127.0.0.1".into(), port)],
            pid_file: Some(tmp.path().join("cassandra.pid")),
            connect_timeout: Duration::from_secs(1),
        };
        let proof = check(&w).unwrap();
        assert_eq!(proof.len(), 3, "{proof:?}");

        let mut child =
            std::process::Command::new("sleep").arg("30").stdin(std::fs::File::open(&file).unwrap()).spawn().unwrap();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::fs::write(tmp.path().join("cassandra.pid"), format!("{}\n", child.id())).unwrap();
        let against = check(&w).unwrap_err();
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        drop(listener);
        let text = against.join("\n");
        assert!(text.contains(&format!("process {pid} (sleep 30) has {}", file.display())), "{text}");
        assert!(text.contains(&format!("something listens on 127.0.0.1:{port}")), "{text}");
        assert!(text.contains("named by the pid file"), "{text}");
        assert_eq!(against.len(), 3, "{text}");
    }
}
