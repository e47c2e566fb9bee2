//! `linear-softmax`: train, compare, evaluate and predict from the command line.
//!
//! `cargo run --release` trains the linear softmax classifier on the embedded handwritten
//! digits; `--help` lists every subcommand and flag.

use std::process::ExitCode;

use clap::Parser;
use linear_softmax_cli::cli;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse()).unwrap_or_else(cli::Failure::report)
}
