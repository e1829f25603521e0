//! UDP relays for the Raft channel, which a test can cut and heal.
//!
//! Each directed link `i -> j` gets its own [`UdpRelay`]: node `i`'s config lists the
//! relay's address as node `j`'s `raft_addr`, and the relay forwards `i`'s datagrams to
//! `j`'s real Raft port and `j`'s answers back to `i`. Because the QUIC peer transport
//! dials one connection per direction (node `i` carries its messages to `j` on the
//! connection it dialed), relay `i -> j` carries exactly the Raft messages from `i` to
//! `j`, plus the QUIC packets that acknowledge them. Cutting it drops every datagram in
//! both directions, so `i`'s messages no longer reach `j`, while `j -> i` is untouched.
//!
//! The relay keeps one upstream socket per source address, so the destination sees a
//! stable address per sender and answers find their way back.
//!
//! Relays run on the tokio runtime that started them and stop when dropped.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use raft::core::NodeId;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Largest datagram relayed (QUIC datagrams are far smaller).
const MAX_DATAGRAM: usize = 64 * 1024;

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    returned: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    front: UdpSocket,
    target: SocketAddr,
    cut: AtomicBool,
    counters: Counters,
    cancel: CancellationToken,
}

/// One relay: datagrams sent to [`UdpRelay::addr`] go to the target, answers come back.
pub struct UdpRelay {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for UdpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRelay")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("cut", &self.is_cut())
            .finish()
    }
}

/// Counters of one relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams forwarded to the target.
    pub forwarded: u64,
    /// Datagrams relayed back from the target.
    pub returned: u64,
    /// Datagrams dropped because the relay was cut.
    pub dropped: u64,
    /// Send or receive errors (a target that is down answers with ICMP errors).
    pub errors: u64,
}

impl UdpRelay {
    /// Binds a relay on the loopback address of `target`'s family and starts it. Must
    /// run inside a tokio runtime.
    pub async fn start(target: SocketAddr) -> io::Result<UdpRelay> {
        let bind: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        };
        let front = UdpSocket::bind(bind).await?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            front,
            target,
            cut: AtomicBool::new(false),
            counters: Counters::default(),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(shared.clone().forward_loop(bind));
        Ok(UdpRelay { shared, addr })
    }

    /// Where senders send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where datagrams go.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Drops every datagram, both ways, from now on.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Relays again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the relay is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.shared.counters;
        RelayStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            returned: c.returned.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Shared {
    async fn forward_loop(self: Arc<Self>, bind: SocketAddr) {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.front.recv_from(&mut buf) => r,
            };
            let (n, src) = match received {
                Ok(r) => r,
                Err(_) => {
                    // ICMP errors surface here on some platforms; the socket is fine.
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if self.cut.load(Ordering::SeqCst) {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let upstream = match upstreams.get(&src) {
                Some(u) => u.clone(),
                None => match self.open_upstream(bind, src).await {
                    Ok(u) => {
                        upstreams.insert(src, u.clone());
                        u
                    }
                    Err(_) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
            };
            match upstream.send(&buf[..n]).await {
                Ok(_) => self.counters.forwarded.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.counters.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// A socket connected to the target that relays its answers back to `src`.
    async fn open_upstream(
        self: &Arc<Self>,
        bind: SocketAddr,
        src: SocketAddr,
    ) -> io::Result<Arc<UdpSocket>> {
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(self.target).await?;
        let socket = Arc::new(socket);
        tokio::spawn(self.clone().return_loop(socket.clone(), src));
        Ok(socket)
    }

    async fn return_loop(self: Arc<Self>, upstream: Arc<UdpSocket>, src: SocketAddr) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let received = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = upstream.recv(&mut buf) => r,
            };
            let n = match received {
                Ok(n) => n,
                Err(_) => {
                    // A connected UDP socket reports the target's ICMP "port
                    // unreachable" (target down) as an error on the next receive.
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if self.cut.load(Ordering::SeqCst) {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.front.send_to(&buf[..n], src).await {
                Ok(_) => self.counters.returned.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.counters.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// A relay for every directed link between `nodes`.
#[derive(Debug)]
pub struct RelayMesh {
    relays: BTreeMap<(NodeId, NodeId), UdpRelay>,
}

impl RelayMesh {
    /// Relays for every ordered pair of distinct nodes; `raft_addrs` are the nodes'
    /// real Raft addresses. Must run inside a tokio runtime.
    pub async fn start(raft_addrs: &BTreeMap<NodeId, SocketAddr>) -> io::Result<RelayMesh> {
        let mut relays = BTreeMap::new();
        for &from in raft_addrs.keys() {
            for (&to, &target) in raft_addrs {
                if from != to {
                    relays.insert((from, to), UdpRelay::start(target).await?);
                }
            }
        }
        Ok(RelayMesh { relays })
    }

    /// The relay carrying `from`'s messages to `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> &UdpRelay {
        match self.relays.get(&(from, to)) {
            Some(r) => r,
            None => panic!("no relay for the link {from} -> {to}"),
        }
    }

    /// The address node `from` must dial to reach node `to`.
    pub fn addr(&self, from: NodeId, to: NodeId) -> SocketAddr {
        self.link(from, to).addr()
    }

    /// Every relay, by `(from, to)`.
    pub fn links(&self) -> impl Iterator<Item = (&(NodeId, NodeId), &UdpRelay)> {
        self.relays.iter()
    }

    /// Cuts every link to and from `node`: it can neither send nor receive Raft
    /// messages. Its client channel is not touched.
    pub fn isolate(&self, node: NodeId) {
        for ((from, to), r) in &self.relays {
            if *from == node || *to == node {
                r.cut();
            }
        }
    }

    /// Cuts every link into `node`: its messages still reach the others, but nothing
    /// the others send reaches it.
    pub fn cut_inbound(&self, node: NodeId) {
        for ((_, to), r) in &self.relays {
            if *to == node {
                r.cut();
            }
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for r in self.relays.values() {
            r.heal();
        }
    }

    /// Datagrams forwarded on every link, summed.
    pub fn total_forwarded(&self) -> u64 {
        self.relays.values().map(|r| r.stats().forwarded).sum()
    }
}
