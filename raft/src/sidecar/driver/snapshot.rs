//! The driver's snapshot work: taking snapshots by policy and on request, compacting
//! the log once a snapshot file is durable, streaming the latest file to followers the
//! core asks for, installing files received from the leader, and restoring the state
//! machine at startup.
//!
//! Ordering rules:
//! * **Taking**: the state machine's capture runs on the driver (cheap, by contract);
//!   encoding and writing the file run on a blocking thread. Only after the file is
//!   durable does the driver call `compact` and persist the new snapshot point, so the
//!   log never loses an entry that no durable snapshot covers.
//! * **Installing**: the received file is verified while it is written, then, once the
//!   core adopts it (`Ready::snapshot`), published durably under its name *before* the
//!   ready's storage write records the snapshot point, and the state machine is
//!   restored from it right after that write.
//! * **Startup**: the newest file that is consistent with the log (its index is the
//!   log's snapshot point, or the log holds its index with its term) and verifies is
//!   restored; damaged files are reported and skipped in favour of older ones.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::Driver;
use crate::core::{Entry, EntryPayload, Index, Message, MessageBody, NodeId, SnapshotMeta, Term};
use crate::sidecar::handle::SnapshotStatus;
use crate::sidecar::{SidecarConfig, SidecarError, StartError, StateMachine};
use crate::storage::snapshot::{SnapshotError, SnapshotInfo, SnapshotStore, StagedSnapshot};
use crate::storage::{InitialState, StorageError, WriteBatch};
use crate::transport::snapshot::SNAPSHOT_CHUNKS_IN_FLIGHT;
use crate::transport::{IncomingSnapshot, OutgoingSnapshot, SnapshotSendError, Transport};

type IndexReply = oneshot::Sender<Result<Index, SidecarError>>;

/// What background snapshot work reports back to the driver. At most one creation,
/// one transfer per peer and one received snapshot are in flight, so the channel that
/// carries these is bounded by construction.
pub(in crate::sidecar) enum SnapshotEvent {
    /// A snapshot file was written (or failed to be).
    Created(Result<Created, String>),
    /// A transfer to a follower ended.
    Sent {
        to: NodeId,
        info: SnapshotInfo,
        result: Result<(), SnapshotSendError>,
        /// Reading our own file found it damaged (its checksum or format): why.
        damaged: Option<String>,
    },
    /// A snapshot arrived from `from` and verified; `done` releases the receiver for
    /// the next one.
    Received {
        from: NodeId,
        term: Term,
        staged: StagedSnapshot,
        reply: oneshot::Sender<Result<(), String>>,
        done: oneshot::Sender<()>,
    },
    /// A received snapshot was refused before reaching the core.
    ReceiveFailed,
}

pub(in crate::sidecar) struct Created {
    info: SnapshotInfo,
    image_bytes: usize,
    took: Duration,
}

/// A received snapshot stepped into the core, waiting for its verdict.
struct PendingInstall {
    from: NodeId,
    staged: StagedSnapshot,
    reply: oneshot::Sender<Result<(), String>>,
    done: oneshot::Sender<()>,
}

/// The driver's snapshot state.
pub(in crate::sidecar) struct Snapshots {
    store: SnapshotStore,
    /// Snapshot files this process wrote, installed or verified, newest first: the
    /// ones it may send.
    known: Vec<SnapshotInfo>,
    /// Applied entries and payload bytes since the latest snapshot (the policy).
    entries_since: u64,
    bytes_since: u64,
    creating: bool,
    waiters: Vec<IndexReply>,
    sending: HashSet<NodeId>,
    pending: Option<PendingInstall>,
    /// The leader's answer for a snapshot being installed, sent once restored.
    pending_reply: Option<oneshot::Sender<Result<(), String>>>,
    /// False when the log is durable but the snapshot files are not: then the log is
    /// never compacted and no snapshot is taken by policy.
    may_compact: bool,
    events_tx: mpsc::UnboundedSender<SnapshotEvent>,
    pub(super) events: mpsc::UnboundedReceiver<SnapshotEvent>,
    pub(super) status: SnapshotStatus,
}

impl Snapshots {
    /// The state of a node that restored from `loaded` (if any) at start, and receives
    /// snapshots from `inbox` (if its transport carries them).
    pub(super) fn start(
        id: NodeId,
        store: SnapshotStore,
        loaded: Option<SnapshotInfo>,
        inbox: Option<mpsc::Receiver<IncomingSnapshot>>,
        may_compact: bool,
    ) -> Self {
        if !may_compact {
            warn!(
                node = id,
                "snapshots are kept in memory but the log is durable: the log will not be \
                 compacted (set snapshot_dir)"
            );
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        if let Some(inbox) = inbox {
            tokio::spawn(receive_loop(id, store.clone(), inbox, events_tx.clone()));
        }
        let status = SnapshotStatus {
            index: loaded.as_ref().map_or(0, |i| i.index),
            restored: loaded.as_ref().map_or(0, |i| i.index),
            ..Default::default()
        };
        Snapshots {
            store,
            known: loaded.into_iter().collect(),
            entries_since: 0,
            bytes_since: 0,
            creating: false,
            waiters: Vec::new(),
            sending: HashSet::new(),
            pending: None,
            pending_reply: None,
            may_compact,
            events_tx,
            events,
            status,
        }
    }

    fn remember(&mut self, info: SnapshotInfo, kept: usize) {
        self.known.retain(|k| k.name() != info.name());
        self.known.insert(0, info);
        self.known.sort_by_key(|k| std::cmp::Reverse((k.index, k.term)));
        self.known.truncate(kept.max(1));
        self.status.index = self.known.first().map_or(0, |k| k.index);
        self.entries_since = 0;
        self.bytes_since = 0;
    }

    /// Fails everything waiting (the driver stops).
    pub(super) fn fail_all(&mut self, err: &SidecarError) {
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
        if let Some(p) = self.pending.take() {
            let _ = p.reply.send(Err(format!("the receiving node stopped: {err}")));
        }
        if let Some(r) = self.pending_reply.take() {
            let _ = r.send(Err(format!("the receiving node stopped: {err}")));
        }
    }
}

/// Restores the state machine from the newest usable snapshot file at startup.
/// Returns the state machine, the index it is now at, and the file used.
pub(super) async fn restore_at_start<M: StateMachine>(
    id: NodeId,
    store: &SnapshotStore,
    initial: &InitialState,
    mut sm: M,
    durable: Index,
) -> Result<(M, Index, Option<SnapshotInfo>), StartError> {
    let point = &initial.snapshot;
    let s = store.clone();
    let infos = tokio::task::spawn_blocking(move || s.list())
        .await
        .map_err(|e| StartError::Storage(StorageError::Io(format!("listing snapshots: {e}"))))??;
    let term_in_log = |index: Index| -> Option<Term> {
        let offset = index.checked_sub(point.index + 1)?;
        let e = initial.entries.get(usize::try_from(offset).ok()?)?;
        (e.index == index).then_some(e.term)
    };
    let mut problems = Vec::new();
    for info in infos {
        if info.index < point.index || info.index <= durable {
            // Older than what the log or the state machine already reaches.
            break;
        }
        let location = store.location(&info);
        let consistent = (info.index == point.index && info.term == point.term)
            || term_in_log(info.index) == Some(info.term);
        if !consistent {
            warn!(node = id, file = %location, "skipping a snapshot file the log does not agree with");
            problems.push(format!("{location}: not consistent with the log"));
            continue;
        }
        let s = store.clone();
        let i = info.clone();
        let loaded = tokio::task::spawn_blocking(move || s.load(&i))
            .await
            .map_err(|e| StartError::Storage(StorageError::Io(format!("loading a snapshot: {e}"))))?;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                error!(node = id, error = %e, "snapshot file unusable; trying an older one");
                problems.push(e.to_string());
                continue;
            }
        };
        let started = Instant::now();
        let index = loaded.meta.index;
        let (back, restored) = tokio::task::spawn_blocking(move || {
            let r = sm.restore(index, &loaded.image);
            (sm, r)
        })
        .await
        .map_err(|e| StartError::Storage(StorageError::Io(format!("restoring a snapshot: {e}"))))?;
        sm = back;
        match restored {
            Ok(()) => {
                info!(node = id, index, file = %location, took_ms = started.elapsed().as_millis() as u64,
                    "state machine restored from snapshot; replaying the log after it");
                return Ok((sm, index, Some(info)));
            }
            Err(e) => {
                error!(node = id, file = %location, error = %e,
                    "the state machine refused a snapshot image; trying an older one");
                problems.push(format!("{location}: restore failed: {e}"));
            }
        }
    }
    if durable < point.index {
        return Err(StartError::NoUsableSnapshot {
            point: point.index,
            problems: if problems.is_empty() {
                "there are no snapshot files".into()
            } else {
                problems.join("; ")
            },
        });
    }
    Ok((sm, durable, None))
}

/// Receives snapshots one at a time: writes and verifies each to a temporary file,
/// then hands it to the driver and waits until the driver is done with it.
async fn receive_loop(
    id: NodeId,
    store: SnapshotStore,
    mut inbox: mpsc::Receiver<IncomingSnapshot>,
    events: mpsc::UnboundedSender<SnapshotEvent>,
) {
    loop {
        let incoming = tokio::select! {
            _ = events.closed() => return,
            i = inbox.recv() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let IncomingSnapshot {
            from,
            term,
            len,
            chunks,
            reply,
        } = incoming;
        match receive_file(&store, len, chunks).await {
            Ok(staged) => {
                info!(
                    node = id,
                    from,
                    index = staged.meta.index,
                    bytes = len,
                    "snapshot received and verified"
                );
                let (done, wait) = oneshot::channel();
                let ev = SnapshotEvent::Received {
                    from,
                    term,
                    staged,
                    reply,
                    done,
                };
                if events.send(ev).is_err() {
                    return;
                }
                let _ = wait.await;
            }
            Err(reason) => {
                warn!(node = id, from, %reason, "refusing a received snapshot");
                let _ = reply.send(Err(reason));
                if events.send(SnapshotEvent::ReceiveFailed).is_err() {
                    return;
                }
            }
        }
    }
}

async fn receive_file(
    store: &SnapshotStore,
    len: u64,
    mut chunks: mpsc::Receiver<bytes::Bytes>,
) -> Result<StagedSnapshot, String> {
    fn joined(e: tokio::task::JoinError) -> String {
        format!("snapshot writer task failed: {e}")
    }
    let s = store.clone();
    let mut writer = tokio::task::spawn_blocking(move || s.receive())
        .await
        .map_err(joined)?
        .map_err(|e| e.to_string())?;
    while let Some(chunk) = chunks.recv().await {
        writer = tokio::task::spawn_blocking(move || writer.write(&chunk).map(|()| writer))
            .await
            .map_err(joined)?
            .map_err(|e| e.to_string())?;
    }
    if writer.written() != len {
        return Err(format!(
            "the transfer ended after {} of {len} bytes",
            writer.written()
        ));
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(joined)?
        .map_err(|e| e.to_string())
}

fn fatal(what: String) -> StorageError {
    StorageError::Io(what)
}

impl<T: Transport + ?Sized, M: StateMachine> Driver<T, M> {
    /// Inbound peer traffic. `InstallSnapshot` is only ever stepped by the snapshot
    /// path, once the data it announces is here and verified; a bare one from the
    /// network (our senders never send it) is dropped.
    pub(super) fn step_peer(&mut self, msg: Message) {
        if let MessageBody::InstallSnapshot { .. } = msg.body {
            warn!(
                node = self.cfg.id,
                from = msg.from,
                "dropping an InstallSnapshot message without its data"
            );
            return;
        }
        self.core.step(msg);
    }

    /// Counts what was just applied toward the snapshot policy.
    pub(super) fn note_applied(&mut self, committed: &[Entry]) {
        self.snap.entries_since += committed.len() as u64;
        self.snap.bytes_since += committed
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(b) => b.len() as u64,
                _ => 0,
            })
            .sum::<u64>();
    }

    /// After a round of readies: answer a received snapshot the core did not adopt,
    /// and take a snapshot if the policy says so.
    pub(super) fn after_ready(&mut self) {
        if let Some(p) = self.snap.pending.take() {
            // The core already held it (or a later one), or it came from a stale
            // leader: nothing to install. The core answered the leader itself.
            info!(
                node = self.cfg.id,
                from = p.from,
                index = p.staged.meta.index,
                "received snapshot not needed; discarding it"
            );
            let _ = p.reply.send(Ok(()));
            let _ = p.done.send(());
        }
        let cfg = &self.cfg;
        let due = (cfg.snapshot_entries > 0 && self.snap.entries_since >= cfg.snapshot_entries)
            || (cfg.snapshot_bytes > 0 && self.snap.bytes_since >= cfg.snapshot_bytes);
        if due && self.snap.may_compact && !self.snap.creating {
            self.start_snapshot(None);
        }
    }

    /// `RaftHandle::snapshot_now`.
    pub(super) fn snapshot_now(&mut self, reply: IndexReply) {
        let latest = self.snap.known.first().map_or(0, |k| k.index);
        if !self.snap.creating && self.applied <= latest {
            let r = if latest > 0 {
                Ok(latest)
            } else {
                Err(SidecarError::Snapshot("nothing has been applied yet".into()))
            };
            let _ = reply.send(r);
            return;
        }
        self.start_snapshot(Some(reply));
    }

    /// Captures the state machine at the applied index and writes the file in the
    /// background.
    fn start_snapshot(&mut self, waiter: Option<IndexReply>) {
        self.snap.waiters.extend(waiter);
        if self.snap.creating {
            return;
        }
        let index = self.applied;
        let Some(meta) = self.core.snapshot_meta(index) else {
            let err = SidecarError::Snapshot(format!("no snapshot meta at applied index {index}"));
            for w in self.snap.waiters.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
            return;
        };
        let started = Instant::now();
        let capture = self.sm.snapshot();
        let captured = started.elapsed();
        metrics::histogram!("raft_snapshot_capture_seconds").record(captured.as_secs_f64());
        self.snap.creating = true;
        // Counted afresh from here, so a failure is retried after another interval.
        self.snap.entries_since = 0;
        self.snap.bytes_since = 0;
        let store = self.snap.store.clone();
        let events = self.snap.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let image = capture();
            let image_bytes = image.len();
            let r = store.save(&meta, &image).map_err(|e| e.to_string());
            drop(image);
            let r = r.map(|info| Created {
                info,
                image_bytes,
                took: started.elapsed(),
            });
            let _ = events.send(SnapshotEvent::Created(r));
        });
    }

    /// Handles a report of background snapshot work.
    pub(super) async fn on_snapshot_event(&mut self, ev: SnapshotEvent) -> Result<(), StorageError> {
        match ev {
            SnapshotEvent::Created(Ok(c)) => self.on_created(c).await?,
            SnapshotEvent::Created(Err(e)) => {
                self.snap.creating = false;
                error!(node = self.cfg.id, error = %e, "taking a snapshot failed");
                for w in self.snap.waiters.drain(..) {
                    let _ = w.send(Err(SidecarError::Snapshot(e.clone())));
                }
            }
            SnapshotEvent::Sent {
                to,
                info,
                result,
                damaged,
            } => {
                let index = info.index;
                self.snap.sending.remove(&to);
                if let Some(reason) = damaged {
                    self.forget_damaged(&info, &reason);
                }
                match &result {
                    Ok(()) => {
                        self.snap.status.sent += 1;
                        metrics::counter!("raft_snapshots_sent_total").increment(1);
                        info!(node = self.cfg.id, to, index, "snapshot sent");
                    }
                    Err(e) => {
                        self.snap.status.send_failures += 1;
                        metrics::counter!("raft_snapshot_send_failures_total").increment(1);
                        warn!(node = self.cfg.id, to, index, error = %e, "snapshot transfer failed; the leader will retry");
                    }
                }
                self.core.report_snapshot(to, result.is_ok());
            }
            SnapshotEvent::Received {
                from,
                term,
                staged,
                reply,
                done,
            } => {
                let meta = staged.meta.clone();
                if let Some(old) = self.snap.pending.replace(PendingInstall {
                    from,
                    staged,
                    reply,
                    done,
                }) {
                    let _ = old.reply.send(Err("superseded".into()));
                }
                // The data is here and verified: now the core may adopt it.
                self.core.step(Message {
                    from,
                    to: self.cfg.id,
                    term,
                    body: MessageBody::InstallSnapshot { meta },
                });
            }
            SnapshotEvent::ReceiveFailed => {
                self.snap.status.receive_failures += 1;
            }
        }
        self.publish_status();
        Ok(())
    }

    async fn on_created(&mut self, c: Created) -> Result<(), StorageError> {
        self.snap.creating = false;
        let index = c.info.index;
        info!(
            node = self.cfg.id,
            index,
            image_bytes = c.image_bytes,
            took_ms = c.took.as_millis() as u64,
            "snapshot taken"
        );
        metrics::histogram!("raft_snapshot_seconds").record(c.took.as_secs_f64());
        metrics::gauge!("raft_snapshot_index").set(index as f64);
        self.snap.status.created += 1;
        // Counted since the capture, which happened at `index`.
        let since = self.applied.saturating_sub(index);
        self.snap.remember(c.info, self.cfg.snapshots_kept);
        self.snap.entries_since = since;
        // The file is durable: the log up to it (minus the tail kept for slow
        // followers) can go.
        let upto = index.saturating_sub(self.cfg.snapshot_keep_entries);
        let point = if self.snap.may_compact {
            self.core.compact(upto)
        } else {
            None
        };
        if let Some(point) = point {
            self.storage
                .write(WriteBatch {
                    snapshot: Some(point),
                    ..Default::default()
                })
                .await?;
        }
        self.prune_snapshots();
        self.publish_status();
        for w in self.snap.waiters.drain(..) {
            let _ = w.send(Ok(index));
        }
        Ok(())
    }

    fn prune_snapshots(&self) {
        let store = self.snap.store.clone();
        let kept = self.cfg.snapshots_kept.max(1);
        let id = self.cfg.id;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.prune(kept) {
                warn!(node = id, error = %e, "cannot delete old snapshot files");
            }
        });
    }

    /// Takes the core's snapshot requests out of outgoing messages and starts a
    /// transfer for each (one per follower at a time).
    pub(super) fn take_snapshot_requests(&mut self, msgs: &mut Vec<Message>) {
        if !msgs
            .iter()
            .any(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }))
        {
            return;
        }
        let mut requests = Vec::new();
        msgs.retain(|m| match &m.body {
            MessageBody::InstallSnapshot { meta } => {
                requests.push((m.to, m.term, meta.index));
                false
            }
            _ => true,
        });
        for (to, term, index) in requests {
            self.send_snapshot(to, term, index);
        }
    }

    fn send_snapshot(&mut self, to: NodeId, term: Term, needed: Index) {
        if self.snap.sending.contains(&to) {
            // Still streaming the previous request's file.
            return;
        }
        let Some(info) = self.snap.known.iter().find(|k| k.index >= needed).cloned() else {
            warn!(
                node = self.cfg.id,
                to, needed, "a follower needs a snapshot but none covers its gap yet; taking one"
            );
            self.core.report_snapshot(to, false);
            if !self.snap.creating {
                self.start_snapshot(None);
            }
            return;
        };
        self.snap.sending.insert(to);
        info!(node = self.cfg.id, to, index = info.index, "sending snapshot");
        let store = self.snap.store.clone();
        let transport = self.transport.clone();
        let events = self.snap.events_tx.clone();
        let chunk = self.cfg.snapshot_chunk_bytes.max(1);
        tokio::spawn(async move {
            let (result, damaged) = stream_file(store, info.clone(), chunk, transport, to, term).await;
            let _ = events.send(SnapshotEvent::Sent {
                to,
                info,
                result,
                damaged,
            });
        });
    }

    /// Our own snapshot file `info` turned out damaged while being sent: it is never
    /// offered again, it is deleted (a restart would skip it anyway), and a fresh
    /// snapshot is taken so that followers that need one can be served.
    fn forget_damaged(&mut self, info: &SnapshotInfo, reason: &str) {
        // The report may be late: a fresh snapshot at the same index (so the same
        // name) may already have replaced the damaged file. Only a file that is still
        // damaged now is deleted; one that cannot be read any more is forgotten.
        let store = &self.snap.store;
        let still_damaged = match blocking_here(|| verify_file(store, info)) {
            Ok(()) => {
                info!(
                    node = self.cfg.id,
                    index = info.index,
                    "a damaged snapshot file was already replaced by a good one"
                );
                return;
            }
            Err(SnapshotError::Corrupt { .. }) => true,
            Err(e) => {
                warn!(node = self.cfg.id, index = info.index, error = %e,
                    "a damaged snapshot file cannot be read any more; forgetting it");
                false
            }
        };
        self.snap.known.retain(|k| k.name() != info.name());
        self.snap.status.index = self.snap.known.first().map_or(0, |k| k.index);
        if still_damaged {
            error!(
                node = self.cfg.id,
                index = info.index,
                reason,
                "our snapshot file is damaged; deleting it and taking a fresh snapshot"
            );
            metrics::counter!("raft_snapshot_damaged_total").increment(1);
            // Deleted before the fresh snapshot starts, which may be at the same index
            // (and so have the same name).
            let store = &self.snap.store;
            if let Err(e) = blocking_here(|| store.remove(info)) {
                warn!(node = self.cfg.id, error = %e, "could not delete a damaged snapshot file");
            }
        }
        if !self.snap.creating {
            self.start_snapshot(None);
        }
    }

    /// Publishes the received file the core just adopted (`meta`), before the ready's
    /// storage write records the snapshot point.
    pub(super) async fn install_received(
        &mut self,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotInfo, StorageError> {
        let Some(p) = self.snap.pending.take() else {
            return Err(fatal(format!(
                "the core adopted snapshot {} that was never received",
                meta.index
            )));
        };
        if p.staged.meta != *meta {
            let _ = p.reply.send(Err("internal error".into()));
            return Err(fatal(format!(
                "the core adopted snapshot {} but the received file holds {}",
                meta.index, p.staged.meta.index
            )));
        }
        let store = self.snap.store.clone();
        let PendingInstall {
            staged, reply, done, ..
        } = p;
        let published = tokio::task::spawn_blocking(move || store.install(staged))
            .await
            .map_err(|e| fatal(format!("installing a snapshot: {e}")))?;
        let _ = done.send(());
        match published {
            Ok(info) => {
                // Answered once installed and restored; see `restore_installed`.
                self.snap.pending_reply = Some(reply);
                Ok(info)
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                Err(fatal(format!("installing a received snapshot: {e}")))
            }
        }
    }

    /// Restores the state machine from the file published by `install_received`,
    /// once the snapshot point is durable.
    pub(super) async fn restore_installed(&mut self, info: SnapshotInfo) -> Result<(), StorageError> {
        let reply = self.snap.pending_reply.take();
        let store = self.snap.store.clone();
        let i = info.clone();
        let started = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || store.load(&i))
            .await
            .map_err(|e| fatal(format!("loading a snapshot: {e}")))?;
        let sm = &mut self.sm;
        let outcome = blocking_here(|| {
            loaded
                .map_err(|e| e.to_string())
                .and_then(|l| sm.restore(l.meta.index, &l.image))
        });
        if let Err(e) = outcome {
            let msg = format!(
                "restoring the state machine from the installed snapshot {} failed: {e}",
                self.snap.store.location(&info)
            );
            if let Some(r) = reply {
                let _ = r.send(Err(msg.clone()));
            }
            return Err(fatal(msg));
        }
        let index = info.index;
        info!(
            node = self.cfg.id,
            index,
            took_ms = started.elapsed().as_millis() as u64,
            "installed a snapshot from the leader"
        );
        self.snap.status.installed += 1;
        metrics::counter!("raft_snapshots_installed_total").increment(1);
        self.snap.remember(info, self.cfg.snapshots_kept);
        self.prune_snapshots();
        self.applied = index;
        self.applied_tx.send_replace(index);
        let later = self.reads_waiting_apply.split_off(&(index + 1));
        for (_, replies) in std::mem::replace(&mut self.reads_waiting_apply, later) {
            for r in replies {
                let _ = r.send(Ok(index));
            }
        }
        if let Some(r) = reply {
            let _ = r.send(Ok(()));
        }
        self.publish_status();
        Ok(())
    }
}

/// Runs `f`, which may block for a while (restoring a large image), without starving
/// the runtime's other tasks where the runtime allows it.
fn blocking_here<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reads a whole snapshot file through its verifying reader, keeping nothing.
fn verify_file(store: &SnapshotStore, info: &SnapshotInfo) -> Result<(), SnapshotError> {
    let mut reader = store.reader(info)?;
    while !reader.next_chunk(1 << 20)?.is_empty() {}
    Ok(())
}

/// Streams one file: a blocking reader feeds a small bounded channel that the
/// transport drains, so at most a few chunks are in memory.
async fn stream_file<T: Transport + ?Sized>(
    store: SnapshotStore,
    info: SnapshotInfo,
    chunk: usize,
    transport: Arc<T>,
    to: NodeId,
    term: Term,
) -> (Result<(), SnapshotSendError>, Option<String>) {
    let opened = match tokio::task::spawn_blocking(move || store.reader(&info)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let reader = match opened {
        Ok(r) => r,
        Err(e) => return (Err(SnapshotSendError::Failed(e)), None),
    };
    let len = reader.len();
    let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT);
    // The reader verifies the file as it goes: a damaged file's last chunk is never
    // sent (the follower would refuse it anyway), and the driver learns why.
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        loop {
            match reader.next_chunk(chunk) {
                Ok(c) if c.is_empty() => return None,
                Ok(c) => {
                    if tx.blocking_send(c).is_err() {
                        return None;
                    }
                }
                Err(e @ SnapshotError::Corrupt { .. }) => return Some(e.to_string()),
                Err(e) => {
                    warn!(error = %e, "reading a snapshot file to send failed");
                    return None;
                }
            }
        }
    });
    let result = transport
        .send_snapshot(
            to,
            OutgoingSnapshot {
                term,
                len,
                chunks: rx,
            },
        )
        .await;
    let damaged = reading.await.unwrap_or(None);
    (result, damaged)
}

/// The snapshot store a sidecar uses when none is given.
pub(super) async fn open_store(cfg: &SidecarConfig) -> Result<SnapshotStore, StartError> {
    match &cfg.snapshot_dir {
        None => Ok(SnapshotStore::in_memory()),
        Some(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || SnapshotStore::open_dir(dir))
                .await
                .map_err(|e| StartError::Storage(StorageError::Io(format!("opening snapshots: {e}"))))?
                .map_err(StartError::from)
        }
    }
}
