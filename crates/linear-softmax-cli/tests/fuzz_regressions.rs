//! The fuzz targets' checks (`fuzz/src/lib.rs`) on every committed input: the starting corpus
//! (`fuzz/seeds/<target>/`) and each input a fuzzer found failing, kept after the fix
//! (`fuzz/regressions/<target>/`). Fuzzing itself needs nightly (`cargo +nightly fuzz run
//! <target>`); these inputs run in every `cargo test`.

#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

/// Runs `check` on every file under `fuzz/{seeds,regressions}/<target>/`, naming the file of a
/// failure; returns how many files it ran.
fn run_inputs(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn csv_inputs() {
    assert!(run_inputs("csv", harness::csv) >= 3);
}

#[test]
fn idx_inputs() {
    assert!(run_inputs("idx", harness::idx) >= 2);
}

#[test]
fn model_dir_inputs() {
    assert!(run_inputs("model_dir", harness::model_dir) >= 2);
}

#[test]
fn targets_inputs() {
    assert!(run_inputs("targets", harness::targets) >= 7);
}
