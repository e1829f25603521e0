//! Client sessions: the state that makes mutating requests exactly-once.
//!
//! A client that times out or is redirected cannot know whether its request was
//! committed, so it retries. Without sessions a retried deposit would be applied twice.
//! Every mutating request therefore carries a [`SessionRef`] `(client_id, seq)`, and
//! the state machine remembers, per client, the last applied `seq` and the response it
//! produced. For a request in a known session:
//!
//! * `seq == last_seq`: a retry. The recorded response is returned byte for byte and
//!   nothing is applied again.
//! * `seq < last_seq`: older than anything we can answer. [`Rejection::StaleSequence`];
//!   nothing is applied.
//! * `seq > last_seq`: new. It is applied (even if the outcome is a business rejection
//!   such as insufficient funds) and its response becomes the recorded one. Gaps are
//!   allowed: a client that gave up on a request may move on.
//!
//! Only the *last* response is kept. That is enough because a client keeps at most one
//! request outstanding per session: it only sends `seq + 1` after it has the answer to
//! `seq`, so it never needs an older answer again. A client that wants concurrency opens
//! several sessions.
//!
//! A request whose `client_id` is unknown starts a session if `seq == 1`; otherwise it
//! gets [`Rejection::SessionExpired`] and is not applied: the session it belonged to is
//! gone (expired or evicted), so we cannot tell whether that request was already
//! applied, and applying it could apply it twice. The client must start over with a
//! fresh client id. `seq == 0` is always [`Rejection::InvalidSequence`].
//!
//! Sessions are dropped deterministically, using only log indices, so every replica
//! drops the same sessions at the same point of the log:
//!
//! * **Expiry.** A session whose last activity (apply or retry) was more than
//!   `session_ttl_entries` log indices ago is dropped before the entry at the current
//!   index is applied.
//! * **Capacity.** When a new session would exceed `max_sessions`, the least recently
//!   active session (smallest last-activity index) is evicted.
//!
//! Both are cheap: sessions are also indexed by their last-activity index, and since
//! every applied entry touches at most one session, that index is unique per session.
//!
//! A client whose retry of `seq > 1` meets `SessionExpired` cannot tell whether an
//! earlier attempt was applied before the session was dropped; the client library
//! reports that as an unknown outcome (`ClientError::SessionLost`) rather than
//! resending under a new session.
//!
//! Known limit: if a session is dropped *between* the first application of its `seq ==
//! 1` request and a retry of that same request, the retry starts a new session and is
//! applied again. Expiry makes this need a retry delayed by `session_ttl_entries`
//! entries, and eviction `max_sessions` other clients active in between, so both
//! limits should be generous. Server-assigned client ids (a register command whose log
//! index becomes the client id) would close the gap entirely.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Rejection, SessionRef};

/// What the state machine remembers about one client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    /// The sequence number of the last applied request.
    pub(crate) last_seq: u64,
    /// The encoded response to that request, returned verbatim to retries.
    pub(crate) last_response: Bytes,
    /// The log index of the session's last activity (apply or retry).
    pub(crate) last_index: u64,
}

/// A read-only view of a session, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// The sequence number of the last applied request.
    pub last_seq: u64,
    /// The log index of the session's last activity.
    pub last_index: u64,
}

/// What to do with a sessioned request, decided before the operation runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// New request: apply it, then [`SessionTable::record`] the response.
    Apply,
    /// A retry of the last applied request: answer with these bytes.
    Duplicate(Bytes),
    /// Do not apply; answer with this rejection (it is not recorded).
    Reject(Rejection),
}

/// All live sessions, indexed both by client id and by last-activity log index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionTable {
    sessions: BTreeMap<u64, Session>,
    /// `last_index -> client_id`, ordered by activity: the first entry is the least
    /// recently active session. Derived from `sessions`; rebuilt on restore.
    by_activity: BTreeMap<u64, u64>,
}

impl SessionTable {
    /// Rebuilds the table from the persisted sessions, checking the invariants a
    /// snapshot must satisfy: sequence numbers are positive, and no two sessions share
    /// a last-activity index (each log entry touches at most one session) that lies
    /// beyond `applied_index`.
    pub(crate) fn from_sessions(
        sessions: BTreeMap<u64, Session>,
        applied_index: u64,
    ) -> Result<Self, String> {
        let mut by_activity = BTreeMap::new();
        for (&client_id, s) in &sessions {
            if s.last_seq == 0 {
                return Err(format!("session {client_id} has sequence number 0"));
            }
            if s.last_index > applied_index {
                return Err(format!(
                    "session {client_id} active at index {} beyond applied index {applied_index}",
                    s.last_index
                ));
            }
            if let Some(other) = by_activity.insert(s.last_index, client_id) {
                return Err(format!(
                    "sessions {other} and {client_id} share activity index {}",
                    s.last_index
                ));
            }
        }
        Ok(SessionTable {
            sessions,
            by_activity,
        })
    }

    /// The persisted part of the table.
    pub(crate) fn sessions(&self) -> &BTreeMap<u64, Session> {
        &self.sessions
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn info(&self, client_id: u64) -> Option<SessionInfo> {
        self.sessions.get(&client_id).map(|s| SessionInfo {
            last_seq: s.last_seq,
            last_index: s.last_index,
        })
    }

    /// Drops every session idle for more than `ttl` indices as of `index`.
    /// Returns how many were dropped.
    pub(crate) fn expire(&mut self, index: u64, ttl: u64) -> usize {
        let mut dropped = 0;
        while let Some(entry) = self.by_activity.first_entry() {
            if index.saturating_sub(*entry.key()) <= ttl {
                break;
            }
            let client_id = entry.remove();
            self.sessions.remove(&client_id);
            dropped += 1;
        }
        dropped
    }

    /// Decides what to do with a request of session `s`, received at log `index`.
    /// A retry counts as activity.
    pub(crate) fn admit(&mut self, s: SessionRef, index: u64) -> Admission {
        if s.seq == 0 {
            return Admission::Reject(Rejection::InvalidSequence);
        }
        let Some(session) = self.sessions.get_mut(&s.client_id) else {
            return if s.seq == 1 {
                Admission::Apply
            } else {
                Admission::Reject(Rejection::SessionExpired {
                    client_id: s.client_id,
                })
            };
        };
        if s.seq > session.last_seq {
            Admission::Apply
        } else if s.seq == session.last_seq {
            let response = session.last_response.clone();
            let previous = std::mem::replace(&mut session.last_index, index);
            self.by_activity.remove(&previous);
            self.by_activity.insert(index, s.client_id);
            Admission::Duplicate(response)
        } else {
            Admission::Reject(Rejection::StaleSequence {
                seq: s.seq,
                last_seq: session.last_seq,
            })
        }
    }

    /// Records the response to a request that [`admit`](Self::admit) let through,
    /// creating the session if needed and evicting the least recently active sessions
    /// beyond `max_sessions`. Returns how many were evicted.
    pub(crate) fn record(
        &mut self,
        s: SessionRef,
        response: Bytes,
        index: u64,
        max_sessions: usize,
    ) -> usize {
        let previous = self.sessions.insert(
            s.client_id,
            Session {
                last_seq: s.seq,
                last_response: response,
                last_index: index,
            },
        );
        if let Some(previous) = previous {
            self.by_activity.remove(&previous.last_index);
        }
        self.by_activity.insert(index, s.client_id);
        let mut evicted = 0;
        while self.sessions.len() > max_sessions {
            let Some((_, client_id)) = self.by_activity.pop_first() else {
                break;
            };
            self.sessions.remove(&client_id);
            evicted += 1;
        }
        evicted
    }
}
