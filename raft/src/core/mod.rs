//! The pure Raft state machine: no IO, no clock, no global randomness.

mod message;
mod types;

pub use message::{AppendEntries, AppendResponse, Message, MessageBody};
pub use types::{
    Entry, EntryPayload, HardState, Index, Membership, NodeAddr, NodeId, SnapshotMeta, Term,
};
