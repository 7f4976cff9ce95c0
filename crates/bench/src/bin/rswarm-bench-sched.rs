//! `rswarm-bench-sched`: scheduler throughput with simulated agents (see `rswarm_bench::sched`).

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = rswarm_bench::sched::SchedArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rswarm-bench-sched: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let mut log = std::io::stderr();
    match runtime.block_on(rswarm_bench::sched::run(args, &mut out, &mut log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rswarm-bench-sched: {e:#}");
            ExitCode::FAILURE
        }
    }
}
