//! Which process opened a client connection: what a fault limited to callers (a dependency
//! fault between two applications on this host) needs to know of a request.
//!
//! A client on loopback is a socket of some process on this host. Its inode is asked of the
//! kernel by the connection's exact addresses over `NETLINK_SOCK_DIAG` (one hashed lookup, as
//! `ss` does, whatever the number of sockets on the host); whether a given process owns it is
//! then one look through that process's `/proc/PID/fd`. Both answers stay true for the
//! connection's life (a socket does not change owner, and a pid is not reused while its
//! process holds the socket), so each is looked up at most once per connection and only while
//! a rule limited to callers is in force. Clients on other hosts are no process of this one:
//! no rule limited to callers applies to them.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    pub async fn learn(&self, peer: SocketAddr, local: SocketAddr, pids: &[u32]) {
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
            let inode = inode.unwrap_or_else(|| socket_inode(peer, local));
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

/// The inode of the client's socket of the connection from `peer` to the proxy's `local`
/// address, asked of the kernel by the exact addresses (`NETLINK_SOCK_DIAG`). `None` when no
/// socket of this host has them (a client on another host) or the kernel does not answer.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (peer, local) = (unmapped(peer), unmapped(local));
    let family = match (peer.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return None,
    };
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a socket this function just opened and owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: setsockopt with a timeval that outlives the call; a failure only leaves the
    // receive without its timeout, and the kernel answers diag requests synchronously.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // The client's socket: its source is the peer's address, its destination the proxy's.
    let request = diag_request(family as u8, peer, local);
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffers and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent != request.len() as isize {
        return None;
    }
    let mut answer = [0u8; 1024];
    // SAFETY: `answer` is valid for writes of its length.
    let received =
        unsafe { libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    let received = usize::try_from(received).ok()?;
    parse_diag_answer(answer.get(..received)?)
}

/// `SOCK_DIAG_BY_FAMILY`, the message type of requests and answers.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Netlink message header: length, type, flags, sequence, port id.
const NLMSG_HEADER: usize = 16;
/// `inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID: usize = 48;
/// Where `idiag_inode` sits in an `inet_diag_msg`: family, state, timer, retrans, the sockid,
/// expires, rqueue, wqueue, uid.
const INODE_OFFSET: usize = 4 + SOCKID + 16;

/// A `SOCK_DIAG_BY_FAMILY` request (`inet_diag_req_v2`) for the TCP socket from `src` to
/// `dst`: one exact lookup, not a dump.
fn diag_request(family: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let octets = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out = v6.octets(),
        }
        out
    };
    let len = NLMSG_HEADER + 8 + SOCKID;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&octets(src.ip()));
    m.extend_from_slice(&octets(dst.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // INET_DIAG_NOCOOKIE
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

/// The inode of the socket a `SOCK_DIAG_BY_FAMILY` answer describes; `None` for an error
/// answer (no such socket) or anything malformed.
fn parse_diag_answer(answer: &[u8]) -> Option<u64> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let at = NLMSG_HEADER + INODE_OFFSET;
    let inode = u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?);
    (inode != 0).then_some(u64::from(inode))
}

/// A v4 address written as IPv6 (`::ffff:127.0.0.1`, a v4 client of a dual-stack listener)
/// as the IPv4 address it is.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
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

    /// A connection on loopback: the listener's address, the accepted end's peer, and both ends.
    fn connection(bind: &str) -> (SocketAddr, SocketAddr, TcpStream, TcpStream) {
        let listener = TcpListener::bind(bind).unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        (local, peer, client, accepted)
    }

    #[test]
    fn the_process_that_opened_a_loopback_connection_is_found_and_others_are_not() {
        let (local, peer, _client, _accepted) = connection("127.0.0.1:0");
        let inode = socket_inode(peer, local).expect("the kernel knows the client socket");
        assert!(owns(std::process::id(), inode));
        assert!(!owns(1, inode));
        // The proxy's own end is another socket.
        let reversed = socket_inode(local, peer).expect("the accepted end is a socket too");
        assert_ne!(reversed, inode);
        let elsewhere = SocketAddr::new(local.ip(), local.port().wrapping_add(1));
        assert_eq!(socket_inode(peer, elsewhere), None);
    }

    #[test]
    fn ipv6_and_v4_mapped_connections_are_found() {
        if let Ok(listener) = TcpListener::bind("[::1]:0") {
            drop(listener);
            let (local, peer, _client, _accepted) = connection("[::1]:0");
            let inode = socket_inode(peer, local).expect("an IPv6 client socket");
            assert!(owns(std::process::id(), inode));
        }
        let (local, peer, _client, _accepted) = connection("127.0.0.1:0");
        let mapped = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        assert_eq!(
            socket_inode(mapped(peer), mapped(local)),
            socket_inode(peer, local)
        );
    }

    #[tokio::test]
    async fn an_owner_is_learned_once_and_answers_for_any_of_a_set() {
        let (local, peer, _client, _accepted) = connection("127.0.0.1:0");
        let owner = Owner::default();
        let me = std::process::id();
        assert!(!owner.is_any(&[me]), "not looked up yet");
        owner.learn(peer, local, &[1, me]).await;
        assert!(owner.is_any(&[me]));
        assert!(owner.is_any(&[7, me]));
        assert!(!owner.is_any(&[1]));
    }
}
