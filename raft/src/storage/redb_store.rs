//! A durable [`LogStore`] in a single [redb](https://docs.rs/redb) file.
//!
//! Layout (format `raft-log/redb/v1`):
//! * table `log`: `u64` index -> postcard-encoded [`Entry`];
//! * table `meta`: `&str` key -> bytes, with the keys `format` (the format marker, written
//!   when the file is created), `hard_state` (postcard [`HardState`]) and `snapshot`
//!   (postcard [`SnapshotMeta`]). A missing `hard_state` or `snapshot` means the default.
//!
//! Every [`LogStore::write`] is one redb write transaction committed with
//! [`Durability::Immediate`]: one fsync per batch, and the batch is on disk entirely or
//! not at all.
//!
//! What a batch may contain, and what it deletes, is the same for every store of this
//! crate (see [`MemStore`](super::MemStore)):
//! * entries must be contiguous, start after the snapshot point and leave no gap after the
//!   stored log; stored entries at or after the first of them are replaced;
//! * a snapshot may not go backwards (at the stored snapshot's index it must carry the
//!   same term); a newer one deletes the entries it covers, and if the stored entry at its
//!   index has a different term, also every entry after it, since the snapshot
//!   contradicts that part of the log (Raft paper, section 7);
//! * a batch breaking these rules is refused with [`StorageError::InvalidBatch`] and
//!   changes nothing.
//!
//! A new file is created only where no file exists, and atomically: the database is
//! initialised (tables and format marker) under a temporary name next to the target and
//! renamed into place. So any file found at the path must carry the marker; anything
//! else (an empty file, garbage, a truncated or otherwise damaged database, a redb
//! database of some other program) is refused with an error naming the file, rather than
//! read as an empty log. The directory is assumed to belong to one node: two processes
//! creating the same log at the same moment are not guarded against (once created, redb's
//! file lock keeps a second process out).

use std::fmt;
use std::fs;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::plan::{plan, Bounds};
use super::{InitialState, LogStore, StorageError, WriteBatch};
use crate::core::{Entry, HardState, Index, SnapshotMeta, Term};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const FORMAT_KEY: &str = "format";
const HARD_STATE_KEY: &str = "hard_state";
const SNAPSHOT_KEY: &str = "snapshot";

/// Every version of our format marker starts with this.
const FORMAT_PREFIX: &[u8] = b"raft-log/redb/v";
/// The format this code writes and reads.
const FORMAT_V1: &[u8] = b"raft-log/redb/v1";

/// Suffix of the temporary file a new log is initialised in before it is renamed into place.
const CREATING_SUFFIX: &str = ".creating";

/// The encode buffer is kept between writes, unless one huge entry grew it beyond this.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// redb's page cache limit. The log is written at its tail and read in full only at
/// startup (the core serves reads from memory), so a large cache buys nothing but
/// resident memory kept after the startup scan; redb's default is 1 GiB.
const CACHE_SIZE: usize = 32 << 20;

/// A log store in one redb file. See the [module documentation](self) for the layout and
/// the guarantees.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// Where the stored log starts and ends, kept so that a write need not read it back.
    /// `None` after a failed write (the next write reads it from the file).
    bounds: Option<Bounds>,
    /// Reused encode buffer.
    buf: Vec<u8>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the log at `path`, creating a new, empty one if no file exists there.
    ///
    /// An existing file must be a raft log written by this module; anything else is an
    /// [`StorageError::Open`] or [`StorageError::Corrupt`] error naming the file. The whole
    /// file is integrity-checked (redb page checksums) on open, and a database left by a
    /// crash is repaired to its last committed transaction. The file stays locked until
    /// the store is dropped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref();
        match fs::metadata(path) {
            Ok(meta) if !meta.is_file() => return Err(open_error(path, "it is not a regular file")),
            Ok(meta) if meta.len() == 0 => {
                return Err(open_error(
                    path,
                    "the file is empty, so it is not a raft log (a new log is only created \
                     where no file exists)",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(open_error(path, format!("cannot stat it: {e}"))),
        }
        let db = open_database(path)?;
        let mut store = RedbStore {
            db,
            path: path.to_path_buf(),
            bounds: None,
            buf: Vec::new(),
        };
        store.bounds = Some(store.check_format()?);
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file, reporting any error that dropping the store would ignore. Every
    /// successful write is already durable; this only releases the file (and its lock)
    /// cleanly, which spares the next open a crash-recovery pass.
    pub fn close(self) -> Result<(), StorageError> {
        let path = self.path;
        self.db.close().map_err(|e| redb_error(&path, "cannot close", e))
    }

    /// Checks that the file is one of ours and reads where its log starts and ends.
    fn check_format(&self) -> Result<Bounds, StorageError> {
        let path = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| redb_error(path, "cannot begin a read transaction", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| foreign_table_error(path, "meta", e))?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(|e| redb_error(path, "cannot read the format marker", e))?;
        match format.as_ref().map(|v| v.value()) {
            Some(FORMAT_V1) => {}
            Some(v) if v.starts_with(FORMAT_PREFIX) => {
                return Err(open_error(
                    path,
                    format!(
                        "unsupported raft log format {:?} (this build reads {:?})",
                        String::from_utf8_lossy(v),
                        String::from_utf8_lossy(FORMAT_V1)
                    ),
                ))
            }
            Some(_) => {
                return Err(open_error(
                    path,
                    "not a raft log: its `meta` table has a foreign format marker",
                ))
            }
            None => {
                return Err(open_error(
                    path,
                    "not a raft log: its `meta` table has no format marker",
                ))
            }
        }
        let log = txn
            .open_table(LOG)
            .map_err(|e| foreign_table_error(path, "log", e))?;
        read_bounds(path, &log, &meta)
    }

    fn load_inner(&self) -> Result<InitialState, StorageError> {
        let path = self.path.as_path();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| redb_error(path, "cannot begin a read transaction", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| foreign_table_error(path, "meta", e))?;
        let log = txn
            .open_table(LOG)
            .map_err(|e| foreign_table_error(path, "log", e))?;
        let hard_state: HardState = read_meta(path, &meta, HARD_STATE_KEY)?.unwrap_or_default();
        let snapshot: SnapshotMeta = read_meta(path, &meta, SNAPSHOT_KEY)?.unwrap_or_default();

        let stored = log
            .len()
            .map_err(|e| redb_error(path, "cannot read the log length", e))?;
        // The length is only a capacity hint; do not trust it with a huge allocation.
        let mut entries = Vec::with_capacity(stored.min(1 << 20) as usize);
        let mut expected = snapshot.index.checked_add(1);
        for item in log
            .iter()
            .map_err(|e| redb_error(path, "cannot read the log", e))?
        {
            let (key, value) = item.map_err(|e| redb_error(path, "cannot read the log", e))?;
            let index = key.value();
            if Some(index) != expected {
                return Err(corrupt(
                    path,
                    match expected {
                        Some(expected) if index > expected => {
                            format!("the log has no entry at index {expected} but has one at index {index}")
                        }
                        _ => format!(
                            "the log has an entry at index {index}, at or below the snapshot \
                             index {}",
                            snapshot.index
                        ),
                    },
                ));
            }
            let entry: Entry = decode(value.value()).map_err(|reason| {
                corrupt(
                    path,
                    format!("the log entry at index {index} does not decode: {reason}"),
                )
            })?;
            if entry.index != index {
                return Err(corrupt(
                    path,
                    format!(
                        "the log entry stored at index {index} says its index is {}",
                        entry.index
                    ),
                ));
            }
            entries.push(entry);
            expected = index.checked_add(1);
        }
        Ok(InitialState {
            hard_state,
            snapshot,
            entries,
        })
    }

    fn write_inner(&mut self, batch: &WriteBatch) -> Result<Bounds, StorageError> {
        let RedbStore {
            db,
            path,
            bounds,
            buf,
        } = self;
        let path = path.as_path();
        let mut txn = db
            .begin_write()
            .map_err(|e| redb_error(path, "cannot begin a write transaction", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb_error(path, "cannot request immediate durability", e))?;
        let after = {
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| redb_error(path, "cannot open the log table", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| redb_error(path, "cannot open the meta table", e))?;
            let before = match *bounds {
                Some(b) => b,
                None => read_bounds(path, &log, &meta)?,
            };
            // Nothing is modified until the batch has been checked; an invalid batch
            // drops (aborts) the transaction.
            let plan = plan(before, batch, |index| stored_term(path, &log, index))?;

            if let Some(through) = plan.purge_through {
                log.retain_in(..=through, |_, _| false)
                    .map_err(|e| redb_error(path, "cannot purge the log", e))?;
            }
            if let Some(from) = plan.truncate_from {
                log.retain_in(from.., |_, _| false)
                    .map_err(|e| redb_error(path, "cannot truncate the log", e))?;
            }
            for entry in &batch.entries {
                encode(path, buf, entry)?;
                log.insert(entry.index, buf.as_slice())
                    .map_err(|e| redb_error(path, "cannot insert a log entry", e))?;
            }
            if let Some(snapshot) = &batch.snapshot {
                encode(path, buf, snapshot)?;
                meta.insert(SNAPSHOT_KEY, buf.as_slice())
                    .map_err(|e| redb_error(path, "cannot store the snapshot metadata", e))?;
            }
            if let Some(hard_state) = &batch.hard_state {
                encode(path, buf, hard_state)?;
                meta.insert(HARD_STATE_KEY, buf.as_slice())
                    .map_err(|e| redb_error(path, "cannot store the hard state", e))?;
            }
            plan.after
        };
        txn.commit()
            .map_err(|e| redb_error(path, "cannot commit the write", e))?;
        if buf.capacity() > MAX_KEPT_BUFFER {
            *buf = Vec::new();
        }
        Ok(after)
    }
}

impl LogStore for RedbStore {
    fn load(&mut self) -> Result<InitialState, StorageError> {
        let state = self.load_inner();
        self.bounds = state.as_ref().ok().map(|s| Bounds {
            snapshot_index: s.snapshot.index,
            snapshot_term: s.snapshot.term,
            last_index: s.last_index(),
        });
        state
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.write_inner(batch) {
            Ok(after) => {
                self.bounds = Some(after);
                Ok(())
            }
            Err(e) => {
                // A refused batch changed nothing; after any other failure, re-read the
                // bounds from the file rather than trust the cached ones.
                if !matches!(e, StorageError::InvalidBatch(_)) {
                    self.bounds = None;
                }
                Err(e)
            }
        }
    }
}

/// Initialises a new log at `path`, atomically: see the module documentation.
fn create(path: &Path) -> Result<(), StorageError> {
    let Some(name) = path.file_name() else {
        return Err(open_error(path, "the path does not name a file"));
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(CREATING_SUFFIX);
    let tmp = path.with_file_name(tmp_name);
    let tmp_error =
        |what: &str, e: &dyn fmt::Display| open_error(path, format!("{what} {}: {e}", tmp.display()));

    // A leftover from a creation that crashed before the rename: never a live log.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(tmp_error("cannot remove the stale", &e)),
    }
    let db = Database::builder()
        .create(&tmp)
        .map_err(|e| tmp_error("cannot create", &e))?;
    let mut txn = db.begin_write().map_err(|e| tmp_error("cannot initialise", &e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| tmp_error("cannot initialise", &e))?;
    {
        txn.open_table(LOG)
            .map_err(|e| tmp_error("cannot initialise", &e))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| tmp_error("cannot initialise", &e))?;
        meta.insert(FORMAT_KEY, FORMAT_V1)
            .map_err(|e| tmp_error("cannot initialise", &e))?;
    }
    txn.commit().map_err(|e| tmp_error("cannot initialise", &e))?;
    db.close().map_err(|e| tmp_error("cannot close", &e))?;
    fs::rename(&tmp, path).map_err(|e| tmp_error("cannot rename into place", &e))?;
    sync_parent_dir(path).map_err(|e| open_error(path, format!("cannot sync its directory: {e}")))
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Opens an existing redb file, checking every page. redb may panic (debug assertions)
/// on a file damaged outside its control, so a panic is caught and reported as
/// corruption rather than taking the node down with an unexplained message.
fn open_database(path: &Path) -> Result<Database, StorageError> {
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(CACHE_SIZE)
            .set_check_integrity_on_open(true)
            .open(path)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(open_error(
            path,
            "it is already open (locked by this or another process)",
        )),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)))) => {
            Err(corrupt(path, format!("not a valid redb database: {reason}")))
        }
        Ok(Err(e)) => Err(open_error(path, format!("not a valid redb database: {e}"))),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(corrupt(
                path,
                format!("not a valid redb database (redb failed reading it: {message})"),
            ))
        }
    }
}

/// Reads the stored bounds and checks that the log lies right after the snapshot.
fn read_bounds(
    path: &Path,
    log: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Bounds, StorageError> {
    let snapshot: SnapshotMeta = read_meta(path, meta, SNAPSHOT_KEY)?.unwrap_or_default();
    let first = log
        .first()
        .map_err(|e| redb_error(path, "cannot read the log", e))?
        .map(|(k, _)| k.value());
    let last = log
        .last()
        .map_err(|e| redb_error(path, "cannot read the log", e))?
        .map(|(k, _)| k.value());
    let last_index = match (first, last) {
        (Some(first), Some(last)) => {
            if Some(first) != snapshot.index.checked_add(1) {
                return Err(corrupt(
                    path,
                    format!(
                        "the log starts at index {first} but the snapshot is at index {}",
                        snapshot.index
                    ),
                ));
            }
            last
        }
        _ => snapshot.index,
    };
    Ok(Bounds {
        snapshot_index: snapshot.index,
        snapshot_term: snapshot.term,
        last_index,
    })
}

/// The term of the stored entry at `index`, which the bounds say exists.
fn stored_term(
    path: &Path,
    log: &impl ReadableTable<u64, &'static [u8]>,
    index: Index,
) -> Result<Term, StorageError> {
    let value = log
        .get(index)
        .map_err(|e| redb_error(path, "cannot read the log", e))?
        .ok_or_else(|| corrupt(path, format!("the log has no entry at index {index}")))?;
    let entry: Entry = decode(value.value()).map_err(|reason| {
        corrupt(
            path,
            format!("the log entry at index {index} does not decode: {reason}"),
        )
    })?;
    Ok(entry.term)
}

fn read_meta<T: DeserializeOwned>(
    path: &Path,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let Some(value) = meta
        .get(key)
        .map_err(|e| redb_error(path, "cannot read the meta table", e))?
    else {
        return Ok(None);
    };
    decode(value.value())
        .map(Some)
        .map_err(|reason| corrupt(path, format!("`{key}` does not decode: {reason}")))
}

/// Decodes a whole value: trailing bytes are corruption too.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn encode(path: &Path, buf: &mut Vec<u8>, value: &impl Serialize) -> Result<(), StorageError> {
    buf.clear();
    postcard::to_io(value, &mut *buf)
        .map(drop)
        .map_err(|e| StorageError::Io(format!("{}: cannot encode: {e}", path.display())))
}

fn open_error(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Open {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Maps a redb error met while using the file: corruption is [`StorageError::Corrupt`],
/// anything else [`StorageError::Io`]; both name the file.
fn redb_error(path: &Path, what: &str, e: impl Into<redb::Error>) -> StorageError {
    match e.into() {
        redb::Error::Corrupted(reason) => corrupt(path, format!("{what}: {reason}")),
        other => StorageError::Io(format!("{}: {what}: {other}", path.display())),
    }
}

/// Maps an error opening one of our tables for reading: a missing or differently typed
/// table means the file is not ours.
fn foreign_table_error(path: &Path, table: &str, e: TableError) -> StorageError {
    match e {
        TableError::TableDoesNotExist(_) => open_error(
            path,
            format!("not a raft log: it is a redb database without a `{table}` table"),
        ),
        TableError::Storage(e) => redb_error(path, "cannot open a table", e),
        other => open_error(path, format!("not a raft log: table `{table}`: {other}")),
    }
}
