//! Which process opened a client connection: what a fault limited to callers (a dependency
//! fault between two applications on this host) needs to know of a request.
//!
//! A client on loopback is a socket of some process on this host. Its inode is found once per
//! connection in `/proc/net/tcp` (or `tcp6`) by its address, the proxy's peer; whether a given
//! process owns it is then one look through that process's `/proc/PID/fd`. Both answers stay
//! true for the connection's life (a socket does not change owner, and a pid is not reused
//! while its process holds the socket), so each is looked up at most once per connection and
//! only while a rule limited to callers is in force. Clients on other hosts are no process of
//! this one: no rule limited to callers applies to them.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;

use super::lock;

/// What is known of one connection's owner.
#[derive(Debug, Default)]
pub struct Owner(Mutex<Known>);

#[derive(Debug, Default)]
struct Known {
    /// The client socket's inode: `None` until looked up, `Some(None)` when not found.
    inode: Option<Option<u64>>,
    /// Pids already checked, and whether each owns the socket.
    pids: Vec<(u32, bool)>,
}

impl Owner {
    /// Whether any of `pids` owns the connection, from what [`Owner::learn`] found; a pid
    /// not looked up yet does not.
    pub fn is_any(&self, pids: &[u32]) -> bool {
        let known = lock(&self.0);
        known
            .pids
            .iter()
            .any(|(pid, owns)| *owns && pids.contains(pid))
    }

    /// Looks up whether each of `pids` owns the connection from `peer` to the proxy's
    /// `local` address, for those not known yet. Reads `/proc`, so it runs on the blocking
    /// pool.
    pub async fn learn(&self, peer: SocketAddr, local_port: u16, pids: &[u32]) {
        let (inode, unknown) = {
            let known = lock(&self.0);
            let unknown: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|pid| !known.pids.iter().any(|(p, _)| p == pid))
                .collect();
            (known.inode, unknown)
        };
        if unknown.is_empty() {
            return;
        }
        let found = tokio::task::spawn_blocking(move || {
            let inode = inode.unwrap_or_else(|| socket_inode(peer, local_port));
            let owners: Vec<(u32, bool)> = unknown
                .iter()
                .map(|&pid| (pid, inode.is_some_and(|i| owns(pid, i))))
                .collect();
            (inode, owners)
        })
        .await;
        if let Ok((inode, owners)) = found {
            let mut known = lock(&self.0);
            known.inode = Some(inode);
            for (pid, owns) in owners {
                if !known.pids.iter().any(|(p, _)| *p == pid) {
                    known.pids.push((pid, owns));
                }
            }
        }
    }
}

/// The inode of the socket whose local address is `peer` and whose remote port is
/// `local_port`: the client's end of a connection to the proxy. `None` for a client that is
/// not a socket of this host.
fn socket_inode(peer: SocketAddr, local_port: u16) -> Option<u64> {
    let table = match peer.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = fs::read_to_string(table).ok()?;
    find_inode(&text, peer, local_port)
}

/// [`socket_inode`] over the text of a `/proc/net/tcp{,6}` table.
fn find_inode(table: &str, peer: SocketAddr, local_port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        let local = parse_addr(local)?;
        let remote_port = u16::from_str_radix(remote.rsplit_once(':')?.1, 16).ok()?;
        (local == peer && remote_port == local_port)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address as a host-order integer.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A v4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether process `pid` holds socket `inode` open.
fn owns(pid: u32, inode: u64) -> bool {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    entries.flatten().any(|entry| {
        fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn addresses_of_the_kernels_tables_parse() {
        assert_eq!(
            parse_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_addr("zz:1"), None);
    }

    #[test]
    fn the_process_that_opened_a_loopback_connection_is_found_and_others_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _client = TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        let inode = socket_inode(peer, local.port()).expect("the client socket is in the table");
        assert!(owns(std::process::id(), inode));
        assert!(!owns(1, inode));
        assert_eq!(socket_inode(peer, local.port().wrapping_add(1)), None);
    }

    #[tokio::test]
    async fn an_owner_is_learned_once_and_answers_for_any_of_a_set() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let _client = TcpStream::connect(local).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        let owner = Owner::default();
        let me = std::process::id();
        assert!(!owner.is_any(&[me]), "not looked up yet");
        owner.learn(peer, local.port(), &[1, me]).await;
        assert!(owner.is_any(&[me]));
        assert!(owner.is_any(&[7, me]));
        assert!(!owner.is_any(&[1]));
    }
}
