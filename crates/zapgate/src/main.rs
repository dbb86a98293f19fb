//! The `zapgate` binary: one executable, a subcommand per role or task.

mod campaign;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
