//! `rswarm-shim`: the per-container shim (see `rswarm_runtime::shim` and
//! docs/rfcs/002-containers.md). Started by the agent, never by hand.

use std::io::Write;

fn main() -> std::process::ExitCode {
    let args = match rswarm_runtime::shim::ShimArgs::parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "rswarm-shim: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let code = rswarm_runtime::shim::shim_main(args);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
