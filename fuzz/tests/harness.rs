//! The WAL target's input format describes real segments exactly, so seeds
//! made from them start the fuzzer from real WALs.

use ferry_fuzz::wal_open::{inputs_for, options, segments};
use ferry_proto::Priority;
use ferry_wal::{NewEvent, Wal};

#[test]
fn real_segments_survive_the_input_format() {
    for encrypted in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        {
            let wal = Wal::open(options(&dir, encrypted, false)).unwrap();
            let ev = |p: &str| NewEvent {
                topic: "t".into(),
                priority: Priority::Bulk,
                payload: p.as_bytes().to_vec(),
            };
            wal.append_local_blocking(vec![ev("a"), ev("b")]).unwrap();
            wal.append_local_once_blocking("k", vec![ev("c")]).unwrap();
        }
        let segment = std::fs::read(dir.join("00000001.seg")).unwrap();
        for input in inputs_for(&segment, encrypted) {
            let (files, enc) = segments(&input).unwrap();
            assert_eq!(enc, encrypted);
            assert_eq!(files, vec![segment.clone()], "layout {}", (input[0] >> 1) & 3);
            ferry_fuzz::wal_open::run(&input);
        }
    }
}

#[test]
fn chunks_split_as_joined() {
    let parts: [&[u8]; 3] = [b"abc", b"", b"zstd"];
    let joined = ferry_fuzz::join_chunks(parts);
    assert_eq!(ferry_fuzz::split_chunks(&joined), parts.to_vec());
}
