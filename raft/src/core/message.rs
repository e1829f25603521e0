//! Messages exchanged between Raft peers. The transport serializes these as postcard
//! frames; the core produces and consumes them.

use serde::{Deserialize, Serialize};

use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// One message from `from` to `to`, stamped with the sender's term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's current term (for pre-votes: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// "Would you vote for me?" sent before a real campaign so that a node that cannot
    /// win does not bump everyone's term (thesis 9.6). Carries the candidate's log
    /// position; `Message::term` is the term it would campaign in.
    PreVote {
        /// Index of the candidate's last entry.
        last_index: Index,
        /// Term of the candidate's last entry.
        last_term: Term,
    },
    /// Answer to a `PreVote`.
    PreVoteResponse {
        /// Whether the pre-vote was granted.
        granted: bool,
    },
    /// RequestVote (paper figure 2).
    Vote {
        /// Index of the candidate's last entry.
        last_index: Index,
        /// Term of the candidate's last entry.
        last_term: Term,
        /// Set when the campaign was ordered by the leader (leadership transfer), so
        /// that voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to a `Vote`.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (paper figure 2).
    Append(AppendEntries),
    /// Answer to an `Append`.
    AppendResponse(AppendResponse),
    /// Leader liveness, commit propagation, and ReadIndex confirmation rounds.
    Heartbeat {
        /// The leader's commit index, capped at what the follower is known to hold.
        commit: Index,
        /// The leader's latest read-confirmation round (0: none).
        round: u64,
    },
    /// Answer to a `Heartbeat`, echoing its round.
    HeartbeatResponse {
        /// The round being confirmed.
        round: u64,
    },
    /// A follower forwards a linearizable read request to its leader.
    ReadIndex {
        /// The follower's identifier for the request.
        ctx: u64,
    },
    /// The leader's answer to a forwarded `ReadIndex`.
    ReadIndexResponse {
        /// The follower's identifier for the request.
        ctx: u64,
        /// The index the follower must apply before serving the read; `None` if the
        /// leader could not serve it (it is stepping down or transferring).
        index: Option<Index>,
    },
    /// "Campaign now": the last step of a leadership transfer.
    TimeoutNow,
    /// The leader tells a follower that it must install a snapshot. The snapshot data
    /// itself travels out of band on the transport's snapshot stream.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
}

/// AppendEntries request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// Index of the entry immediately preceding `entries`.
    pub prev_index: Index,
    /// Term of the entry at `prev_index`.
    pub prev_term: Term,
    /// Entries to append (may be empty for a probe).
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: Index,
}

/// AppendEntries response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// On success, the index of the last entry the follower now holds that matches the
    /// leader. On rejection, the `prev_index` that failed the consistency check.
    pub index: Index,
    /// Whether the consistency check failed.
    pub reject: bool,
    /// On rejection: the follower's best guess of where the logs may agree, as
    /// (index, term) with index <= `index`, so the leader can skip a whole
    /// conflicting term in one round trip instead of one entry at a time.
    pub hint_index: Index,
    /// The term of the follower's entry at `hint_index`.
    pub hint_term: Term,
}

impl Message {
    /// A short name for the message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.body {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append(_) => "append",
            MessageBody::AppendResponse(_) => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
        }
    }
}
