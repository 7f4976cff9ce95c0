//! Repository hygiene as ordinary tests (rust-analyzer style): the architecture map names every
//! crate, and CI runs exactly the test command README.md documents.

use std::fs;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn architecture_names_every_crate() {
    let arch =
        fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let mut missing = Vec::new();
    for entry in fs::read_dir(root().join("crates")).expect("crates/") {
        let entry = entry.expect("dir entry");
        let manifest = fs::read_to_string(entry.path().join("Cargo.toml")).expect("Cargo.toml");
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("package name")
            .to_string();
        let dir = format!("crates/{}", entry.file_name().to_string_lossy());
        if !arch.contains(&format!("`{dir}` ({name})")) {
            missing.push(format!("{dir} ({name})"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md has no code-map entry \"### `crates/x` (package)\" for: {missing:?}"
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
    let ci = fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    let section = readme
        .split("## Run the whole test suite")
        .nth(1)
        .expect("README.md has a 'Run the whole test suite' section");
    let command = section
        .split("```sh")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .map(str::trim)
        .expect("that section shows the command in a ```sh block");
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run must run exactly README's test command {command:?}"
    );
}
