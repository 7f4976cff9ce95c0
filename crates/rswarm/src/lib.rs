//! Home of the `rswarm`, `rswarm-manager` and `rswarm-agent` binaries and of the end-to-end tests in
//! the workspace's `tests/` directory. All logic lives in `rswarm-cli` and the crates below it.
