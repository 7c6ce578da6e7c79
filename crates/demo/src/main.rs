//! `voxmachina-demo`: a whole phone call, offline, against the local OpenAI emulator
//! (`voxmachina-emulator`) and the real controller. See [`demo`] for what each mode plays.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Plays a whole phone call offline against a local OpenAI SIP emulator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Keys can be overridden with VOXMACHINA_<SECTION>__<KEY>.
    #[arg(long, short, env = "VOXMACHINA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    args: demo::DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(demo::run(cli.config, cli.args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
