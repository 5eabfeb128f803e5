//! `weftctl`, the command-line client of the control plane's admin API.
//!
//! Files, one concern each: [`args`] (syntax), [`options`] (where the URL, token and
//! CA come from), [`connect`] (the authenticated TLS channel), [`commands`] (what each
//! command sends; [`authz`] for permissions, the mesh policy and revocation, with their
//! views), [`views`], [`traffic`] and [`output`] (how results print), [`error`] (messages
//! and exit codes). [`connect::connect_admin`] is reusable by tests and tools.

pub mod args;
pub mod authz;
pub mod commands;
pub mod connect;
pub mod error;
pub mod options;
pub mod output;
pub mod traffic;
pub mod views;

use std::path::Path;

pub use args::{Cli, OutputFormat};
pub use connect::{AdminConn, BearerAuth, ConnectOptions, connect_admin};
pub use error::{CliError, EXIT_DENIED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
pub use options::{EnvValues, resolve};

/// Runs a parsed command line: check the arguments, find the credentials, connect,
/// then do the command. `env` and `cwd` are passed in so callers decide where
/// configuration comes from.
pub async fn run(cli: Cli, env: &EnvValues, cwd: &Path) -> Result<(), CliError> {
    commands::preflight(&cli.command)?;
    let opts = options::resolve(&cli.global, env, cwd)?;
    let mut client = connect_admin(&opts).await?;
    commands::execute(&mut client, &opts, cli.command, cli.global.output).await
}
