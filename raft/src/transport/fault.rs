//! Fault injection for transports: cut a node's sending, its receiving, one link or
//! one direction of a link, and heal.
//!
//! A [`Faults`] controller is shared (`Arc`) between every node of a test cluster.
//! Outgoing traffic is filtered by wrapping each node's transport in a
//! [`FaultyTransport`]; incoming traffic can additionally be filtered on the receiving
//! side with [`Faults::filter_inbound`] (or [`Faults::allows`] applied by hand), which
//! matters when the senders are not wrapped (for example remote processes).
//!
//! The rules are directional: a message from `from` to `to` passes only if `from` may
//! send ([`Faults::block_send`]), `to` may receive ([`Faults::block_recv`]) and the
//! direction `from -> to` is not cut ([`Faults::block_direction`],
//! [`Faults::block_link`]).
//!
//! Snapshot transfers obey the same rules: one that starts over a cut link fails at
//! once, and one in flight fails as soon as its link is cut.
//! [`Faults::cut_link_during_snapshot`] cuts a link at a chosen point of the next
//! transfer, to test interrupted transfers deterministically.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::snapshot::{failed, OutgoingSnapshot, SnapshotSend, SnapshotSendError};
use super::Transport;
use crate::core::{Message, NodeAddr, NodeId};

/// How often an in-flight snapshot transfer checks whether its link was cut.
const SNAPSHOT_LINK_CHECK: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct FaultState {
    no_send: HashSet<NodeId>,
    no_recv: HashSet<NodeId>,
    cut: HashSet<(NodeId, NodeId)>,
    /// Links to cut once the next snapshot from `.0` to `.1` has passed this many bytes.
    snapshot_cuts: HashMap<(NodeId, NodeId), u64>,
}

/// A shared controller of injected network faults. All methods take `&self`.
#[derive(Debug, Default)]
pub struct Faults {
    state: RwLock<FaultState>,
    dropped_outgoing: AtomicU64,
    dropped_incoming: AtomicU64,
}

impl Faults {
    /// A controller with no faults, ready to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn update(&self, f: impl FnOnce(&mut FaultState)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
    }

    /// `node` can no longer send anything ("node cannot send").
    pub fn block_send(&self, node: NodeId) {
        self.update(|s| {
            s.no_send.insert(node);
        });
    }

    /// `node` can no longer receive anything ("node cannot receive").
    pub fn block_recv(&self, node: NodeId) {
        self.update(|s| {
            s.no_recv.insert(node);
        });
    }

    /// `node` can neither send nor receive ("drop all" of that node).
    pub fn isolate(&self, node: NodeId) {
        self.update(|s| {
            s.no_send.insert(node);
            s.no_recv.insert(node);
        });
    }

    /// Messages from `from` to `to` are dropped; the other direction is unaffected.
    pub fn block_direction(&self, from: NodeId, to: NodeId) {
        self.update(|s| {
            s.cut.insert((from, to));
        });
    }

    /// Messages between `a` and `b` are dropped in both directions.
    pub fn block_link(&self, a: NodeId, b: NodeId) {
        self.update(|s| {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        });
    }

    /// Lifts [`Faults::block_send`], [`Faults::block_recv`] and [`Faults::isolate`] of
    /// `node` (cut links stay cut).
    pub fn heal_node(&self, node: NodeId) {
        self.update(|s| {
            s.no_send.remove(&node);
            s.no_recv.remove(&node);
        });
    }

    /// Restores the direction `from -> to`.
    pub fn heal_direction(&self, from: NodeId, to: NodeId) {
        self.update(|s| {
            s.cut.remove(&(from, to));
        });
    }

    /// Restores both directions between `a` and `b`.
    pub fn heal_link(&self, a: NodeId, b: NodeId) {
        self.update(|s| {
            s.cut.remove(&(a, b));
            s.cut.remove(&(b, a));
        });
    }

    /// The next snapshot transfer from `from` to `to` (through a [`FaultyTransport`])
    /// cuts the link between them, both directions, once `after_bytes` bytes of it
    /// were handed to the transport: the transfer fails mid-way, as if the network
    /// dropped. Heal the link to let a retry through.
    pub fn cut_link_during_snapshot(&self, from: NodeId, to: NodeId, after_bytes: u64) {
        self.update(|s| {
            s.snapshot_cuts.insert((from, to), after_bytes);
        });
    }

    fn take_snapshot_cut(&self, from: NodeId, to: NodeId) -> Option<u64> {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.snapshot_cuts.remove(&(from, to))
    }

    /// Removes every fault.
    pub fn heal_all(&self) {
        self.update(|s| *s = FaultState::default());
    }

    /// Whether a message from `from` to `to` currently gets through.
    pub fn allows(&self, from: NodeId, to: NodeId) -> bool {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        !s.no_send.contains(&from) && !s.no_recv.contains(&to) && !s.cut.contains(&(from, to))
    }

    /// Messages dropped by [`FaultyTransport`]s sharing this controller.
    pub fn dropped_outgoing(&self) -> u64 {
        self.dropped_outgoing.load(Ordering::Relaxed)
    }

    /// Messages dropped by inbound filters of this controller.
    pub fn dropped_incoming(&self) -> u64 {
        self.dropped_incoming.load(Ordering::Relaxed)
    }

    /// The receiving side's filter: whether `msg` may be delivered, counting it as
    /// dropped if not.
    pub fn accept_inbound(&self, msg: &Message) -> bool {
        let ok = self.allows(msg.from, msg.to);
        if !ok {
            self.dropped_incoming.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Interposes a filter in front of a node's inbound channel: returns a sender to
    /// hand to the transport in place of `downstream`. A forwarding task (spawned on
    /// the current tokio runtime, so call this inside one) delivers the messages that
    /// [`Faults::accept_inbound`] allows, in order, and stops when either side closes.
    pub fn filter_inbound(
        self: &Arc<Self>,
        downstream: mpsc::Sender<Message>,
        capacity: usize,
    ) -> mpsc::Sender<Message> {
        let (tx, mut rx) = mpsc::channel::<Message>(capacity.max(1));
        let faults = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        if faults.accept_inbound(&msg) && downstream.send(msg).await.is_err() {
                            break;
                        }
                    }
                    _ = downstream.closed() => break,
                }
            }
        });
        tx
    }
}

/// A transport wrapper that drops the outgoing messages its [`Faults`] forbid.
#[derive(Debug)]
pub struct FaultyTransport<T> {
    node: NodeId,
    inner: T,
    faults: Arc<Faults>,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps node `node`'s transport `inner`.
    pub fn new(node: NodeId, inner: T, faults: Arc<Faults>) -> Self {
        FaultyTransport { node, inner, faults }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The shared fault controller.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        if self.faults.allows(self.node, to) {
            self.inner.send(to, msgs);
        } else {
            self.faults
                .dropped_outgoing
                .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        }
    }

    fn set_peer(&self, id: NodeId, addr: &NodeAddr) {
        self.inner.set_peer(id, addr)
    }

    fn remove_peer(&self, id: NodeId) {
        self.inner.remove_peer(id)
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) -> SnapshotSend {
        let (from, faults) = (self.node, self.faults.clone());
        if !faults.allows(from, to) {
            faults.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            return failed(SnapshotSendError::LinkDown);
        }
        let OutgoingSnapshot { term, len, chunks } = snapshot;
        let cut = faults.take_snapshot_cut(from, to);
        let (chunks, forward) = match cut {
            None => (chunks, None),
            Some(after) => {
                let (tx, rx) = mpsc::channel(1);
                (rx, Some((chunks, tx, after)))
            }
        };
        let inner = self
            .inner
            .send_snapshot(to, OutgoingSnapshot { term, len, chunks });
        Box::pin(async move {
            if let Some((source, tx, after)) = forward {
                tokio::spawn(cut_after(source, tx, after, faults.clone(), from, to));
            }
            let mut inner = inner;
            let mut check = tokio::time::interval(SNAPSHOT_LINK_CHECK);
            loop {
                tokio::select! {
                    r = &mut inner => return r,
                    _ = check.tick() => {
                        if !faults.allows(from, to) {
                            return Err(SnapshotSendError::LinkDown);
                        }
                    }
                }
            }
        })
    }

    fn take_snapshot_inbox(&self) -> Option<mpsc::Receiver<super::IncomingSnapshot>> {
        self.inner.take_snapshot_inbox()
    }
}

/// Forwards a transfer's chunks until `after` bytes passed, then cuts the link and
/// stops, leaving the transfer short.
async fn cut_after(
    mut source: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    after: u64,
    faults: Arc<Faults>,
    from: NodeId,
    to: NodeId,
) {
    let mut passed = 0u64;
    while let Some(chunk) = source.recv().await {
        let room = usize::try_from(after - passed).unwrap_or(usize::MAX);
        if chunk.len() >= room {
            let head = chunk.slice(..room);
            if !head.is_empty() {
                let _ = tx.send(head).await;
            }
            break;
        }
        passed += chunk.len() as u64;
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
    tracing::info!(
        from,
        to,
        after,
        "fault injection: cutting the link during a snapshot transfer"
    );
    faults.block_link(from, to);
}
