//! `weftctl`: parse the command line, run it, and turn the outcome into an exit code
//! (0 ok, 1 runtime error, 2 usage error, 3 denied by `permission check`) and a single
//! `error: ...` line on stderr.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use weft_control_plane::cli::{self, Cli, CliError, EXIT_USAGE, EnvValues};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_exit(&err),
    };
    let cwd = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(e) => {
            return fail(&CliError::Runtime(format!(
                "cannot read the working directory: {e}; pass --data-dir or --token and --ca"
            )));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::Runtime(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(cli::run(cli, &EnvValues::from_process(), &cwd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &CliError) -> ExitCode {
    if !err.already_reported() {
        let _ = writeln!(std::io::stderr(), "error: {err}");
    }
    exit_code(err.exit_code())
}

/// Help and version go to stdout with exit 0. Usage errors become one line: clap's
/// message with its tips folded in, plus where to find help.
fn clap_exit(err: &clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            exit_code(EXIT_USAGE)
        }
        _ => {
            let rendered = err.render().to_string();
            let message = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect::<Vec<_>>()
                .join(" ");
            let message = message
                .trim_start_matches("error:")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(std::io::stderr(), "error: {message}; see weftctl --help");
            exit_code(EXIT_USAGE)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
