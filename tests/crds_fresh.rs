//! The CRD YAML committed under `crds/` must be exactly what the code generates.

use std::path::Path;

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let crds = conveyor::api::crds();
    let mut stale = Vec::new();
    for crd in &crds {
        let file = dir.join(conveyor::crdgen::file_name(crd));
        let expected = conveyor::crdgen::render(crd).expect("rendering a CRD");
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        if committed != expected {
            stale.push(file.display().to_string());
        }
    }
    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert!(
        stale.is_empty() && files == crds.len(),
        "crds/ is stale ({stale:?}, {files} files for {} kinds): run `cargo run -- crds --out crds/` and commit the result",
        crds.len()
    );
}
