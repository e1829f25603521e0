//! Snapshot transfers: a snapshot file streamed to one peer, beside (never inside) the
//! ordered message stream, so that a large transfer does not delay heartbeats.
//!
//! The transport moves opaque bytes: the sidecar reads the file in chunks on the
//! sending side and verifies and writes it on the receiving side. The sending future
//! resolves once the receiver answered: `Ok` when its sidecar accepted the snapshot.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::core::{NodeId, Term};

/// Chunks in flight per transfer between the file reader, the transport and the
/// receiver's writer: memory per transfer is bounded by this many chunks on each side.
pub const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 4;

/// A snapshot file to stream to a peer.
#[derive(Debug)]
pub struct OutgoingSnapshot {
    /// The sender's term; the receiver treats the snapshot as leader traffic of this
    /// term.
    pub term: Term,
    /// The file's length in bytes.
    pub len: u64,
    /// The file's bytes, in order. The transfer fails if the channel closes before
    /// `len` bytes were taken.
    pub chunks: mpsc::Receiver<Bytes>,
}

/// A snapshot file arriving from a peer, handed to the sidecar.
#[derive(Debug)]
pub struct IncomingSnapshot {
    /// The sending peer (authenticated by the transport).
    pub from: NodeId,
    /// The sender's term.
    pub term: Term,
    /// The announced length of the file.
    pub len: u64,
    /// The file's bytes, in order. Closes after `len` bytes, or early when the transfer
    /// broke (then the snapshot must be discarded).
    pub chunks: mpsc::Receiver<Bytes>,
    /// The receiver's verdict, sent back to the sender: `Ok` once the snapshot was
    /// verified and accepted, `Err(reason)` otherwise.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Why a snapshot transfer failed. Every failure is worth retrying later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotSendError {
    /// This transport cannot carry snapshots.
    #[error("this transport does not carry snapshots")]
    Unsupported,
    /// The peer is unknown or cannot be reached.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The link to the peer is down (or was cut during the transfer).
    #[error("link to the peer is down")]
    LinkDown,
    /// The peer is already receiving as many snapshots as it accepts.
    #[error("the peer is busy receiving other snapshots")]
    Busy,
    /// The local file ended or failed before its announced length.
    #[error("the snapshot source ended early")]
    Source,
    /// The peer refused the snapshot, or gave up on it.
    #[error("the peer refused the snapshot: {0}")]
    Rejected(String),
    /// The connection or stream failed.
    #[error("transfer failed: {0}")]
    Failed(String),
}

/// The future of a transfer: resolves when the receiver answered or the transfer
/// failed. Dropping it abandons the transfer.
pub type SnapshotSend = Pin<Box<dyn Future<Output = Result<(), SnapshotSendError>> + Send + 'static>>;

/// A future that fails at once.
pub(crate) fn failed(e: SnapshotSendError) -> SnapshotSend {
    Box::pin(std::future::ready(Err(e)))
}
