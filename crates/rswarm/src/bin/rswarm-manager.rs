//! `rswarm-manager`: see the `rswarm-cli` crate.

fn main() -> std::process::ExitCode {
    rswarm_cli::main_manager()
}
