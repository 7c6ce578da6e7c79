//! The call simulator at scale: runs seeded random histories of the call state machine
//! (`tests/support/sim.rs`) and prints histories per second. A failing seed prints its shrunk
//! history, input trace and replay command, and the process exits 1.
//!
//! `cargo bench --bench simulate -- --seed 0 --histories 1000000` (docs/simulation.md).

use std::time::Instant;

use clap::Parser;

#[path = "../tests/support/sim.rs"]
mod sim;

/// Runs seeded histories of the call state machine.
#[derive(Parser)]
struct Args {
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of histories (seeds `seed..seed+histories`).
    #[arg(long, default_value_t = 100_000)]
    histories: u64,
    /// Print the input trace of every history (use with `--histories 1`).
    #[arg(long)]
    verbose: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let (mut inputs, mut checks) = (0u64, 0u64);
    for seed in args.seed..args.seed.saturating_add(args.histories) {
        let h = sim::generate(seed);
        if args.verbose {
            match sim::run(&h, true) {
                Ok(s) => println!(
                    "seed {seed}: ok ({} inputs, {} checks)\n{:?}",
                    s.inputs, s.checks, h
                ),
                Err(f) => println!("{}", sim::report(&h, &f)),
            }
        }
        match sim::run_and_shrink(&h) {
            Ok(s) => {
                inputs += s.inputs;
                checks += s.checks;
            }
            Err((h, f)) => {
                eprintln!("{}", sim::report(&h, &f));
                std::process::exit(1);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} histories from seed {} in {secs:.2} s: {:.0} histories/s, {inputs} inputs, {checks} invariant checks, no violation",
        args.histories,
        args.seed,
        args.histories as f64 / secs.max(1e-9),
    );
}
