//! The pure Raft state machine: no IO, no clock, no global randomness.
//!
//! [`RaftNode`] takes inputs (`tick`, `step`, `propose`, `read_index`,
//! `transfer_leader`, `propose_membership`, `report_snapshot`, `compact`) and produces a
//! [`Ready`] batch of work; see `docs/architecture.md` for the contract the driver must
//! follow, snapshots included.

mod config;
mod log;
mod message;
mod progress;
mod raft;
mod read_index;
mod types;

#[allow(unused_imports)]
pub(crate) use config::Rng;
pub use config::{Config, ConfigError};
pub use message::{AppendEntries, AppendResponse, Message, MessageBody};
pub use progress::ProgressState;
pub use raft::{
    PeerStatus, ProposeError, RaftNode, ReadError, ReadState, Ready, Restore, Role, SoftState, Status,
    TransferError,
};
pub use types::{Entry, EntryPayload, HardState, Index, Membership, NodeAddr, NodeId, SnapshotMeta, Term};
