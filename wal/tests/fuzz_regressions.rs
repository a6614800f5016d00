//! The WAL fuzz target's saved inputs (`fuzz/regressions/wal_open/`), run
//! through the target's own code, so `cargo test -p ferry-wal` keeps every
//! recovery bug the fuzzer found fixed.

#[allow(dead_code)] // the seed helpers are for the fuzz crate
#[path = "../../fuzz/src/wal_open.rs"]
mod wal_open;

#[test]
fn inputs_the_fuzzer_found() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/wal_open");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|x| x != "md"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no saved inputs in {}", dir.display());
    for path in &inputs {
        eprintln!("{}", path.display());
        wal_open::run(&std::fs::read(path).unwrap());
    }
    println!("{} saved inputs", inputs.len());
}
