//! Carrying Raft messages between peers.
//!
//! The driver hands outgoing messages to a [`Transport`]; incoming messages arrive on
//! the channel given to the transport when it was built.
//!
//! * [`quic`]: the production transport, QUIC with mutual TLS ([`tls`]) and the
//!   framing of [`frame`].
//! * [`memory`]: an in-memory network for tests.
//! * [`fault`]: fault injection (cut sending, receiving, links) around any transport.
//! * [`snapshot`]: snapshot transfers, streamed beside the message stream.
//! * `certs` (feature `certgen`): generation of a cluster CA and node certificates.

use tokio::sync::mpsc;

use crate::core::{Message, NodeAddr, NodeId};

#[cfg(feature = "certgen")]
pub mod certs;
pub mod fault;
pub mod frame;
pub mod memory;
pub mod quic;
pub mod snapshot;
pub mod tls;

pub use fault::{Faults, FaultyTransport};
pub use frame::{FrameError, DEFAULT_MAX_FRAME_LEN};
pub use memory::{MemNetwork, MemTransport};
pub use quic::{
    restart_stable_endpoint_config, InboundStats, PeerStatus, QuicConfig, QuicTransport, TransportError,
};
pub use snapshot::{IncomingSnapshot, OutgoingSnapshot, SnapshotSend, SnapshotSendError};
pub use tls::{node_id_from_cert, node_server_name, TlsError, TlsMaterial};

/// Outgoing half of a peer transport.
pub trait Transport: Send + Sync + 'static {
    /// Queue messages for one peer. Never blocks and never grows memory without
    /// bound: when the peer's queue is full the messages are dropped (Raft
    /// retransmits), so a slow or dead peer cannot stall the others.
    fn send(&self, to: NodeId, msgs: Vec<Message>);

    /// Learn where peer `id` is reached (its Raft address, `addr.raft`), or that it
    /// moved. The sidecar calls this when a configuration naming the peer takes effect,
    /// so a node added to a running cluster becomes reachable (and may connect) without
    /// a restart. A peer removed earlier is allowed back. The default ignores it, for
    /// transports whose peers are fixed.
    fn set_peer(&self, id: NodeId, addr: &NodeAddr) {
        let _ = (id, addr);
    }

    /// Forget peer `id`: drop its queued messages, close its connections and refuse it
    /// from now on (until [`Transport::set_peer`] names it again). The sidecar calls
    /// this once a configuration without the peer is committed. The default ignores it.
    fn remove_peer(&self, id: NodeId) {
        let _ = id;
    }

    /// Streams a snapshot file to `to` on its own stream, beside the message stream.
    /// The returned future resolves when the receiver answered (see
    /// [`IncomingSnapshot::reply`]) or the transfer failed. The default refuses.
    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) -> SnapshotSend {
        let _ = (to, snapshot);
        snapshot::failed(SnapshotSendError::Unsupported)
    }

    /// The channel on which snapshots sent to this node arrive. The first call takes
    /// it (the sidecar does, at start); later calls, and transports without snapshot
    /// support, return `None`.
    fn take_snapshot_inbox(&self) -> Option<mpsc::Receiver<IncomingSnapshot>> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        (**self).send(to, msgs)
    }

    fn set_peer(&self, id: NodeId, addr: &NodeAddr) {
        (**self).set_peer(id, addr)
    }

    fn remove_peer(&self, id: NodeId) {
        (**self).remove_peer(id)
    }

    fn send_snapshot(&self, to: NodeId, snapshot: OutgoingSnapshot) -> SnapshotSend {
        (**self).send_snapshot(to, snapshot)
    }

    fn take_snapshot_inbox(&self) -> Option<mpsc::Receiver<IncomingSnapshot>> {
        (**self).take_snapshot_inbox()
    }
}
