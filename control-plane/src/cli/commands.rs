//! What each `weftctl` command sends and prints.
//!
//! Arguments are checked ([`preflight`]) before any connection is made, so a typo
//! gives a usage error (exit 2) even when the control plane is down.

use serde_json::{Value, json};
use tonic::Status;
use weft_proto::v1::{
    CreateRouteRequest, CreateServiceRequest, CreateTokenRequest, DataplaneKind,
    DeleteRouteRequest, DeleteServiceRequest, GetCaRequest, GetControlPlaneStatusRequest,
    GetDataplaneRequest, GetServiceRequest, ListDataplanesRequest, ListRoutesRequest,
    ListServicesRequest, ListTokensRequest, Protocol, RetireCaRootRequest, RevokeTokenRequest,
    RotateCaRequest, SetProtocolRequest,
};

use super::args::{
    CaCmd, Command, CpCmd, DataplaneCmd, OutputFormat, RouteCmd, ServiceCmd, TokenCmd,
    TokenCreateArgs,
};
use super::authz;
use super::connect::{AdminConn, ConnectOptions};
use super::error::CliError;
use super::output::{Table, duration_text, note, now_unix, print, print_json, time_cell};
use super::{traffic, views};
use crate::validate;

/// Parses a protocol selector as users type it.
pub fn parse_protocol(value: &str) -> Result<Protocol, CliError> {
    Protocol::from_selector(value).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown protocol \"{value}\": valid values are {}",
            Protocol::VALID_SELECTORS
        ))
    })
}

/// Checks what can be checked locally, before connecting.
pub fn preflight(command: &Command) -> Result<(), CliError> {
    match command {
        Command::Service(ServiceCmd::Create { protocol, .. })
        | Command::Service(ServiceCmd::SetProtocol { protocol, .. }) => {
            parse_protocol(protocol).map(|_| ())
        }
        Command::Token(TokenCmd::Create(args)) => token_request(args).map(|_| ()),
        Command::Route(RouteCmd::Create {
            prefer_region: Some(region),
            ..
        }) => validate::region(region, "--prefer-region").map_err(CliError::Usage),
        Command::Service(ServiceCmd::Stats { window, .. }) => {
            traffic::window_seconds(*window).map(|_| ())
        }
        Command::Top(args) => traffic::check_top(args),
        Command::Permission(cmd) => authz::preflight_permission(cmd),
        Command::Mesh(cmd) => authz::preflight_mesh(cmd),
        _ => Ok(()),
    }
}

/// Runs one command on an open connection and prints its result.
pub async fn execute(
    client: &mut AdminConn,
    opts: &ConnectOptions,
    command: Command,
    format: OutputFormat,
) -> Result<(), CliError> {
    let out = Out { format, opts };
    match command {
        Command::Service(cmd) => service(client, &out, cmd).await,
        Command::Route(cmd) => route(client, &out, cmd).await,
        Command::Dataplane(cmd) => dataplane(client, &out, cmd).await,
        Command::Token(cmd) => token(client, &out, cmd).await,
        Command::Ca(cmd) => ca(client, &out, cmd).await,
        Command::Cp(CpCmd::Status) => {
            let status = out.call(
                client
                    .get_control_plane_status(GetControlPlaneStatusRequest {})
                    .await,
            )?;
            out.show(
                || views::cp_status_text(&status),
                || views::cp_status_json(&status),
            )
        }
        Command::Top(args) => traffic::top(client, &|s| opts.explain(s), args).await,
        Command::Permission(cmd) => authz::permission(client, &out, cmd).await,
        Command::Mesh(cmd) => authz::mesh(client, &out, cmd).await,
    }
}

async fn ca(client: &mut AdminConn, out: &Out<'_>, cmd: CaCmd) -> Result<(), CliError> {
    match cmd {
        CaCmd::Show => {
            let ca = out.call(client.get_ca(GetCaRequest {}).await)?;
            out.show(|| views::ca_text(&ca), || views::ca_json(&ca))
        }
        CaCmd::Rotate { wait, timeout } => {
            let ca = out.call(client.rotate_ca(RotateCaRequest {}).await)?;
            let rotation = ca.rotation.clone().unwrap_or_default();
            let new_root = rotation.new_root_sha256.clone();
            if !wait {
                return out.show(|| views::rotation_started_text(&ca), || views::ca_json(&ca));
            }
            if out.format == OutputFormat::Table {
                print(&views::rotation_started_text(&ca))?;
            }
            let ca = wait_for_switch(client, out, &new_root, timeout).await?;
            out.show(
                || {
                    let switched = ca.rotation.as_ref().map_or(0, |r| r.switched_at);
                    format!(
                        "switched: root {new_root} signs since {}\n",
                        time_cell(switched)
                    )
                },
                || views::ca_json(&ca),
            )
        }
        CaCmd::Retire { sha256, force } => {
            let sha256 = sha256.trim().to_ascii_lowercase();
            let request = RetireCaRootRequest {
                sha256: sha256.clone(),
                force,
            };
            let ca = out.call(client.retire_ca_root(request).await)?;
            out.show(
                || {
                    format!(
                        "retired CA root {sha256}: removed from the trust bundle and pushed to every dataplane\n\n{}",
                        views::ca_text(&ca)
                    )
                },
                || views::ca_json(&ca),
            )
        }
    }
}

/// Polls `GetCa` once a second until `new_root` signs. A CLI-side poll is enough: the
/// control plane itself switches on acknowledgements, this only watches it happen.
async fn wait_for_switch(
    client: &mut AdminConn,
    out: &Out<'_>,
    new_root: &str,
    timeout: std::time::Duration,
) -> Result<weft_proto::v1::CaInfo, CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_summary = String::new();
    loop {
        let ca = out.call(client.get_ca(GetCaRequest {}).await)?;
        if ca.roots.iter().any(|r| r.sha256 == new_root && r.signing) {
            return Ok(ca);
        }
        let rotation = ca.rotation.unwrap_or_default();
        if !ca.roots.iter().any(|r| r.sha256 == new_root) {
            return Err(CliError::Runtime(format!(
                "root {new_root} was removed from the trust bundle before it signed (rotation cancelled); \
                 start again with `weftctl ca rotate`"
            )));
        }
        if rotation.summary != last_summary {
            note(&rotation.summary);
            last_summary = rotation.summary;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Runtime(format!(
                "signing has not switched within {}: {}; `weftctl dataplane list` shows who has not \
                 acknowledged the latest config. The rotation goes on; check with `weftctl ca show`",
                humantime::format_duration(timeout),
                last_summary
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The output format plus the connection details needed to explain errors.
pub(super) struct Out<'a> {
    pub(super) format: OutputFormat,
    opts: &'a ConnectOptions,
}

impl Out<'_> {
    /// Unwraps a call's answer, explaining a refusal.
    pub(super) fn call<T>(
        &self,
        result: Result<tonic::Response<T>, Status>,
    ) -> Result<T, CliError> {
        result
            .map(tonic::Response::into_inner)
            .map_err(|s| self.opts.explain(&s))
    }

    /// Prints text or JSON, building only the one asked for.
    pub(super) fn show(
        &self,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Table => print(&text()),
            OutputFormat::Json => print_json(&json()),
        }
    }

    pub(super) fn list(&self, table: Table, items: Vec<Value>) -> Result<(), CliError> {
        self.show(|| table.render(), || Value::Array(items))
    }
}

async fn service(client: &mut AdminConn, out: &Out<'_>, cmd: ServiceCmd) -> Result<(), CliError> {
    match cmd {
        ServiceCmd::Create {
            name,
            protocol,
            port,
        } => {
            let request = CreateServiceRequest {
                name,
                protocol: parse_protocol(&protocol)? as i32,
                port: port.map_or(0, u32::from),
            };
            let s = out.call(client.create_service(request).await)?;
            out.show(
                || views::service_table(std::slice::from_ref(&s)).render(),
                || views::service_json(&s),
            )
        }
        ServiceCmd::List => {
            let list = out.call(client.list_services(ListServicesRequest {}).await)?;
            let items = list.services.iter().map(views::service_json).collect();
            out.list(views::service_table(&list.services), items)
        }
        ServiceCmd::Get { name } => {
            let detail = out.call(client.get_service(GetServiceRequest { name }).await)?;
            out.show(
                || views::service_detail_text(&detail, 0),
                || views::service_detail_json(&detail, 0),
            )?;
            // After the output, so they are the last thing a person sees. In JSON the
            // unset-selector note goes to stderr too; the table view prints it inline.
            let unset = detail
                .service
                .as_ref()
                .filter(|s| s.protocol() == Protocol::Unspecified);
            if let (OutputFormat::Json, Some(s)) = (out.format, unset) {
                note(&format!("note: {}", views::unset_protocol_note(&s.name)));
            }
            for warning in &detail.warnings {
                note(&format!("warning: {warning}"));
            }
            Ok(())
        }
        ServiceCmd::Delete { name } => {
            let request = DeleteServiceRequest { name: name.clone() };
            let r = out.call(client.delete_service(request).await)?;
            out.show(
                || format!("deleted service {name} (revision {})\n", r.revision),
                || json!({ "deleted": name, "revision": r.revision }),
            )
        }
        ServiceCmd::Stats { name, window } => {
            traffic::stats(client, &|s| out.opts.explain(s), out.format, name, window).await
        }
        ServiceCmd::SetProtocol { name, protocol } => {
            let request = SetProtocolRequest {
                name,
                protocol: parse_protocol(&protocol)? as i32,
            };
            let s = out.call(client.set_protocol(request).await)?;
            out.show(
                || {
                    format!(
                        "service {} now speaks {} (revision {}); new connections use it at once\n",
                        s.name,
                        s.protocol().selector_name(),
                        s.revision
                    )
                },
                || views::service_json(&s),
            )
        }
    }
}

async fn route(client: &mut AdminConn, out: &Out<'_>, cmd: RouteCmd) -> Result<(), CliError> {
    match cmd {
        RouteCmd::Create {
            host,
            service,
            path_prefix,
            rewrite_host,
            prefer_region,
        } => {
            let request = CreateRouteRequest {
                host,
                path_prefix: path_prefix.unwrap_or_default(),
                service,
                rewrite_host: rewrite_host.unwrap_or_default(),
                prefer_region: prefer_region.unwrap_or_default(),
            };
            let r = out.call(client.create_route(request).await)?;
            out.show(
                || views::route_table(std::slice::from_ref(&r)).render(),
                || views::route_json(&r),
            )
        }
        RouteCmd::List => {
            let list = out.call(client.list_routes(ListRoutesRequest {}).await)?;
            let items = list.routes.iter().map(views::route_json).collect();
            out.list(views::route_table(&list.routes), items)
        }
        RouteCmd::Delete { host, path_prefix } => {
            let path_prefix = path_prefix.unwrap_or_default();
            let request = DeleteRouteRequest {
                host: host.clone(),
                path_prefix: path_prefix.clone(),
            };
            let r = out.call(client.delete_route(request).await)?;
            let prefix = views::path_prefix(&path_prefix).to_string();
            out.show(
                || format!("deleted route {host} {prefix} (revision {})\n", r.revision),
                || json!({ "deleted": { "host": host, "path_prefix": prefix }, "revision": r.revision }),
            )
        }
    }
}

async fn dataplane(
    client: &mut AdminConn,
    out: &Out<'_>,
    cmd: DataplaneCmd,
) -> Result<(), CliError> {
    match cmd {
        DataplaneCmd::List { name } => {
            let request = ListDataplanesRequest {
                name: name.unwrap_or_default(),
            };
            let list = out.call(client.list_dataplanes(request).await)?;
            let latest = list.latest_version;
            let items = list
                .dataplanes
                .iter()
                .map(|d| views::dataplane_json(d, latest))
                .collect();
            out.list(views::dataplane_table(&list.dataplanes, latest), items)
        }
        DataplaneCmd::Get { id } => {
            let d = out.call(client.get_dataplane(GetDataplaneRequest { id }).await)?;
            out.show(
                || views::dataplane_text(&d),
                || views::dataplane_json(&d, 0),
            )
        }
        DataplaneCmd::Revoke { id } => authz::revoke_dataplane(client, out, id).await,
    }
}

/// Builds the token request; exactly one identity flag is set (clap's group).
fn token_request(args: &TokenCreateArgs) -> Result<CreateTokenRequest, CliError> {
    let (kind, name) = match (&args.service, &args.gateway, &args.ingress, &args.viewer) {
        (Some(n), ..) => (DataplaneKind::Sidecar, n),
        (_, Some(n), ..) => (DataplaneKind::Gateway, n),
        (_, _, Some(n), _) => (DataplaneKind::Ingress, n),
        (.., Some(n)) => (DataplaneKind::Unspecified, n),
        _ => {
            return Err(CliError::Usage(
                "token create needs one of --service NAME, --gateway NAME, --ingress NAME or --viewer NAME"
                    .to_string(),
            ));
        }
    };
    let ttl_seconds = args.ttl.as_secs();
    if ttl_seconds == 0 {
        return Err(CliError::Usage(
            "--ttl must be at least 1s, e.g. --ttl 24h".to_string(),
        ));
    }
    Ok(CreateTokenRequest {
        kind: kind as i32,
        name: name.clone(),
        ttl_seconds,
        viewer: args.viewer.is_some(),
    })
}

async fn token(client: &mut AdminConn, out: &Out<'_>, cmd: TokenCmd) -> Result<(), CliError> {
    let now = now_unix();
    match cmd {
        TokenCmd::Create(args) => {
            let request = token_request(&args)?;
            let ttl = request.ttl_seconds;
            let created = out.call(client.create_token(request).await)?;
            let info = created.info.unwrap_or_default();
            out.show(
                // The token goes on the last line so `| tail -n1` captures it.
                || {
                    let usage = if info.viewer {
                        "log in to the dashboard with it, or pass it to weftctl with --token (read-only)"
                    } else {
                        "pass it to weft-sidecar with --token"
                    };
                    format!(
                        "created {} token {} for {}, valid {} (until {})\n\
                         it is shown only once; {usage}\n{}\n",
                        views::token_kind_name(&info),
                        info.id,
                        info.name,
                        duration_text(ttl),
                        time_cell(info.expires_at),
                        created.token
                    )
                },
                || {
                    let mut j = views::token_json(&info, now);
                    j["token"] = Value::String(created.token.clone());
                    j
                },
            )
        }
        TokenCmd::List => {
            let list = out.call(client.list_tokens(ListTokensRequest {}).await)?;
            let items = list
                .tokens
                .iter()
                .map(|t| views::token_json(t, now))
                .collect();
            out.list(views::token_table(&list.tokens, now), items)
        }
        TokenCmd::Revoke { id } => {
            let t = out.call(client.revoke_token(RevokeTokenRequest { id }).await)?;
            out.show(
                || views::token_table(std::slice::from_ref(&t), now).render(),
                || views::token_json(&t, now),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::error::EXIT_USAGE;
    use std::time::Duration;

    #[test]
    fn unknown_protocol_is_a_usage_error_listing_valid_values() {
        let err = parse_protocol("foo").unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            "unknown protocol \"foo\": valid values are tcp, http, http2, grpc"
        );
        assert!(parse_protocol("").is_err());
        assert!(parse_protocol("h2c").is_err());
    }

    #[test]
    fn known_protocols_parse_in_any_case() {
        assert_eq!(parse_protocol("tcp").unwrap(), Protocol::Tcp);
        assert_eq!(parse_protocol("HTTP").unwrap(), Protocol::Http);
        assert_eq!(parse_protocol("http2").unwrap(), Protocol::Http2);
        assert_eq!(parse_protocol("grpc").unwrap(), Protocol::Grpc);
    }

    #[test]
    fn preflight_checks_protocol_before_connecting() {
        let cmd = Command::Service(ServiceCmd::SetProtocol {
            name: "web".into(),
            protocol: "spdy".into(),
        });
        assert_eq!(preflight(&cmd).unwrap_err().exit_code(), EXIT_USAGE);
    }

    #[test]
    fn preflight_checks_the_preferred_region_before_connecting() {
        let create = |region: &str| {
            Command::Route(RouteCmd::Create {
                host: "api.example.com".into(),
                service: "web".into(),
                path_prefix: None,
                rewrite_host: None,
                prefer_region: Some(region.into()),
            })
        };
        let err = preflight(&create("US East")).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("--prefer-region"), "{err}");
        assert!(preflight(&create("us-east")).is_ok());
        assert!(preflight(&create("")).is_ok(), "empty = no preference");
    }

    #[test]
    fn token_request_maps_flags_to_kind() {
        let args = TokenCreateArgs {
            service: None,
            gateway: Some("edge".into()),
            ingress: None,
            viewer: None,
            ttl: Duration::from_secs(3600),
        };
        let r = token_request(&args).unwrap();
        assert_eq!(r.kind(), DataplaneKind::Gateway);
        assert_eq!(
            (r.name.as_str(), r.ttl_seconds, r.viewer),
            ("edge", 3600, false)
        );
        let viewer = TokenCreateArgs {
            gateway: None,
            viewer: Some("ops".into()),
            ttl: Duration::from_secs(3600),
            ..args
        };
        let r = token_request(&viewer).unwrap();
        assert_eq!((r.kind(), r.viewer), (DataplaneKind::Unspecified, true));
        let args = TokenCreateArgs {
            viewer: None,
            gateway: Some("edge".into()),
            ..viewer
        };
        let zero = TokenCreateArgs {
            ttl: Duration::from_millis(10),
            ..args
        };
        assert!(token_request(&zero).is_err());
    }
}
