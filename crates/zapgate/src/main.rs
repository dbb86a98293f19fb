//! The `zapgate` binary: one executable, a subcommand per role or task.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
