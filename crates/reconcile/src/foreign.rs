//! Finds processes Gauntlet did not start that listen on an application's address.
//!
//! A process started by hand on `service.listen` would steal the application's traffic (or
//! stop the proxy from binding). The controller cannot safely kill it, so it reports it: the
//! listening socket is found in `/proc/net/tcp{,6}` and its owner by the socket's inode among
//! `/proc/*/fd`. Linux only; elsewhere nothing is reported.

use std::fs;
use std::net::SocketAddr;

/// A process listening on an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub pid: Option<u32>,
    pub command: String,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid} ({})", self.command),
            None => f.write_str("a process this user cannot see"),
        }
    }
}

/// The process listening on `addr` (TCP), if any.
pub fn listener_on(addr: SocketAddr) -> Option<Listener> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .find_map(|table| listening_inode(&table, addr))?;
    Some(owner_of(inode))
}

/// The inode of a socket in LISTEN state (`0A`) bound to `addr` or to the wildcard address on
/// its port.
fn listening_inode(table: &str, addr: SocketAddr) -> Option<u64> {
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "0A" {
            continue;
        }
        let Some((ip_hex, port_hex)) = cols[1].split_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
            continue;
        }
        let wildcard = ip_hex.bytes().all(|b| b == b'0');
        if wildcard || ip_matches(ip_hex, addr) {
            return cols[9].parse().ok();
        }
    }
    None
}

fn ip_matches(ip_hex: &str, addr: SocketAddr) -> bool {
    match addr {
        // /proc prints an IPv4 address as one little-endian u32.
        SocketAddr::V4(v4) => u32::from_str_radix(ip_hex, 16)
            .map(|n| n.to_le_bytes() == v4.ip().octets())
            .unwrap_or(false),
        SocketAddr::V6(_) => false,
    }
}

fn owner_of(inode: u64) -> Listener {
    let needle = format!("socket:[{inode}]");
    let Ok(procs) = fs::read_dir("/proc") else {
        return Listener {
            pid: None,
            command: String::new(),
        };
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let owns = fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()));
        if owns {
            let command = fs::read(entry.path().join("cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            return Listener {
                pid: Some(pid),
                command,
            };
        }
    }
    Listener {
        pid: None,
        command: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening_on_a_loopback_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let found = listener_on(addr).expect("listener found");
        assert_eq!(found.pid, Some(std::process::id()));
    }

    #[test]
    fn reports_nothing_on_a_free_port() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(listener_on(addr), None);
    }

    #[test]
    fn parses_a_listen_line_of_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n";
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(listening_inode(table, addr), Some(12345));
        let other: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        assert_eq!(listening_inode(table, other), None);
    }
}
