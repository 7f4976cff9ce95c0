//! `rswarm-bench-overlay`: iperf3 TCP over rswarm's overlay, the bare underlay and Docker Swarm's
//! overlay between two test hosts, and task RUNNING → reachable latency (see
//! `rswarm_bench::overlay`). Must run as root: it creates network namespaces, daemons and
//! containers, and removes all of them when it ends, fails or is interrupted.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let args = rswarm_bench::overlay::OverlayArgs::parse();
    let (mut out, mut log) = (std::io::stdout(), std::io::stderr());
    rswarm_bench::block_on_main(
        "rswarm-bench-overlay",
        rswarm_bench::overlay::run(args, &mut out, &mut log),
    )
}
