//! `rswarm-bench-swarm`: rswarm against Docker Swarm on three test hosts (see `rswarm_bench::swarm`).

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = rswarm_bench::swarm::SwarmArgs::parse();
    let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
    rswarm_bench::block_on_main(
        "rswarm-bench-swarm",
        rswarm_bench::swarm::run(args, &mut out, &mut log),
    )
}
