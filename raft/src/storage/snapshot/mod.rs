//! Durable state machine snapshots: the files a node keeps next to its log.
//!
//! A snapshot file holds a [`SnapshotMeta`] (index, term, configuration) and the state
//! machine's image, with a SHA-256 over everything ([`format`] has the layout). Files
//! are written under a temporary name, fsynced, renamed to
//! `snapshot-<index>-<term>.snap` and the directory fsynced, so a file under its final
//! name is always complete; a crash mid-write leaves only a temporary file, removed
//! when the store is next opened.
//!
//! Nothing is trusted on load: a file whose checksum, length, header or name does not
//! match is refused with a [`SnapshotError::Corrupt`] naming it, and the caller can fall
//! back to an older file. The same verification runs while a snapshot is received from
//! a peer, chunk by chunk, so a damaged or truncated transfer is never installed.
//!
//! Every call blocks on file IO: run them on a blocking thread, never on an async
//! worker.

mod backend;
pub mod format;

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use self::backend::{Backend, DirBackend, MemBackend, TempFile};
use self::format::{encode_header, Checksummer, FormatError, Verifier};
use crate::core::{Index, SnapshotMeta, Term};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";

/// Errors of a snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing a file failed.
    #[error("snapshot store {location}: {source}")]
    Io {
        /// The file or directory.
        location: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// A file (or received transfer) is not a valid snapshot.
    #[error("snapshot file {location} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SnapshotError {
    fn io(location: String, source: io::Error) -> Self {
        SnapshotError::Io { location, source }
    }
}

/// A published snapshot file, as listed (its content is verified only by
/// [`SnapshotStore::load`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last log index the snapshot covers (from the file name).
    pub index: Index,
    /// The term of the entry at `index` (from the file name).
    pub term: Term,
    name: String,
}

impl SnapshotInfo {
    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (index, term) = rest.split_once('-')?;
        Some(SnapshotInfo {
            index: index.parse().ok()?,
            term: term.parse().ok()?,
            name: name.to_string(),
        })
    }

    fn name_for(index: Index, term: Term) -> String {
        format!("{PREFIX}{index:020}-{term:020}{SUFFIX}")
    }
}

/// A verified snapshot read back from its file.
#[derive(Clone, Debug)]
pub struct LoadedSnapshot {
    /// What it covers.
    pub meta: SnapshotMeta,
    /// The state machine image.
    pub image: Bytes,
}

/// Where a node keeps its snapshot files: a directory, or memory for tests. Cheap to
/// clone; clones share the files (so a test can "restart" a node on the same
/// in-memory store).
#[derive(Clone)]
pub struct SnapshotStore {
    backend: Arc<dyn Backend>,
    mem: Option<Arc<MemBackend>>,
    durable: bool,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("location", &self.backend.location(""))
            .finish()
    }
}

impl SnapshotStore {
    /// A store in directory `dir` (created if missing). Partial files left by an
    /// interrupted write or transfer are removed.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, SnapshotError> {
        let dir = dir.as_ref();
        let backend = DirBackend::open(dir).map_err(|e| SnapshotError::io(dir.display().to_string(), e))?;
        Ok(SnapshotStore {
            backend: Arc::new(backend),
            mem: None,
            durable: true,
        })
    }

    /// A store in memory: it survives dropping a node (clones share it) but not the
    /// process. For tests, and for nodes whose log is in memory too.
    pub fn in_memory() -> Self {
        let mem = Arc::new(MemBackend::default());
        SnapshotStore {
            backend: mem.clone(),
            mem: Some(mem),
            durable: false,
        }
    }

    /// Whether the files survive the process (a directory store).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Where file `info` lives, for messages.
    pub fn location(&self, info: &SnapshotInfo) -> String {
        self.backend.location(&info.name)
    }

    /// The published snapshots, newest (highest index) first. Files of other names
    /// are ignored.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let names = self
            .backend
            .list()
            .map_err(|e| SnapshotError::io(self.backend.location(""), e))?;
        let mut infos: Vec<SnapshotInfo> = names.iter().filter_map(|n| SnapshotInfo::parse(n)).collect();
        infos.sort_by_key(|i| std::cmp::Reverse((i.index, i.term)));
        Ok(infos)
    }

    /// Writes a snapshot durably: temporary file, fsync, rename, directory fsync.
    pub fn save(&self, meta: &SnapshotMeta, image: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
        let mut temp = self.temp()?;
        let loc = temp.location();
        let header = encode_header(meta, image.len() as u64).map_err(|e| SnapshotError::Corrupt {
            location: loc.clone(),
            reason: e.to_string(),
        })?;
        let mut sum = Checksummer::default();
        sum.update(&header);
        sum.update(image);
        let io = |e| SnapshotError::io(loc.clone(), e);
        temp.write_all(&header).map_err(io)?;
        temp.write_all(image).map_err(io)?;
        temp.write_all(&sum.finish()).map_err(io)?;
        self.publish(temp, meta.index, meta.term)
    }

    fn temp(&self) -> Result<Box<dyn TempFile>, SnapshotError> {
        self.backend
            .create_temp()
            .map_err(|e| SnapshotError::io(self.backend.location(""), e))
    }

    fn publish(
        &self,
        temp: Box<dyn TempFile>,
        index: Index,
        term: Term,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let name = SnapshotInfo::name_for(index, term);
        let loc = temp.location();
        temp.publish(&name).map_err(|e| SnapshotError::io(loc, e))?;
        Ok(SnapshotInfo { index, term, name })
    }

    /// Reads and verifies a snapshot: the checksum must match, the file must be
    /// complete, and its meta must agree with its name.
    pub fn load(&self, info: &SnapshotInfo) -> Result<LoadedSnapshot, SnapshotError> {
        let loc = self.location(info);
        let (mut reader, len) = self
            .backend
            .open(&info.name)
            .map_err(|e| SnapshotError::io(loc.clone(), e))?;
        let cap = usize::try_from(len).map_err(|_| SnapshotError::Corrupt {
            location: loc.clone(),
            reason: format!("{len} bytes do not fit in memory"),
        })?;
        let mut data = Vec::new();
        data.try_reserve_exact(cap).map_err(|e| {
            SnapshotError::io(
                loc.clone(),
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("cannot hold its {len} bytes in memory: {e}"),
                ),
            )
        })?;
        reader
            .read_to_end(&mut data)
            .map_err(|e| SnapshotError::io(loc.clone(), e))?;
        let corrupt = |e: FormatError| SnapshotError::Corrupt {
            location: loc.clone(),
            reason: e.to_string(),
        };
        let mut v = Verifier::new();
        v.update(&data).map_err(corrupt)?;
        let verified = v.finish().map_err(corrupt)?;
        if verified.meta.index != info.index || verified.meta.term != info.term {
            return Err(SnapshotError::Corrupt {
                location: loc,
                reason: format!(
                    "it holds index {} term {} but its name says index {} term {}",
                    verified.meta.index, verified.meta.term, info.index, info.term
                ),
            });
        }
        let start = verified.image_offset as usize;
        let image = Bytes::from(data).slice(start..start + verified.image_len as usize);
        Ok(LoadedSnapshot {
            meta: verified.meta,
            image,
        })
    }

    /// Opens a file to stream its raw bytes to a peer.
    pub fn reader(&self, info: &SnapshotInfo) -> Result<SnapshotReader, SnapshotError> {
        let location = self.location(info);
        let (inner, len) = self
            .backend
            .open(&info.name)
            .map_err(|e| SnapshotError::io(location.clone(), e))?;
        Ok(SnapshotReader {
            inner,
            len,
            read: 0,
            location,
            verifier: Some(Verifier::new()),
        })
    }

    /// Deletes one snapshot file (a damaged one). A reader that already opened it can
    /// finish reading it.
    pub fn remove(&self, info: &SnapshotInfo) -> Result<(), SnapshotError> {
        self.backend
            .remove(&info.name)
            .map_err(|e| SnapshotError::io(self.location(info), e))
    }

    /// Starts receiving a snapshot file from a peer. Bytes are verified as they are
    /// written; nothing is visible under a snapshot name until
    /// [`SnapshotStore::install`].
    pub fn receive(&self) -> Result<SnapshotWriter, SnapshotError> {
        let temp = self.temp()?;
        Ok(SnapshotWriter {
            location: temp.location(),
            temp,
            verifier: Verifier::new(),
        })
    }

    /// Publishes a received, verified snapshot under its name (durably).
    pub fn install(&self, staged: StagedSnapshot) -> Result<SnapshotInfo, SnapshotError> {
        let StagedSnapshot { meta, temp, .. } = staged;
        self.publish(temp, meta.index, meta.term)
    }

    /// Deletes all but the `keep` newest snapshots; returns how many were deleted.
    /// A reader that already opened a deleted file can finish reading it.
    pub fn prune(&self, keep: usize) -> Result<usize, SnapshotError> {
        let infos = self.list()?;
        let mut removed = 0;
        for info in infos.iter().skip(keep) {
            self.backend
                .remove(&info.name)
                .map_err(|e| SnapshotError::io(self.location(info), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Replaces the bytes of an in-memory file, to test corruption handling. Does
    /// nothing on a directory store (edit the file instead).
    #[doc(hidden)]
    pub fn overwrite_for_test(&self, info: &SnapshotInfo, data: Bytes) {
        if let Some(mem) = &self.mem {
            mem.overwrite(&info.name, data);
        }
    }

    /// The raw bytes of a file (tests).
    #[doc(hidden)]
    pub fn raw_for_test(&self, info: &SnapshotInfo) -> Result<Vec<u8>, SnapshotError> {
        let mut r = self.reader(info)?;
        let mut out = Vec::new();
        r.inner
            .read_to_end(&mut out)
            .map_err(|e| SnapshotError::io(r.location.clone(), e))?;
        Ok(out)
    }
}

/// Streams a snapshot file's raw bytes, for sending it to a peer.
pub struct SnapshotReader {
    inner: Box<dyn Read + Send>,
    len: u64,
    read: u64,
    location: String,
    /// Checks the bytes as they are read: the last chunk of a damaged file is not
    /// handed out; [`SnapshotReader::next_chunk`] fails with `Corrupt` instead.
    /// `None` once the whole file was read and verified.
    verifier: Option<Verifier>,
}

impl SnapshotReader {
    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never, for a valid snapshot).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next chunk of at most `max` bytes; empty at the end of the file.
    pub fn next_chunk(&mut self, max: usize) -> Result<Bytes, SnapshotError> {
        let want = usize::try_from(self.len - self.read)
            .unwrap_or(usize::MAX)
            .min(max.max(1));
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::io(self.location.clone(), e)),
            }
        }
        if filled < want {
            return Err(SnapshotError::Corrupt {
                location: self.location.clone(),
                reason: format!(
                    "file shrank to {} bytes while being read",
                    self.read + filled as u64
                ),
            });
        }
        buf.truncate(filled);
        self.read += filled as u64;
        let corrupt = |location: &str, e: FormatError| SnapshotError::Corrupt {
            location: location.to_owned(),
            reason: e.to_string(),
        };
        if let Some(v) = self.verifier.as_mut() {
            v.update(&buf).map_err(|e| corrupt(&self.location, e))?;
        }
        if self.read == self.len {
            if let Some(v) = self.verifier.take() {
                v.finish().map_err(|e| corrupt(&self.location, e))?;
            }
        }
        Ok(buf.freeze())
    }
}

/// A snapshot being received: written to a temporary file and verified chunk by
/// chunk. Dropping it deletes the temporary file.
pub struct SnapshotWriter {
    temp: Box<dyn TempFile>,
    verifier: Verifier,
    location: String,
}

impl SnapshotWriter {
    /// Appends the next chunk. Fails at once on bytes that cannot be a snapshot file
    /// (bad header, bytes past the end).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SnapshotError> {
        self.verifier.update(chunk).map_err(|e| SnapshotError::Corrupt {
            location: format!("{} (received)", self.location),
            reason: e.to_string(),
        })?;
        self.temp
            .write_all(chunk)
            .map_err(|e| SnapshotError::io(self.location.clone(), e))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.verifier.seen()
    }

    /// Checks that the file is complete and its checksum matches, and makes it durable
    /// (still under its temporary name).
    pub fn finish(mut self) -> Result<StagedSnapshot, SnapshotError> {
        let location = format!("{} (received)", self.location);
        let verified = self.verifier.finish().map_err(|e| SnapshotError::Corrupt {
            location,
            reason: e.to_string(),
        })?;
        self.temp
            .sync()
            .map_err(|e| SnapshotError::io(self.location.clone(), e))?;
        Ok(StagedSnapshot {
            meta: verified.meta,
            len: verified.file_len,
            temp: self.temp,
        })
    }
}

/// A received and verified snapshot, durable under a temporary name until
/// [`SnapshotStore::install`] publishes it. Dropping it deletes the file.
pub struct StagedSnapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The file's length.
    pub len: u64,
    temp: Box<dyn TempFile>,
}

impl std::fmt::Debug for StagedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedSnapshot")
            .field("meta", &self.meta)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
