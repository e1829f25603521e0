use super::*;
use crate::core::Membership;

fn meta(index: Index, term: Term) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: Membership::with_voters([1, 2, 3]),
    }
}

fn image(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn stores() -> Vec<(SnapshotStore, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let file = SnapshotStore::open_dir(dir.path().join("snaps")).unwrap();
    vec![(file, Some(dir)), (SnapshotStore::in_memory(), None)]
}

#[test]
fn saved_snapshots_load_back_newest_first() {
    for (store, _dir) in stores() {
        store.save(&meta(10, 1), &image(1000, 1)).unwrap();
        store.save(&meta(30, 2), &image(3000, 3)).unwrap();
        store.save(&meta(20, 2), &image(2000, 2)).unwrap();
        let list = store.list().unwrap();
        let idx: Vec<Index> = list.iter().map(|i| i.index).collect();
        assert_eq!(idx, vec![30, 20, 10]);
        let loaded = store.load(&list[0]).unwrap();
        assert_eq!(loaded.meta, meta(30, 2));
        assert_eq!(&loaded.image[..], &image(3000, 3)[..]);
        assert_eq!(store.prune(2).unwrap(), 1);
        let idx: Vec<Index> = store.list().unwrap().iter().map(|i| i.index).collect();
        assert_eq!(idx, vec![30, 20], "the two newest are kept");
    }
}

#[test]
fn a_flipped_byte_on_disk_is_reported_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_dir(dir.path()).unwrap();
    let info = store.save(&meta(5, 1), &image(10_000, 9)).unwrap();
    let path = dir.path().join(info.name());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = store.load(&info).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(info.name()), "the error names the file: {msg}");
    assert!(msg.contains("checksum"), "{msg}");
}

#[test]
fn a_truncated_file_is_reported() {
    for (store, _dir) in stores() {
        let info = store.save(&meta(5, 1), &image(10_000, 9)).unwrap();
        let raw = store.raw_for_test(&info).unwrap();
        let short = Bytes::copy_from_slice(&raw[..raw.len() - 100]);
        if let Some(dir) = &_dir {
            std::fs::write(dir.path().join("snaps").join(info.name()), &short).unwrap();
        } else {
            store.overwrite_for_test(&info, short);
        }
        let msg = store.load(&info).unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains(info.name()), "{msg}");
    }
}

#[test]
fn a_reader_hands_out_a_good_file_whole_and_refuses_the_end_of_a_damaged_one() {
    for (store, dir) in stores() {
        let info = store.save(&meta(7, 2), &image(50_000, 3)).unwrap();
        let raw = store.raw_for_test(&info).unwrap();
        let mut r = store.reader(&info).unwrap();
        let mut read = Vec::new();
        loop {
            let c = r.next_chunk(4096).unwrap();
            if c.is_empty() {
                break;
            }
            read.extend_from_slice(&c);
        }
        assert_eq!(read, raw, "a good file is streamed as stored");

        let mut bad = raw.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        match &dir {
            Some(d) => std::fs::write(d.path().join("snaps").join(info.name()), &bad).unwrap(),
            None => store.overwrite_for_test(&info, Bytes::from(bad)),
        }
        let mut r = store.reader(&info).unwrap();
        let mut sent = 0;
        let err = loop {
            match r.next_chunk(4096) {
                Ok(c) if c.is_empty() => panic!("a damaged file was streamed to its end"),
                Ok(c) => sent += c.len(),
                Err(e) => break e,
            }
        };
        assert!(sent < raw.len(), "the last chunk is withheld");
        let msg = err.to_string();
        assert!(msg.contains(info.name()), "{msg}");
    }
}

#[test]
fn a_file_whose_name_disagrees_with_its_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_dir(dir.path()).unwrap();
    let info = store.save(&meta(5, 1), b"img").unwrap();
    let other = SnapshotInfo::name_for(6, 1);
    std::fs::rename(dir.path().join(info.name()), dir.path().join(&other)).unwrap();
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    let msg = store.load(&list[0]).unwrap_err().to_string();
    assert!(msg.contains("name says index 6"), "{msg}");
}

#[test]
fn a_received_file_is_verified_chunk_by_chunk_then_installed() {
    for (src, _d1) in stores() {
        for (dst, _d2) in stores() {
            let info = src.save(&meta(77, 4), &image(100_000, 7)).unwrap();
            let mut reader = src.reader(&info).unwrap();
            let total = reader.len();
            let mut w = dst.receive().unwrap();
            loop {
                let chunk = reader.next_chunk(4096).unwrap();
                if chunk.is_empty() {
                    break;
                }
                w.write(&chunk).unwrap();
            }
            assert_eq!(w.written(), total);
            assert!(dst.list().unwrap().is_empty(), "nothing visible before install");
            let staged = w.finish().unwrap();
            assert_eq!(staged.meta, meta(77, 4));
            let installed = dst.install(staged).unwrap();
            assert_eq!(installed, info);
            let loaded = dst.load(&installed).unwrap();
            assert_eq!(&loaded.image[..], &image(100_000, 7)[..]);
        }
    }
}

#[test]
fn a_damaged_or_incomplete_transfer_is_refused_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_dir(dir.path()).unwrap();
    let info = store.save(&meta(9, 2), &image(50_000, 1)).unwrap();
    let raw = store.raw_for_test(&info).unwrap();
    let count = || std::fs::read_dir(dir.path()).unwrap().count();

    // Damaged in the middle.
    let mut bad = raw.clone();
    bad[20_000] ^= 0x10;
    let mut w = store.receive().unwrap();
    w.write(&bad).unwrap();
    let err = w.finish().unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(count(), 1, "the partial file is removed");

    // Cut short.
    let mut w = store.receive().unwrap();
    w.write(&raw[..raw.len() / 2]).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("truncated"));

    // Abandoned mid-way.
    let mut w = store.receive().unwrap();
    w.write(&raw[..100]).unwrap();
    drop(w);
    assert_eq!(count(), 1);

    // Garbage from the first byte.
    let mut w = store.receive().unwrap();
    assert!(w.write(b"not a snapshot at all").is_err());
}

#[test]
fn opening_a_directory_removes_partial_files_of_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open_dir(dir.path()).unwrap();
    store.save(&meta(3, 1), b"x").unwrap();
    std::fs::write(dir.path().join("incoming-1-0.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("unrelated.txt"), b"keep").unwrap();
    let store = SnapshotStore::open_dir(dir.path()).unwrap();
    assert!(!dir.path().join("incoming-1-0.tmp").exists());
    assert!(dir.path().join("unrelated.txt").exists());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let err = SnapshotStore::open_dir(file.join("snaps")).unwrap_err();
    assert!(err.to_string().contains("plain-file"), "{err}");
}
