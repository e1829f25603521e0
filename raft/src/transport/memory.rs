//! An in-memory transport for tests: a [`MemNetwork`] hub connects per-node
//! [`MemTransport`] handles, each delivering straight into the recipient's inbound
//! channel.
//!
//! Semantics match the QUIC transport where it matters: `send` never blocks, messages
//! from one sender to one recipient arrive in order, and when the recipient's inbound
//! channel (bounded, chosen by the recipient) is full the messages are dropped and
//! counted. The hub carries a [`Faults`] controller to cut and heal links.
//!
//! Like the QUIC transport, a node that removed a peer ([`Transport::remove_peer`])
//! neither sends to it nor accepts its messages until it names the peer again
//! ([`Transport::set_peer`]). Addresses are not needed: every attached node is
//! reachable by id.
//!
//! Snapshots travel as a separate transfer per call (like the QUIC transport's own
//! stream): chunks go through a small bounded channel to the recipient's snapshot
//! inbox, and a link cut by the [`Faults`] while chunks are flowing fails the
//! transfer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::fault::Faults;
use super::snapshot::{
    failed, IncomingSnapshot, OutgoingSnapshot, SnapshotSend, SnapshotSendError, SNAPSHOT_CHUNKS_IN_FLIGHT,
};
use super::Transport;
use crate::core::{Message, NodeAddr, NodeId};

/// Snapshot transfers a node accepts at once before refusing more as busy.
const SNAPSHOT_INBOX: usize = 2;

/// Per-destination counters of a [`MemTransport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages handed to the recipient's inbound channel.
    pub sent: u64,
    /// Messages dropped: recipient unknown, its channel full or closed, or a fault.
    pub dropped: u64,
}

#[derive(Debug)]
struct Hub {
    nodes: RwLock<HashMap<NodeId, mpsc::Sender<Message>>>,
    /// `removed[a]` holds the peers node `a` removed: no traffic either way.
    removed: RwLock<HashMap<NodeId, HashSet<NodeId>>>,
    snapshots: RwLock<HashMap<NodeId, mpsc::Sender<IncomingSnapshot>>>,
    faults: Arc<Faults>,
}

impl Hub {
    fn removed_either_way(&self, a: NodeId, b: NodeId) -> bool {
        let removed = self.removed.read().unwrap_or_else(|e| e.into_inner());
        removed.get(&a).is_some_and(|s| s.contains(&b)) || removed.get(&b).is_some_and(|s| s.contains(&a))
    }
}

/// The in-memory network connecting [`MemTransport`]s. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemNetwork {
    hub: Arc<Hub>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl MemNetwork {
    /// A network without faults.
    pub fn new() -> Self {
        Self::with_faults(Faults::new())
    }

    /// A network whose links obey `faults` (which may be shared with other wrappers).
    pub fn with_faults(faults: Arc<Faults>) -> Self {
        MemNetwork {
            hub: Arc::new(Hub {
                nodes: RwLock::new(HashMap::new()),
                removed: RwLock::new(HashMap::new()),
                snapshots: RwLock::new(HashMap::new()),
                faults,
            }),
        }
    }

    /// The fault controller: cut a node's sending or receiving, a link or one
    /// direction, and heal.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.hub.faults
    }

    /// Attaches node `id`, whose incoming messages go to `inbound`, and returns its
    /// transport. Attaching an id again replaces its inbound channel and forgets the
    /// peers it had removed (a restart).
    pub fn join(&self, id: NodeId, inbound: mpsc::Sender<Message>) -> MemTransport {
        self.hub
            .removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.hub
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, inbound);
        let (snap_tx, snap_rx) = mpsc::channel(SNAPSHOT_INBOX);
        self.hub
            .snapshots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, snap_tx);
        MemTransport {
            id,
            hub: self.hub.clone(),
            stats: Mutex::new(BTreeMap::new()),
            snapshot_inbox: Mutex::new(Some(snap_rx)),
        }
    }

    /// Detaches node `id`: messages to it are dropped until it joins again.
    pub fn leave(&self, id: NodeId) {
        self.hub
            .nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.hub
            .snapshots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// One node's handle on a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    id: NodeId,
    hub: Arc<Hub>,
    stats: Mutex<BTreeMap<NodeId, LinkStats>>,
    snapshot_inbox: Mutex<Option<mpsc::Receiver<IncomingSnapshot>>>,
}

impl MemTransport {
    /// The node this handle sends as.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Counters of messages sent to `to`.
    pub fn link_stats(&self, to: NodeId) -> LinkStats {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .copied()
            .unwrap_or_default()
    }

    /// Counters for every destination this node has sent to.
    pub fn stats(&self) -> BTreeMap<NodeId, LinkStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        let total = msgs.len() as u64;
        let mut sent = 0u64;
        if self.hub.faults.allows(self.id, to) && !self.hub.removed_either_way(self.id, to) {
            let inbound = self
                .hub
                .nodes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&to)
                .cloned();
            if let Some(inbound) = inbound {
                for msg in msgs {
                    if inbound.try_send(msg).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let link = stats.entry(to).or_default();
        link.sent += sent;
        link.dropped += total - sent;
    }

    fn set_peer(&self, id: NodeId, _addr: &NodeAddr) {
        let mut removed = self.hub.removed.write().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = removed.get_mut(&self.id) {
            set.remove(&id);
        }
    }

    fn remove_peer(&self, id: NodeId) {
        if id != self.id {
            self.hub
                .removed
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(self.id)
                .or_default()
                .insert(id);
        }
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) -> SnapshotSend {
        let from = self.id;
        let hub = self.hub.clone();
        if !hub.faults.allows(from, to) {
            return failed(SnapshotSendError::LinkDown);
        }
        let inbox = hub
            .snapshots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&to)
            .cloned();
        let Some(inbox) = inbox else {
            return failed(SnapshotSendError::Unreachable(format!(
                "node {to} is not on the network"
            )));
        };
        Box::pin(async move {
            let OutgoingSnapshot {
                term,
                len,
                mut chunks,
            } = snapshot;
            let (chunk_tx, chunk_rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
            let (reply_tx, reply_rx) = oneshot::channel();
            inbox
                .try_send(IncomingSnapshot {
                    from,
                    term,
                    len,
                    chunks: chunk_rx,
                    reply: reply_tx,
                })
                .map_err(|_| SnapshotSendError::Busy)?;
            let mut sent = 0u64;
            while sent < len {
                let chunk = chunks.recv().await.ok_or(SnapshotSendError::Source)?;
                if !hub.faults.allows(from, to) {
                    return Err(SnapshotSendError::LinkDown);
                }
                sent += chunk.len() as u64;
                if chunk_tx.send(chunk).await.is_err() {
                    break;
                }
            }
            drop(chunk_tx);
            match reply_rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(SnapshotSendError::Rejected(reason)),
                Err(_) => Err(SnapshotSendError::Rejected("the receiver went away".into())),
            }
        })
    }

    fn take_snapshot_inbox(&self) -> Option<mpsc::Receiver<IncomingSnapshot>> {
        self.snapshot_inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
