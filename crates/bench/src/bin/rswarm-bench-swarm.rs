//! `rswarm-bench-swarm`: rswarm against Docker Swarm on three test hosts (see `rswarm_bench::swarm`).

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = rswarm_bench::swarm::SwarmArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rswarm-bench-swarm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let mut log = std::io::stderr();
    match runtime.block_on(rswarm_bench::swarm::run(args, &mut out, &mut log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rswarm-bench-swarm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
