//! Carrying Raft messages between peers.
//!
//! The driver hands outgoing messages to a [`Transport`]; incoming messages arrive on
//! the channel given to the transport when it was built.

use crate::core::{Message, NodeId};

/// Outgoing half of a peer transport.
pub trait Transport: Send + Sync + 'static {
    /// Queue messages for one peer. Never blocks and never grows memory without
    /// bound: when the peer's queue is full the messages are dropped (Raft
    /// retransmits), so a slow or dead peer cannot stall the others.
    fn send(&self, to: NodeId, msgs: Vec<Message>);
}
