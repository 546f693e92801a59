//! Every flag file flagd-testbed ships (`flags/*.json`, written for flagd itself) loads with
//! [`Validation::Lenient`], so flag files written for flagd can be served as they are.

use std::path::PathBuf;

use gauntlet_flags::{FlagSet, Validation};

#[test]
fn every_testbed_flag_file_loads_as_flagd_would() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/flagd-testbed/flags");
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut loaded = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if let Err(e) = FlagSet::from_json_with(&text, Validation::Lenient) {
            panic!("{}:\n{e}", path.display());
        }
        loaded += 1;
    }
    assert!(
        loaded >= 10,
        "only {loaded} flag files in {}",
        dir.display()
    );
}
