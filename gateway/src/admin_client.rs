//! The client side of the membership endpoints (`gateway admin ...`): find the
//! leader's admin address and send the request there.
//!
//! Nodes know each other's Raft and client addresses (they travel in the
//! configuration) but not their admin addresses, so a follower does not forward a
//! change: it answers `421 not_leader` with the leader's id. [`AdminTargets`] maps
//! that id to an admin address, from a cluster directory's `cluster.toml` or by asking
//! each admin address it was given for its `/status`, and retries there. Transient
//! answers (no leader yet, a node not answering) are retried until the deadline; the
//! changes are idempotent (adding a learner that is one, removing a non-member,
//! promoting a voter: nothing to do), so a retry after a lost answer is safe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use raft::core::NodeId;

use crate::init::{ClusterSummary, InitError};
use crate::status::{fetch_members, fetch_status, post_json, LeaderReport, MembersReport};

/// Pause between rounds while no leader answers.
const RETRY: Duration = Duration::from_millis(200);

/// Errors of `gateway admin`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The cluster directory could not be read.
    #[error(transparent)]
    Cluster(#[from] InitError),
    /// Nothing to talk to.
    #[error("no admin address: give --admin HOST:PORT (repeatable) or --cluster DIR")]
    NoTarget,
    /// The leader refused the request.
    #[error("refused ({status} {kind}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Machine-readable kind (`invalid_change`, `learner_behind`, ...).
        kind: String,
        /// The node's explanation.
        message: String,
    },
    /// The leader is known but not its admin address.
    #[error(
        "node {id} leads (raft {raft}, client {client}) but its admin address is unknown: pass it with \
         --admin, or use --cluster DIR"
    )]
    LeaderAdminUnknown {
        /// The leader.
        id: NodeId,
        /// Its Raft address.
        raft: String,
        /// Its client address.
        client: String,
    },
    /// No node gave a usable answer before the deadline.
    #[error("no answer from a leader within {after:?}; last: {last}")]
    Timeout {
        /// The deadline.
        after: Duration,
        /// The last thing seen.
        last: String,
    },
    /// An answer that is not what the endpoint returns.
    #[error("http://{addr}{path}: unexpected answer ({status}): {body}")]
    Unexpected {
        /// The admin address.
        addr: SocketAddr,
        /// The path.
        path: &'static str,
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
}

/// The admin addresses a command may use. See the module docs.
#[derive(Debug, Clone)]
pub struct AdminTargets {
    addrs: Vec<SocketAddr>,
    by_id: BTreeMap<NodeId, SocketAddr>,
    summary: Option<ClusterSummary>,
    timeout: Duration,
    discovered: bool,
}

impl AdminTargets {
    /// The addresses in `admin` (tried first, in order) and, with `cluster_dir`, every
    /// node listed in its `cluster.toml`. `timeout` bounds a whole command.
    pub fn new(
        admin: &[SocketAddr],
        cluster_dir: Option<&Path>,
        timeout: Duration,
    ) -> Result<AdminTargets, AdminError> {
        let mut addrs: Vec<SocketAddr> = admin.to_vec();
        let mut by_id = BTreeMap::new();
        let summary = match cluster_dir {
            Some(dir) => Some(ClusterSummary::load(dir)?),
            None => None,
        };
        if let Some(s) = &summary {
            for n in &s.nodes {
                by_id.insert(n.id, n.admin_addr);
                if !addrs.contains(&n.admin_addr) {
                    addrs.push(n.admin_addr);
                }
            }
        }
        if addrs.is_empty() {
            return Err(AdminError::NoTarget);
        }
        Ok(AdminTargets {
            addrs,
            by_id,
            summary,
            timeout,
            discovered: false,
        })
    }

    /// The cluster summary, when a cluster directory was given.
    pub fn summary(&self) -> Option<&ClusterSummary> {
        self.summary.as_ref()
    }

    /// The admin address of node `id`, asking the known addresses for their ids once
    /// if the cluster directory does not say.
    fn admin_of(&mut self, id: NodeId) -> Option<SocketAddr> {
        if let Some(a) = self.by_id.get(&id) {
            return Some(*a);
        }
        if !self.discovered {
            self.discovered = true;
            let per_request = self.timeout.min(Duration::from_secs(2));
            for &addr in &self.addrs {
                if let Ok(s) = fetch_status(addr, per_request) {
                    self.by_id.entry(s.node_id).or_insert(addr);
                }
            }
        }
        self.by_id.get(&id).copied()
    }

    /// Sends `body` to `path` on the leader and returns its JSON answer.
    pub fn post_to_leader(
        &mut self,
        path: &'static str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, AdminError> {
        let started = Instant::now();
        let mut last = String::from("nothing tried");
        loop {
            let mut queue: Vec<SocketAddr> = self.addrs.clone();
            queue.reverse();
            let mut tried: Vec<SocketAddr> = Vec::new();
            while let Some(addr) = queue.pop() {
                if tried.contains(&addr) {
                    continue;
                }
                tried.push(addr);
                let left = self.timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                let (status, text) = match post_json(addr, path, body, left) {
                    Ok(answer) => answer,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                let answer: serde_json::Value =
                    serde_json::from_str(&text).map_err(|_| AdminError::Unexpected {
                        addr,
                        path,
                        status,
                        body: text.clone(),
                    })?;
                if (200..300).contains(&status) {
                    return Ok(answer);
                }
                let kind = answer["error"].as_str().unwrap_or("unknown").to_owned();
                let message = answer["message"].as_str().unwrap_or(&text).to_owned();
                match kind.as_str() {
                    "not_leader" => {
                        let leader: Option<LeaderReport> =
                            serde_json::from_value(answer["leader"].clone()).ok();
                        let Some(leader) = leader else {
                            last = format!("{addr}: {message}");
                            continue;
                        };
                        match self.admin_of(leader.id) {
                            Some(a) if !tried.contains(&a) => queue.push(a),
                            Some(_) => last = format!("{addr}: {message}"),
                            None => {
                                return Err(AdminError::LeaderAdminUnknown {
                                    id: leader.id,
                                    raft: leader.raft_addr.unwrap_or_else(|| "?".into()),
                                    client: leader.client_addr.unwrap_or_else(|| "?".into()),
                                })
                            }
                        }
                    }
                    // An election is under way, or this node is gone: ask the others.
                    "no_leader" | "stopped" | "removed" => last = format!("{addr}: {message}"),
                    _ => {
                        return Err(AdminError::Refused {
                            status,
                            kind,
                            message,
                        })
                    }
                }
            }
            if started.elapsed() + RETRY >= self.timeout {
                return Err(AdminError::Timeout {
                    after: self.timeout,
                    last,
                });
            }
            std::thread::sleep(RETRY);
        }
    }

    /// The membership, from the leader when it can be reached (only it knows the
    /// members' progress), else from the first node that answers.
    pub fn members(&mut self) -> Result<MembersReport, AdminError> {
        let started = Instant::now();
        let mut last = String::from("nothing tried");
        loop {
            let mut fallback = None;
            for addr in self.addrs.clone() {
                let left = self.timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                match fetch_members(addr, left) {
                    Ok(r) if r.is_leader => return Ok(r),
                    Ok(r) => {
                        if let Some(l) = r.leader.as_ref().map(|l| l.id) {
                            if let Some(a) = self.admin_of(l).filter(|&a| a != addr) {
                                if let Ok(lr) = fetch_members(a, left) {
                                    if lr.is_leader {
                                        return Ok(lr);
                                    }
                                }
                            }
                        }
                        fallback.get_or_insert(r);
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if let Some(r) = fallback {
                return Ok(r);
            }
            if started.elapsed() + RETRY >= self.timeout {
                return Err(AdminError::Timeout {
                    after: self.timeout,
                    last,
                });
            }
            std::thread::sleep(RETRY);
        }
    }
}
