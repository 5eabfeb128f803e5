//! Command-line syntax of `weftctl` (clap derive).
//!
//! Only syntax lives here. Values whose errors must follow the Weft wording (the
//! protocol selector) are taken as plain strings and checked in [`super::commands`], so
//! `weftctl` rather than clap writes the message that lists the valid selectors.
//! Environment variables are not bound through clap either: they are read once in
//! `main` and resolved with the flags in [`super::options`], a pure function that
//! tests can drive without touching the process environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// `weftctl`: manage a Weft service mesh through its control plane.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about, propagate_version = true)]
#[command(
    after_help = "Environment: WEFT_CP, WEFT_TOKEN, WEFT_CA, WEFT_DATA_DIR stand in for the flags. \
With none of them, weftctl reads ./weft-data/admin.token and ./weft-data/ca.pem."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output options, accepted before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Control plane URL (https only), or its replicas' URLs separated by commas, tried
    /// in turn [env: WEFT_CP] [default: https://127.0.0.1:7400]
    #[arg(long, global = true, value_name = "URL[,URL...]")]
    pub cp: Option<String>,
    /// Admin token [env: WEFT_TOKEN] [default: <data-dir>/admin.token]
    #[arg(long, global = true, value_name = "T")]
    pub token: Option<String>,
    /// PEM file of the mesh CA that signed the control plane's certificate
    /// [env: WEFT_CA] [default: <data-dir>/ca.pem]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Directory written by weft-cp holding admin.token and ca.pem
    /// [env: WEFT_DATA_DIR] [default: ./weft-data when present]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output format
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header row.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mesh services and their protocol selector
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Gateway routes (public host -> service)
    #[command(subcommand)]
    Route(RouteCmd),
    /// Registered sidecars, gateways and ingresses
    #[command(subcommand)]
    Dataplane(DataplaneCmd),
    /// Bootstrap tokens for dataplanes, viewer tokens for people and tools
    #[command(subcommand)]
    Token(TokenCmd),
    /// The mesh certificate authority
    #[command(subcommand)]
    Ca(CaCmd),
    /// The control plane itself: its replicas and which one leads
    #[command(subcommand)]
    Cp(CpCmd),
    /// The busiest services, refreshed (req/s, success rate, p50/p99); prints once when
    /// stdout is not a terminal
    Top(TopArgs),
    /// Traffic permissions: which callers may reach which service
    #[command(subcommand)]
    Permission(PermissionCmd),
    /// Mesh-wide settings: the default policy for calls no permission matches
    #[command(subcommand)]
    Mesh(MeshCmd),
}

/// How far back traffic figures go: 10s to 5m (the window the control plane keeps).
#[derive(Debug, Clone, Copy, Args)]
pub struct WindowArg {
    /// Time the figures cover, counted back from now (10s to 5m)
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub window: WindowArg,
    /// Time between refreshes (at least 1s)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Services shown, busiest first
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service
    Create {
        name: String,
        /// What the app speaks: tcp, http, http2 or grpc
        #[arg(long, value_name = "tcp|http|http2|grpc")]
        protocol: String,
        /// Outbound port every sidecar listens on for this service
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// List services
    List,
    /// Show a service, its dataplanes and any protocol mismatch
    Get { name: String },
    /// Delete a service
    Delete { name: String },
    /// Change a service's protocol selector (pushed to every sidecar)
    SetProtocol {
        name: String,
        #[arg(value_name = "tcp|http|http2|grpc")]
        protocol: String,
    },
    /// Traffic figures the dataplanes reported: every service, or one with its callers
    Stats {
        name: Option<String>,
        #[command(flatten)]
        window: WindowArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Create a gateway route; HOST may be a wildcard like *.example.com
    Create {
        host: String,
        /// Target service
        #[arg(long, value_name = "NAME")]
        service: String,
        /// Path prefix the route applies to (default /)
        #[arg(long, value_name = "/p")]
        path_prefix: Option<String>,
        /// Host sent upstream instead of the public one
        #[arg(long, value_name = "H")]
        rewrite_host: Option<String>,
        /// Send to the service's healthy endpoints in this region first (then the
        /// gateway's own region, then any)
        #[arg(long, value_name = "R")]
        prefer_region: Option<String>,
    },
    /// List gateway routes
    List,
    /// Delete a gateway route
    Delete {
        host: String,
        /// Path prefix of the route (default /)
        #[arg(long, value_name = "/p")]
        path_prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataplaneCmd {
    /// List dataplanes with their config sync state
    List {
        /// Only dataplanes of this service, gateway or ingress
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Show one dataplane
    Get { id: String },
    /// End one dataplane's identity now: its certificates are refused by every peer, its
    /// discovery stream closes, it cannot renew, and its endpoint is removed
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a bootstrap or viewer token (printed on the last line of stdout)
    Create(TokenCreateArgs),
    /// List tokens
    List,
    /// Revoke a token by id
    Revoke { id: String },
}

/// Which identity a new token may obtain: exactly one of the three.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("identity").required(true).args(["service", "gateway", "ingress", "viewer"])))]
pub struct TokenCreateArgs {
    /// Token for a sidecar of this service
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Token for the gateway of this name
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
    /// Token for the region ingress of this name
    #[arg(long, value_name = "NAME")]
    pub ingress: Option<String>,
    /// Read-only token for a person or tool of this name: the dashboard, and weftctl's
    /// list, get and stats commands
    #[arg(long, value_name = "NAME")]
    pub viewer: Option<String>,
    /// Lifetime, e.g. 1h, 7d
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

#[derive(Debug, Subcommand)]
pub enum CpCmd {
    /// Replicas (alive or not), the leader and its epoch, and the store
    Status,
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Show the trust domain, certificate lifetime, CA roots and rotation status
    Show,
    /// Rotate the CA: add a new root to the trust bundle now; signing switches to it once
    /// every connected dataplane acknowledged the bundle
    Rotate {
        /// Wait until signing has switched to the new root
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 10m
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
    },
    /// Remove a root that no longer signs from the trust bundle
    Retire {
        /// SHA-256 of the root, as `weftctl ca show` prints it
        sha256: String,
        /// Retire before every certificate the root signed has expired; workloads that
        /// still hold one are refused by their peers until they renew
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PermissionCmd {
    /// Allow calls from SRC to DST
    Allow(RuleArgs),
    /// Deny calls from SRC to DST (any matching deny wins)
    Deny(RuleArgs),
    /// Allow calls from SRC to DST, but log and count them as would-be denials
    Audit(RuleArgs),
    /// List permissions
    List,
    /// Delete a permission by id
    Delete { id: String },
    /// Explain what happens to calls from SRC to DST: allow or deny, and the rule or
    /// default that decides (exit 0 allow, 3 deny)
    Check(RuleArgs),
}

/// Who calls whom, as in a permission.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// The caller: a service name, gateway:NAME, or '*' (every service and gateway)
    #[arg(long, value_name = "SRC")]
    pub from: String,
    /// The destination: a service name, or '*' (every service)
    #[arg(long, value_name = "DST")]
    pub to: String,
    /// Only calls to this port of the destination app
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum MeshCmd {
    /// Show the default policy and how many permissions exist
    Show,
    /// Set what happens to calls no permission matches
    SetDefaultPolicy {
        #[arg(value_name = "allow|deny")]
        policy: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_create_needs_exactly_one_identity() {
        assert!(Cli::try_parse_from(["weftctl", "token", "create"]).is_err());
        assert!(
            Cli::try_parse_from([
                "weftctl",
                "token",
                "create",
                "--service",
                "a",
                "--gateway",
                "b"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["weftctl", "token", "create", "--ingress", "us"]).is_ok());
        assert!(Cli::try_parse_from(["weftctl", "token", "create", "--viewer", "ops"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "weftctl",
                "token",
                "create",
                "--viewer",
                "a",
                "--service",
                "b"
            ])
            .is_err()
        );
    }

    #[test]
    fn ca_rotation_commands_parse() {
        let cli = Cli::try_parse_from(["weftctl", "ca", "rotate", "--wait", "--timeout", "30s"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Ca(CaCmd::Rotate { wait: true, timeout })) if timeout == Duration::from_secs(30)
        ));
        assert!(Cli::try_parse_from(["weftctl", "ca", "rotate", "--timeout", "30s"]).is_err());
        let cli = Cli::try_parse_from(["weftctl", "ca", "retire", "ab12", "--force"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Ca(CaCmd::Retire { sha256, force: true })) if sha256 == "ab12"
        ));
        assert!(Cli::try_parse_from(["weftctl", "ca", "retire"]).is_err());
    }

    #[test]
    fn traffic_commands_parse() {
        let cli = Cli::try_parse_from(["weftctl", "service", "stats", "web", "--window", "5m"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Service(ServiceCmd::Stats { name: Some(n), window }))
                if n == "web" && window.window == Duration::from_secs(300)
        ));
        let cli = Cli::try_parse_from(["weftctl", "top"]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Top(TopArgs { interval, limit: 20, .. })) if interval == Duration::from_secs(2)
        ));
        assert!(Cli::try_parse_from(["weftctl", "top", "--limit", "0"]).is_err());
    }

    #[test]
    fn permission_commands_parse() {
        let cli = Cli::try_parse_from([
            "weftctl",
            "permission",
            "deny",
            "--from",
            "gateway:edge",
            "--to",
            "web",
            "--port",
            "8443",
        ]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Permission(PermissionCmd::Deny(RuleArgs { from, to, port: Some(8443) })))
                if from == "gateway:edge" && to == "web"
        ));
        assert!(Cli::try_parse_from(["weftctl", "permission", "allow", "--to", "web"]).is_err());
        assert!(
            Cli::try_parse_from([
                "weftctl",
                "permission",
                "check",
                "--from",
                "a",
                "--to",
                "b",
                "--port",
                "0"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["weftctl", "mesh", "set-default-policy", "deny"]).is_ok());
        assert!(Cli::try_parse_from(["weftctl", "dataplane", "revoke", "service/web/x:1"]).is_ok());
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["weftctl", "service", "list", "-o", "json", "--cp", "x"]);
        let Ok(cli) = cli else {
            panic!("parse failed");
        };
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.cp.as_deref(), Some("x"));
    }
}
