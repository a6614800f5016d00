//! Inputs the fuzzers once crashed on, kept in `regressions/<target>/`, run
//! through the same code as the fuzz targets.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn run_all(target: &str, f: fn(&[u8])) -> usize {
    let inputs = inputs(target);
    for (path, bytes) in &inputs {
        eprintln!("{}", path.display());
        f(bytes);
    }
    inputs.len()
}

#[test]
fn frame_inputs() {
    run_all("frame", ferry_fuzz::frame);
}

#[test]
fn event_chunk_inputs() {
    run_all("event_chunks", ferry_fuzz::event_chunks);
}

#[test]
fn wal_open_inputs() {
    run_all("wal_open", ferry_fuzz::wal_open::run);
}

#[test]
fn replica_inputs() {
    run_all("replica", ferry_fuzz::replica);
}
