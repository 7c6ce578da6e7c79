//! The `voxmachina` binary: parses the command line and hands over to [`voxmachina::cli`].

fn main() -> std::process::ExitCode {
    voxmachina::cli::main()
}
