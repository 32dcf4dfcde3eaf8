use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reconciles RealtimeApp resources into running Switchboard servers.
#[derive(Parser)]
#[command(name = "switchboard-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the RealtimeApp CustomResourceDefinition (YAML).
    Crd,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => match switchboard_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
