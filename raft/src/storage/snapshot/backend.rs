//! Where snapshot files live: a directory (production) or memory (tests). Both
//! publish a file atomically under its final name only once it is complete.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Suffix of files being written; they are removed when a store is opened.
pub(super) const TEMP_SUFFIX: &str = ".tmp";

/// A file store's primitives.
pub(super) trait Backend: Send + Sync + 'static {
    /// Names of the published files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A new, empty file that no reader sees until it is published.
    fn create_temp(&self) -> io::Result<Box<dyn TempFile>>;
    /// Reads a published file from its start.
    fn open(&self, name: &str) -> io::Result<(Box<dyn Read + Send>, u64)>;
    /// Deletes a published file (readers that already opened it keep reading).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// How to name the file in messages.
    fn location(&self, name: &str) -> String;
}

/// A file being written.
pub(super) trait TempFile: Send {
    /// Appends bytes.
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
    /// Makes the file durable and visible under `name`, replacing any file of that
    /// name, atomically (rename, then fsync of the directory).
    fn publish(self: Box<Self>, name: &str) -> io::Result<()>;
    /// How to name the file in messages.
    fn location(&self) -> String;
}

// ----------------------------------------------------------------- directory

pub(super) struct DirBackend {
    dir: PathBuf,
    counter: AtomicU64,
}

impl DirBackend {
    /// Opens (creating if needed) `dir`, removing leftovers of interrupted writes.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(TEMP_SUFFIX) {
                let path = entry.path();
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a partial snapshot file");
                }
            }
        }
        Ok(DirBackend {
            dir: dir.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }
}

/// Makes a rename or removal in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing here; renames are as durable as the
/// platform makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

impl Backend for DirBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create_temp(&self) -> io::Result<Box<dyn TempFile>> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("incoming-{}-{n}{TEMP_SUFFIX}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        Ok(Box::new(DirTemp {
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            path,
            dir: self.dir.clone(),
            published: false,
        }))
    }

    fn open(&self, name: &str) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let file = File::open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        Ok((Box::new(file), len))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        sync_dir(&self.dir)
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

struct DirTemp {
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
    dir: PathBuf,
    published: bool,
}

impl DirTemp {
    fn file(&mut self) -> io::Result<&mut io::BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot file already closed"))
    }
}

impl TempFile for DirTemp {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file()?.write_all(data)
    }

    fn sync(&mut self) -> io::Result<()> {
        let f = self.file()?;
        f.flush()?;
        f.get_ref().sync_all()
    }

    fn publish(mut self: Box<Self>, name: &str) -> io::Result<()> {
        self.sync()?;
        self.file = None;
        fs::rename(&self.path, self.dir.join(name))?;
        self.published = true;
        sync_dir(&self.dir)
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for DirTemp {
    fn drop(&mut self) {
        if !self.published {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

// ----------------------------------------------------------------- memory

#[derive(Default)]
pub(super) struct MemBackend {
    files: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl MemBackend {
    fn files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces a published file's bytes (tests of corruption).
    pub(super) fn overwrite(&self, name: &str, data: Bytes) {
        self.files().insert(name.to_string(), data);
    }
}

impl Backend for MemBackend {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files().keys().cloned().collect())
    }

    fn create_temp(&self) -> io::Result<Box<dyn TempFile>> {
        Ok(Box::new(MemTemp {
            data: Vec::new(),
            files: self.files.clone(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let data = self
            .files()
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no snapshot {name}")))?;
        let len = data.len() as u64;
        Ok((Box::new(io::Cursor::new(data)), len))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no snapshot {name}")))
    }

    fn location(&self, name: &str) -> String {
        format!("memory:{name}")
    }
}

struct MemTemp {
    data: Vec<u8>,
    files: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl TempFile for MemTemp {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn publish(self: Box<Self>, name: &str) -> io::Result<()> {
        let MemTemp { data, files } = *self;
        files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Bytes::from(data));
        Ok(())
    }

    fn location(&self) -> String {
        "memory:(incoming)".into()
    }
}
