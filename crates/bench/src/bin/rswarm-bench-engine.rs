//! `rswarm-bench-engine`: benchmarks a node's container engine (see `rswarm_bench::engine`).

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = rswarm_bench::engine::EngineArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rswarm-bench-engine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let mut log = std::io::stderr();
    match runtime.block_on(rswarm_bench::engine::run(args, &mut out, &mut log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rswarm-bench-engine: {e:#}");
            ExitCode::FAILURE
        }
    }
}
