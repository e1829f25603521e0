//! Behaviour of the log stores: round trips, truncation, purging, refusal of files that
//! are not ours, crash safety of the redb store, and a model check of both stores.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use raft::core::{Entry, EntryPayload, HardState, Index, Membership, SnapshotMeta, Term};
use raft::storage::{InitialState, LogStore, MemStore, RedbStore, StorageError, WriteBatch};

// ---------------------------------------------------------------------------------------
// Helpers

fn payload(index: Index, term: Term) -> Bytes {
    Bytes::from(format!("entry {index} of term {term}").into_bytes())
}

/// An entry whose content is a function of its index and term, so that a reader can tell
/// a stale or garbled entry from the right one.
fn entry(index: Index, term: Term) -> Entry {
    let payload = match index % 11 {
        0 => EntryPayload::Noop,
        5 => EntryPayload::Membership(Membership::with_voters([1, 2, index % 7 + 3])),
        _ => EntryPayload::Normal(payload(index, term)),
    };
    Entry { term, index, payload }
}

fn entries(range: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn snapshot(index: Index, term: Term) -> SnapshotMeta {
    let mut membership = Membership::with_voters([1, 2, 3]);
    membership.learners.insert(4);
    membership.addrs.insert(
        1,
        raft::core::NodeAddr {
            raft: "10.0.0.1:7000".into(),
            client: "10.0.0.1:8000".into(),
        },
    );
    SnapshotMeta {
        index,
        term,
        membership,
    }
}

fn append(entries: Vec<Entry>) -> WriteBatch {
    WriteBatch {
        entries,
        ..Default::default()
    }
}

fn indices(state: &InitialState) -> Vec<Index> {
    state.entries.iter().map(|e| e.index).collect()
}

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("raft-log.redb")
}

/// Runs `check` against a fresh MemStore and a fresh RedbStore, so both are held to the
/// same behaviour.
fn for_both_stores(check: impl Fn(&mut dyn LogStore, &str)) {
    check(&mut MemStore::new(), "MemStore");
    let dir = tempfile::tempdir().unwrap();
    let mut store = RedbStore::open(log_path(&dir)).unwrap();
    check(&mut store, "RedbStore");
}

fn assert_names_file(err: &StorageError, path: &Path) {
    let named = match err {
        StorageError::Open { path: p, .. } | StorageError::Corrupt { path: p, .. } => p == path,
        StorageError::Io(_) | StorageError::InvalidBatch(_) => false,
    };
    assert!(
        named,
        "expected an Open/Corrupt error naming {}, got {err:?}",
        path.display()
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "message does not name the file: {err}"
    );
}

fn open_and_load(path: &Path) -> Result<InitialState, StorageError> {
    RedbStore::open(path)?.load()
}

// ---------------------------------------------------------------------------------------
// Round trips, truncation, purging

#[test]
fn reopen_round_trips_hard_state_entries_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let hard_state = HardState {
        term: 3,
        vote: Some(2),
        commit: 7,
    };
    let expected = {
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.path(), path);
        assert_eq!(store.load().unwrap(), InitialState::default());
        store
            .write(&WriteBatch {
                hard_state: Some(hard_state),
                entries: entries(1..=12, 3),
                snapshot: Some(snapshot(0, 0)),
            })
            .unwrap();
        store
            .write(&WriteBatch {
                snapshot: Some(snapshot(4, 3)),
                ..Default::default()
            })
            .unwrap();
        store.load().unwrap()
    };
    assert_eq!(expected.hard_state, hard_state);
    assert_eq!(expected.snapshot, snapshot(4, 3));
    assert_eq!(expected.entries, entries(5..=12, 3));

    let mut reopened = RedbStore::open(&path).unwrap();
    assert_eq!(reopened.load().unwrap(), expected);
    // The reopened store keeps appending where the old one stopped.
    reopened.write(&append(entries(13..=13, 4))).unwrap();
    reopened.close().unwrap();
    let state = open_and_load(&path).unwrap();
    assert_eq!(indices(&state), (5..=13).collect::<Vec<_>>());
    assert_eq!(state.last_index(), 13);
}

#[test]
fn conflicting_entries_replace_the_stored_suffix() {
    for_both_stores(|store, name| {
        store.write(&append(entries(1..=10, 1))).unwrap();
        store.write(&append(entries(6..=8, 2))).unwrap();
        let state = store.load().unwrap();
        let expected = [entries(1..=5, 1), entries(6..=8, 2)].concat();
        assert_eq!(state.entries, expected, "{name}");
    });
    // And on disk, across a reopen.
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut store = RedbStore::open(&path).unwrap();
    store.write(&append(entries(1..=10, 1))).unwrap();
    store.write(&append(entries(6..=8, 2))).unwrap();
    drop(store);
    let state = open_and_load(&path).unwrap();
    assert_eq!(state.entries, [entries(1..=5, 1), entries(6..=8, 2)].concat());
}

#[test]
fn snapshot_purges_covered_entries() {
    for_both_stores(|store, name| {
        store.write(&append(entries(1..=10, 1))).unwrap();
        store
            .write(&WriteBatch {
                snapshot: Some(snapshot(5, 1)),
                ..Default::default()
            })
            .unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.snapshot, snapshot(5, 1), "{name}");
        assert_eq!(state.entries, entries(6..=10, 1), "{name}");
        // Appending continues after the purged prefix.
        store.write(&append(entries(11..=11, 1))).unwrap();
        assert_eq!(indices(&store.load().unwrap()), (6..=11).collect::<Vec<_>>());
    });
}

#[test]
fn snapshot_contradicting_the_log_discards_it() {
    for_both_stores(|store, name| {
        store.write(&append(entries(1..=10, 1))).unwrap();
        // The leader's snapshot says index 5 has term 2: our entries after it are stale.
        store
            .write(&WriteBatch {
                snapshot: Some(snapshot(5, 2)),
                ..Default::default()
            })
            .unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.snapshot, snapshot(5, 2), "{name}");
        assert!(state.entries.is_empty(), "{name}: {:?}", indices(&state));
        // A snapshot beyond the log, installed together with the entries after it.
        store
            .write(&WriteBatch {
                snapshot: Some(snapshot(20, 3)),
                entries: entries(21..=23, 3),
                hard_state: Some(HardState {
                    term: 3,
                    vote: None,
                    commit: 20,
                }),
            })
            .unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.snapshot.index, 20, "{name}");
        assert_eq!(state.entries, entries(21..=23, 3), "{name}");
        assert_eq!(state.hard_state.commit, 20, "{name}");
    });
}

#[test]
fn invalid_batches_are_refused_and_change_nothing() {
    for_both_stores(|store, name| {
        store.write(&append(entries(1..=10, 1))).unwrap();
        store
            .write(&WriteBatch {
                snapshot: Some(snapshot(3, 1)),
                ..Default::default()
            })
            .unwrap();
        let before = store.load().unwrap();
        let with_hard_state = |entries: Vec<Entry>, snapshot: Option<SnapshotMeta>| WriteBatch {
            hard_state: Some(HardState {
                term: 9,
                vote: Some(9),
                commit: 9,
            }),
            entries,
            snapshot,
        };
        let bad = [
            // Not contiguous.
            with_hard_state(vec![entry(11, 1), entry(13, 1)], None),
            // Out of order.
            with_hard_state(vec![entry(8, 2), entry(7, 2)], None),
            // A gap after the stored log.
            with_hard_state(entries(12..=14, 1), None),
            // At or below the snapshot point.
            with_hard_state(entries(3..=5, 2), None),
            // A snapshot older than the stored one.
            with_hard_state(vec![], Some(snapshot(2, 1))),
            // The stored snapshot point with another term.
            with_hard_state(vec![], Some(snapshot(3, 2))),
            // Entries overlapping the snapshot sent with them.
            with_hard_state(entries(6..=9, 1), Some(snapshot(7, 1))),
        ];
        for batch in &bad {
            let err = store.write(batch).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidBatch(_)),
                "{name}: {batch:?} gave {err:?}"
            );
            assert_eq!(store.load().unwrap(), before, "{name}: {batch:?}");
        }
        // The store still works afterwards.
        store.write(&append(entries(11..=11, 1))).unwrap();
        assert_eq!(store.load().unwrap().last_index(), 11, "{name}");
    });
}

// ---------------------------------------------------------------------------------------
// Files that are not ours

#[test]
fn garbage_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&path, &garbage).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert_names_file(&err, &path);
    // The file is left as it was.
    assert_eq!(fs::read(&path).unwrap(), garbage);

    // Short garbage too, and text.
    fs::write(&path, b"hello, I am not a database\n").unwrap();
    assert_names_file(&RedbStore::open(&path).unwrap_err(), &path);
}

#[test]
fn empty_file_and_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    fs::write(&path, b"").unwrap();
    assert_names_file(&RedbStore::open(&path).unwrap_err(), &path);
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_names_file(&RedbStore::open(dir.path()).unwrap_err(), dir.path());
}

#[test]
fn truncated_store_is_refused_not_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    {
        let mut store = RedbStore::open(&path).unwrap();
        for i in 0..20u64 {
            store
                .write(&WriteBatch {
                    entries: entries(i * 50 + 1..=i * 50 + 50, 1),
                    hard_state: Some(HardState {
                        term: 1,
                        vote: Some(1),
                        commit: i * 50,
                    }),
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let full = fs::read(&path).unwrap();
    assert!(full.len() > 8192, "store unexpectedly small: {}", full.len());
    // Half, as asked, and a few other cuts: inside the header, and just short of the end.
    for len in [full.len() / 2, 100, 4096, full.len() / 4, full.len() - 1] {
        fs::write(&path, &full[..len]).unwrap();
        match open_and_load(&path) {
            Err(err) => assert_names_file(&err, &path),
            Ok(state) => panic!(
                "a store truncated to {len} of {} bytes loaded {} entries",
                full.len(),
                state.entries.len()
            ),
        }
    }
    // The intact file is still fine.
    fs::write(&path, &full).unwrap();
    assert_eq!(open_and_load(&path).unwrap().last_index(), 1000);
}

#[test]
fn flipped_bytes_are_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let original = {
        let mut store = RedbStore::open(&path).unwrap();
        for i in 0..10u64 {
            store
                .write(&WriteBatch {
                    entries: entries(i * 40 + 1..=i * 40 + 40, 1 + i / 3),
                    hard_state: Some(HardState {
                        term: 1 + i / 3,
                        vote: Some(2),
                        commit: i * 40,
                    }),
                    snapshot: (i == 5).then(|| snapshot(100, 1)),
                })
                .unwrap();
        }
        store.load().unwrap()
    };
    let full = fs::read(&path).unwrap();
    // Densely through the headers, then one byte in every page or so.
    let positions = (0..4096).step_by(97).chain((4096..full.len()).step_by(4099));
    let (mut detected, mut harmless) = (0, 0);
    for pos in positions {
        let mut damaged = full.clone();
        damaged[pos] ^= 0x5a;
        fs::write(&path, &damaged).unwrap();
        match open_and_load(&path) {
            Err(err) => {
                assert_names_file(&err, &path);
                detected += 1;
            }
            Ok(state) => {
                assert_eq!(state, original, "flipping byte {pos} changed what loads");
                harmless += 1;
            }
        }
    }
    // Some flips land in used pages and headers, others in free space.
    assert!(
        detected > 0 && harmless > 0,
        "{detected} detected, {harmless} harmless"
    );
}

#[test]
fn foreign_redb_databases_are_refused() {
    use redb::TableDefinition;
    let dir = tempfile::tempdir().unwrap();

    // Someone else's database, with its own tables.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let accounts: TableDefinition<&str, u64> = TableDefinition::new("accounts");
            txn.open_table(accounts).unwrap().insert("alice", 10).unwrap();
        }
        txn.commit().unwrap();
    }
    assert_names_file(&RedbStore::open(&other).unwrap_err(), &other);

    // A redb database with no tables at all.
    let blank = dir.path().join("blank.redb");
    drop(redb::Database::create(&blank).unwrap());
    assert_names_file(&RedbStore::open(&blank).unwrap_err(), &blank);

    // Tables with our names but other types.
    let typed = dir.path().join("typed.redb");
    {
        let db = redb::Database::create(&typed).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: TableDefinition<u64, u64> = TableDefinition::new("meta");
            txn.open_table(meta).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    assert_names_file(&RedbStore::open(&typed).unwrap_err(), &typed);

    // Our table layout without the format marker.
    let unmarked = dir.path().join("unmarked.redb");
    {
        let db = redb::Database::create(&unmarked).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
            let log: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
            txn.open_table(meta)
                .unwrap()
                .insert("hard_state", &[1u8, 0, 0][..])
                .unwrap();
            txn.open_table(log).unwrap();
        }
        txn.commit().unwrap();
    }
    assert_names_file(&RedbStore::open(&unmarked).unwrap_err(), &unmarked);
}

type LogTable<'txn> = redb::Table<'txn, u64, &'static [u8]>;

#[test]
fn damaged_log_values_are_reported_with_their_index() {
    use redb::TableDefinition;
    let log: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let build = || {
        let _ = fs::remove_file(&path);
        let mut store = RedbStore::open(&path).unwrap();
        store.write(&append(entries(1..=10, 1))).unwrap();
    };
    let tamper = |f: &dyn Fn(&mut LogTable)| {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        f(&mut txn.open_table(log).unwrap());
        txn.commit().unwrap();
    };
    let expect_corrupt = |needle: &str| {
        let err = open_and_load(&path).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
        assert_names_file(&err, &path);
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    };

    build();
    tamper(&|t| {
        t.insert(7, &[0xff, 0xff, 0xff][..]).unwrap();
    });
    expect_corrupt("index 7");

    build();
    tamper(&|t| {
        t.remove(4).unwrap();
    });
    expect_corrupt("index 4");

    build();
    let misplaced = postcard::to_stdvec(&entry(9, 1)).unwrap();
    tamper(&|t| {
        t.insert(3, misplaced.as_slice()).unwrap();
    });
    expect_corrupt("index 3");

    build();
    let mut trailing = postcard::to_stdvec(&entry(5, 1)).unwrap();
    trailing.push(0);
    tamper(&|t| {
        t.insert(5, trailing.as_slice()).unwrap();
    });
    expect_corrupt("index 5");
}

#[test]
fn a_log_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let _first = RedbStore::open(&path).unwrap();
    assert_names_file(&RedbStore::open(&path).unwrap_err(), &path);
}

#[test]
fn creation_ignores_a_stale_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let stale = dir.path().join("raft-log.redb.creating");
    fs::write(&stale, b"left over by a crash").unwrap();
    let mut store = RedbStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), InitialState::default());
    assert!(!stale.exists());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["raft-log.redb"]);
}

// ---------------------------------------------------------------------------------------
// Crash safety: a writer process killed with SIGKILL loses nothing it reported durable.

const CRASH_CHILD_ENV: &str = "RAFT_STORAGE_TEST_CRASH_WRITER";
const CRASH_TEST_NAME: &str = "killed_writer_keeps_every_reported_write";

/// What the child prints after each durable write.
#[derive(Clone, Copy, Debug)]
struct Reported {
    last_index: Index,
    last_term: Term,
    commit: Index,
}

/// The child: continues the log at `path` (new or left by an earlier child), writing
/// batches in a loop (appends of varying size, overwrites of the tail with a newer term,
/// snapshots) and printing what is durable after each write returns.
fn crash_writer(path: &Path) {
    let mut store = RedbStore::open(path).expect("child: open");
    let state = store.load().expect("child: load");
    let mut snap_index = state.snapshot.index;
    // terms[i] is the term of entry snap_index + 1 + i.
    let mut terms: Vec<Term> = state.entries.iter().map(|e| e.term).collect();
    let mut term = terms
        .last()
        .copied()
        .unwrap_or(state.snapshot.term)
        .max(state.hard_state.term)
        .max(1);
    let started = Instant::now();
    // Bounded in case the parent died without killing us.
    for round in 0u64..100_000 {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let last = snap_index + terms.len() as Index;
        let from = if round % 7 == 6 && terms.len() >= 3 {
            term += 1;
            last - 2
        } else {
            last + 1
        };
        let count = 1 + round % 8;
        terms.truncate((from - snap_index - 1) as usize);
        terms.extend(std::iter::repeat_n(term, count as usize));
        let last = snap_index + terms.len() as Index;
        let mut batch = WriteBatch {
            entries: entries(from..=last, term),
            hard_state: Some(HardState {
                term,
                vote: Some(1),
                commit: last - 1,
            }),
            snapshot: None,
        };
        if round % 10 == 9 && terms.len() > 30 {
            let keep = 30;
            let new_snap = last - keep;
            let snap_term = terms[(new_snap - snap_index - 1) as usize];
            terms.drain(..(new_snap - snap_index) as usize);
            snap_index = new_snap;
            batch.snapshot = Some(snapshot(snap_index, snap_term));
        }
        store.write(&batch).expect("child: write");
        println!("DURABLE {last} {term} {}", last - 1);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one child on `path` until it has reported `writes` durable writes (or 10 s have
/// passed), SIGKILLs it, and returns everything it reported.
fn run_and_kill_writer(path: &Path, writes: usize) -> Vec<Reported> {
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([CRASH_TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_ENV, path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(rest) = line.strip_prefix("DURABLE ") else {
                continue;
            };
            let n: Vec<u64> = rest.split(' ').map(|s| s.parse().unwrap()).collect();
            let reported = Reported {
                last_index: n[0],
                last_term: n[1],
                commit: n[2],
            };
            if tx.send(reported).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut reported = Vec::new();
    while reported.len() < writes {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => reported.push(r),
            Err(_) => break,
        }
    }
    // SIGKILL mid-run: the child is busy writing the next batch.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child finished before it was killed");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the child did not die of SIGKILL (did it fail?): {status}"
        );
    }
    // Whatever it printed before dying was durable too.
    reader.join().unwrap();
    reported.extend(rx.try_iter());
    assert!(
        !reported.is_empty(),
        "the child reported no durable write within 10s"
    );
    reported
}

#[test]
fn killed_writer_keeps_every_reported_write() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_writer(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    // Several kills, each child recovering the log the previous one left; the differing
    // counts move the kill to different points of the write cycle.
    for writes in [50, 37, 61] {
        let reported = run_and_kill_writer(&path, writes);
        let state = open_and_load(&path).expect("reopen after SIGKILL");
        // load() already checked contiguity, placement after the snapshot and decoding.
        let last_reported = *reported.last().unwrap();
        let max_index = reported.iter().map(|r| r.last_index).max().unwrap();
        eprintln!(
            "crash test: {} writes reported durable, up to index {max_index}; {} found \
             after the kill (snapshot at {})",
            reported.len(),
            state.last_index(),
            state.snapshot.index
        );
        assert!(
            state.last_index() >= max_index,
            "reported durable up to {max_index}, found {} after the crash",
            state.last_index(),
        );
        assert!(state.hard_state.commit >= last_reported.commit);
        assert!(state.hard_state.term >= last_reported.last_term);
        // Every reported index is still covered, by the snapshot or by an entry whose term
        // is at least the one reported for it.
        for r in &reported {
            if r.last_index > state.snapshot.index {
                let e = &state.entries[(r.last_index - state.snapshot.index - 1) as usize];
                assert!(e.term >= r.last_term, "entry {} lost its term", r.last_index);
            }
        }
        // The content is exactly what the child wrote, and terms never go down.
        let mut prev_term = state.snapshot.term;
        for e in &state.entries {
            assert_eq!(*e, entry(e.index, e.term), "entry {} is garbled", e.index);
            assert!(e.term >= prev_term, "term goes down at index {}", e.index);
            prev_term = e.term;
        }
    }
    // And the log is writable after recovery.
    let mut store = RedbStore::open(&path).unwrap();
    let state = store.load().unwrap();
    let next = state.last_index() + 1;
    store
        .write(&append(entries(next..=next, state.hard_state.term)))
        .unwrap();
    assert_eq!(store.load().unwrap().last_index(), next);
}

// ---------------------------------------------------------------------------------------
// Model check: both stores against a plain Vec model, with reopens in between.

#[derive(Clone, Debug, Default)]
struct Model {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
}

impl Model {
    fn last(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entries.iter().find(|e| e.index == index).map(|e| e.term)
    }

    fn state(&self) -> InitialState {
        InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
        }
    }

    /// The contract, written out plainly. Returns whether the batch is valid.
    fn apply(&mut self, batch: &WriteBatch) -> bool {
        let mut next = self.clone();
        if let Some(snap) = &batch.snapshot {
            if snap.index < next.snapshot.index
                || (snap.index == next.snapshot.index && snap.term != next.snapshot.term)
            {
                return false;
            }
            if snap.index > next.snapshot.index {
                let agrees = next
                    .entries
                    .iter()
                    .any(|e| e.index == snap.index && e.term == snap.term);
                if agrees {
                    next.entries.retain(|e| e.index > snap.index);
                } else {
                    next.entries.clear();
                }
            }
            next.snapshot = snap.clone();
        }
        if let Some(first) = batch.entries.first() {
            if first.index <= next.snapshot.index || first.index > next.last() + 1 {
                return false;
            }
            if batch.entries.iter().zip(first.index..).any(|(e, i)| e.index != i) {
                return false;
            }
            next.entries.retain(|e| e.index < first.index);
            next.entries.extend(batch.entries.iter().cloned());
        }
        if let Some(hs) = batch.hard_state {
            next.hard_state = hs;
        }
        *self = next;
        true
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        count: u64,
        new_term: bool,
        vote: Option<u64>,
    },
    OverwriteTail {
        back: u64,
        count: u64,
    },
    Snapshot {
        /// Where, as a percentage of the way from the stored snapshot to the log's end.
        percent: u64,
        beyond: u64,
        conflicting: bool,
        then_append: u64,
    },
    HardState {
        vote: Option<u64>,
        commit_percent: u64,
    },
    Invalid {
        kind: u8,
    },
    Reopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..6u64, any::<bool>(), proptest::option::of(1..4u64))
            .prop_map(|(count, new_term, vote)| Op::Append { count, new_term, vote }),
        2 => (0..6u64, 1..5u64).prop_map(|(back, count)| Op::OverwriteTail { back, count }),
        2 => (0..=100u64, prop_oneof![3 => Just(0u64), 1 => 1..4u64], any::<bool>(), 0..3u64)
            .prop_map(|(percent, beyond, conflicting, then_append)| Op::Snapshot {
                percent,
                beyond,
                conflicting,
                then_append,
            }),
        1 => (proptest::option::of(1..4u64), 0..=100u64)
            .prop_map(|(vote, commit_percent)| Op::HardState { vote, commit_percent }),
        1 => (0..4u8).prop_map(|kind| Op::Invalid { kind }),
        1 => Just(Op::Reopen),
    ]
}

/// Turns an op into a concrete batch for the current model state.
fn resolve(op: &Op, model: &Model, term: &mut Term) -> WriteBatch {
    let last = model.last();
    match *op {
        Op::Append {
            count,
            new_term,
            vote,
        } => {
            if new_term {
                *term += 1;
            }
            WriteBatch {
                entries: entries(last + 1..=last + count, *term),
                hard_state: vote.map(|v| HardState {
                    term: *term,
                    vote: Some(v),
                    commit: last,
                }),
                snapshot: None,
            }
        }
        Op::OverwriteTail { back, count } => {
            *term += 1;
            let from = last.saturating_sub(back).max(model.snapshot.index + 1);
            append(entries(from..=from + count - 1, *term))
        }
        Op::Snapshot {
            percent,
            beyond,
            conflicting,
            then_append,
        } => {
            let base = model.snapshot.index;
            let index = base + (last - base) * percent / 100 + beyond;
            let snap_term = if index == base {
                model.snapshot.term
            } else if conflicting || model.term_at(index).is_none() {
                *term += 1;
                *term
            } else {
                model.term_at(index).unwrap_or(0)
            };
            let snap = snapshot(index, snap_term);
            let mut probe = model.clone();
            let only_snapshot = WriteBatch {
                snapshot: Some(snap.clone()),
                ..Default::default()
            };
            assert!(probe.apply(&only_snapshot), "generated an invalid snapshot");
            let from = probe.last() + 1;
            WriteBatch {
                snapshot: Some(snap),
                entries: (from..from + then_append).map(|i| entry(i, *term)).collect(),
                hard_state: None,
            }
        }
        Op::HardState { vote, commit_percent } => WriteBatch {
            hard_state: Some(HardState {
                term: *term,
                vote,
                commit: last * commit_percent / 100,
            }),
            ..Default::default()
        },
        Op::Invalid { kind } => {
            let hard_state = Some(HardState {
                term: 99,
                vote: Some(99),
                commit: 99,
            });
            let snap = &model.snapshot;
            match kind {
                0 => WriteBatch {
                    entries: entries(last + 2..=last + 3, *term),
                    hard_state,
                    snapshot: None,
                },
                1 => WriteBatch {
                    entries: vec![entry(last + 1, *term), entry(last + 3, *term)],
                    hard_state,
                    snapshot: None,
                },
                2 => WriteBatch {
                    entries: entries(snap.index..=snap.index + 1, *term),
                    hard_state,
                    snapshot: None,
                },
                _ => WriteBatch {
                    snapshot: Some(if snap.index > 0 {
                        snapshot(snap.index - 1, snap.term)
                    } else {
                        snapshot(0, snap.term + 1)
                    }),
                    hard_state,
                    entries: vec![],
                },
            }
        }
        Op::Reopen => WriteBatch::default(),
    }
}

fn run_model_check(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = log_path(&dir);
    let mut redb = RedbStore::open(&path).unwrap();
    let mut mem = MemStore::new();
    let mut model = Model::default();
    let mut term: Term = 1;
    for (step, op) in ops.iter().enumerate() {
        if let Op::Reopen = op {
            drop(redb);
            redb = RedbStore::open(&path).unwrap();
            mem = mem.clone();
        } else {
            let batch = resolve(op, &model, &mut term);
            let valid = model.apply(&batch);
            let from_mem = mem.write(&batch);
            let from_redb = redb.write(&batch);
            if valid {
                prop_assert!(from_mem.is_ok(), "step {step}: MemStore {from_mem:?}");
                prop_assert!(from_redb.is_ok(), "step {step}: RedbStore {from_redb:?}");
            } else {
                prop_assert!(
                    matches!(from_mem, Err(StorageError::InvalidBatch(_))),
                    "step {step}: MemStore accepted {batch:?}: {from_mem:?}"
                );
                prop_assert!(
                    matches!(from_redb, Err(StorageError::InvalidBatch(_))),
                    "step {step}: RedbStore accepted {batch:?}: {from_redb:?}"
                );
            }
        }
        let expected = model.state();
        prop_assert_eq!(&mem.load().unwrap(), &expected, "step {}: MemStore", step);
        prop_assert_eq!(&redb.load().unwrap(), &expected, "step {}: RedbStore", step);
    }
    drop(redb);
    prop_assert_eq!(open_and_load(&path).unwrap(), model.state());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn stores_agree_with_the_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run_model_check(&ops)?;
    }
}
