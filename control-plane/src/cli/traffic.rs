//! Traffic figures: `weftctl service stats [NAME]` and `weftctl top`, and how the
//! figures look in tables and JSON (the dashboard's `/api/` serves the same JSON).
//!
//! Every figure (rates, success rate, percentiles) is computed by the control plane;
//! this only formats them.

use std::io::IsTerminal as _;
use std::time::Duration;

use serde_json::{Value, json};
use weft_proto::v1::{
    GetTrafficStatsRequest, ServiceTraffic, TrafficFigures, TrafficSource, TrafficStats,
};

use super::args::{OutputFormat, TopArgs, WindowArg};
use super::connect::AdminConn;
use super::error::CliError;
use super::output::{Table, key_values, note, print, time_json};

/// The window the control plane keeps: the longest `--window`.
const MAX_WINDOW: Duration = Duration::from_secs(crate::traffic::MAX_WINDOW_SECONDS as u64);
/// The shortest `--window`: one bucket.
const MIN_WINDOW: Duration = Duration::from_secs(crate::traffic::BUCKET_SECONDS as u64);

/// `--window` in seconds, or a usage error saying what is allowed.
pub fn window_seconds(w: WindowArg) -> Result<u32, CliError> {
    if w.window < MIN_WINDOW || w.window > MAX_WINDOW {
        return Err(CliError::Usage(format!(
            "--window {} is out of range: use 10s to 5m (the control plane keeps five minutes of figures)",
            humantime::format_duration(w.window)
        )));
    }
    Ok(u32::try_from(w.window.as_secs()).unwrap_or(u32::MAX))
}

/// Checks `top`'s flags before connecting.
pub fn check_top(args: &TopArgs) -> Result<(), CliError> {
    window_seconds(args.window)?;
    if args.interval < Duration::from_secs(1) {
        return Err(CliError::Usage(
            "--interval must be at least 1s (figures change every 10 s), e.g. --interval 2s"
                .to_string(),
        ));
    }
    Ok(())
}

/// Requests per second, with one decimal below 100.
pub fn rate_cell(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.1}")
    }
}

/// A share as a percentage; `-` when there is nothing to measure.
pub fn percent_cell(share: Option<f64>) -> String {
    share.map_or_else(|| "-".to_string(), |s| format!("{:.2}%", s * 100.0))
}

/// Milliseconds for people: `0.42ms`, `12ms`, `1.5s`; `-` when unknown.
pub fn latency_cell(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_string(),
        Some(ms) if ms >= 1000.0 => format!("{:.1}s", ms / 1000.0),
        Some(ms) if ms >= 10.0 => format!("{ms:.0}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

/// Bytes in binary units: `512B`, `1.5KiB`, `3.2MiB`.
pub fn bytes_cell(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Failed requests: 5xx responses and gRPC errors.
fn errors(f: &TrafficFigures) -> u64 {
    f.responses_5xx + f.grpc_errors
}

/// One row per service, busiest first (the order the control plane sends).
pub fn traffic_table(services: &[ServiceTraffic]) -> Table {
    let mut t = Table::new(&[
        "SERVICE", "REQ/S", "SUCCESS", "P50", "P99", "REQUESTS", "ERRORS", "IN", "OUT", "ACTIVE",
    ]);
    for s in services {
        let f = s.total.unwrap_or_default();
        t.row(vec![
            s.service.clone(),
            rate_cell(f.request_rate),
            percent_cell(f.success_rate),
            latency_cell(f.latency_p50_ms),
            latency_cell(f.latency_p99_ms),
            f.requests.to_string(),
            errors(&f).to_string(),
            bytes_cell(f.bytes_in),
            bytes_cell(f.bytes_out),
            s.active_connections.to_string(),
        ]);
    }
    t
}

/// One service's figures and who calls it.
pub fn service_traffic_text(s: &ServiceTraffic) -> String {
    let f = s.total.unwrap_or_default();
    let mut text = key_values(&[
        ("service", s.service.clone()),
        (
            "requests",
            format!("{} ({}/s)", f.requests, rate_cell(f.request_rate)),
        ),
        ("success", percent_cell(f.success_rate)),
        (
            "responses",
            format!(
                "2xx {}  3xx {}  4xx {}  5xx {}  grpc errors {}",
                f.responses_2xx, f.responses_3xx, f.responses_4xx, f.responses_5xx, f.grpc_errors
            ),
        ),
        (
            "latency",
            format!(
                "p50 {}  p99 {}",
                latency_cell(f.latency_p50_ms),
                latency_cell(f.latency_p99_ms)
            ),
        ),
        (
            "bytes",
            format!(
                "in {}  out {}",
                bytes_cell(f.bytes_in),
                bytes_cell(f.bytes_out)
            ),
        ),
        (
            "connections",
            format!("{} opened, {} open", f.connections, s.active_connections),
        ),
    ]);
    text.push_str(&format!("\ncallers ({}):\n", s.sources.len()));
    let mut t = Table::new(&[
        "SOURCE", "REQ/S", "SUCCESS", "REQUESTS", "ERRORS", "IN", "OUT",
    ]);
    for source in &s.sources {
        let f = source.figures.unwrap_or_default();
        t.row(vec![
            source_label(source.source.as_ref()),
            rate_cell(f.request_rate),
            percent_cell(f.success_rate),
            f.requests.to_string(),
            errors(&f).to_string(),
            bytes_cell(f.bytes_in),
            bytes_cell(f.bytes_out),
        ]);
    }
    text.push_str(&t.render());
    text
}

fn source_label(source: Option<&TrafficSource>) -> String {
    source.map_or_else(|| "unknown".to_string(), TrafficSource::label)
}

/// Where the figures come from, for a note under them.
pub fn coverage_text(stats: &TrafficStats) -> String {
    format!(
        "figures over the last {}s from {} of the {} dataplanes connected to this control plane",
        stats.window_seconds, stats.reporting_dataplanes, stats.connected_dataplanes
    )
}

fn option_json(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!(v))
}

pub fn figures_json(f: &TrafficFigures) -> Value {
    json!({
        "requests": f.requests,
        "request_rate": f.request_rate,
        "responses": {
            "2xx": f.responses_2xx,
            "3xx": f.responses_3xx,
            "4xx": f.responses_4xx,
            "5xx": f.responses_5xx,
        },
        "grpc_errors": f.grpc_errors,
        "errors": errors(f),
        "success_rate": option_json(f.success_rate),
        "latency_ms": {
            "p50": option_json(f.latency_p50_ms),
            "p99": option_json(f.latency_p99_ms),
        },
        "bytes_in": f.bytes_in,
        "bytes_out": f.bytes_out,
        "connections": f.connections,
    })
}

pub fn service_traffic_json(s: &ServiceTraffic) -> Value {
    json!({
        "service": s.service,
        "total": figures_json(&s.total.unwrap_or_default()),
        "active_connections": s.active_connections,
        "sources": s.sources.iter().map(|src| json!({
            "source": source_label(src.source.as_ref()),
            "figures": figures_json(&src.figures.unwrap_or_default()),
        })).collect::<Vec<_>>(),
        "series": s.series.iter().map(|p| json!({
            "start": time_json(p.start),
            "figures": figures_json(&p.figures.unwrap_or_default()),
        })).collect::<Vec<_>>(),
    })
}

pub fn traffic_json(stats: &TrafficStats) -> Value {
    json!({
        "generated_at": time_json(stats.generated_at),
        "window_seconds": stats.window_seconds,
        "bucket_seconds": stats.bucket_seconds,
        "reporting_dataplanes": stats.reporting_dataplanes,
        "connected_dataplanes": stats.connected_dataplanes,
        "services": stats.services.iter().map(service_traffic_json).collect::<Vec<_>>(),
    })
}

async fn fetch(
    client: &mut AdminConn,
    explain: &impl Fn(&tonic::Status) -> CliError,
    service: &str,
    window_seconds: u32,
) -> Result<TrafficStats, CliError> {
    let request = GetTrafficStatsRequest {
        service: service.to_string(),
        window_seconds,
    };
    client
        .get_traffic_stats(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| explain(&s))
}

/// `weftctl service stats [NAME]`.
pub async fn stats(
    client: &mut AdminConn,
    explain: &impl Fn(&tonic::Status) -> CliError,
    format: OutputFormat,
    name: Option<String>,
    window: WindowArg,
) -> Result<(), CliError> {
    let window = window_seconds(window)?;
    let stats = fetch(client, explain, name.as_deref().unwrap_or(""), window).await?;
    if format == OutputFormat::Json {
        return super::output::print_json(&traffic_json(&stats));
    }
    match &name {
        Some(name) => {
            let quiet = ServiceTraffic {
                service: name.clone(),
                ..Default::default()
            };
            print(&service_traffic_text(
                stats.services.first().unwrap_or(&quiet),
            ))?;
        }
        None => print(&traffic_table(&stats.services).render())?,
    }
    let quiet = stats.services.iter().all(|s| {
        s.total
            .is_none_or(|t| t.requests == 0 && t.connections == 0)
    });
    if quiet {
        note(&format!(
            "no traffic reported in the last {}s; dataplanes report every 10 s what their inbound received",
            stats.window_seconds
        ));
    }
    note(&coverage_text(&stats));
    Ok(())
}

/// Terminal sequences: the alternate screen (restored on exit, like `top`), and home +
/// clear for each refresh.
const ENTER_SCREEN: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE_SCREEN: &str = "\x1b[?25h\x1b[?1049l";
const REDRAW: &str = "\x1b[H\x1b[2J";

/// One screen of `top`.
fn top_screen(stats: &TrafficStats, limit: usize, now: &str, refreshing: bool) -> String {
    let shown = &stats.services[..stats.services.len().min(limit)];
    let mut text = format!(
        "weftctl top  {now}  {} services with traffic; {}{}\n\n",
        stats.services.len(),
        coverage_text(stats),
        if refreshing { "  (Ctrl-C quits)" } else { "" }
    );
    text.push_str(&traffic_table(shown).render());
    text
}

/// `weftctl top`: refreshes until Ctrl-C on a terminal, prints once otherwise.
pub async fn top(
    client: &mut AdminConn,
    explain: &impl Fn(&tonic::Status) -> CliError,
    args: TopArgs,
) -> Result<(), CliError> {
    check_top(&args)?;
    let window = window_seconds(args.window)?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let now = || super::output::rfc3339(super::output::now_unix()).unwrap_or_default();
    if !std::io::stdout().is_terminal() {
        let stats = fetch(client, explain, "", window).await?;
        return print(&top_screen(&stats, limit, &now(), false));
    }
    print(ENTER_SCREEN)?;
    let result = async {
        let mut tick = tokio::time::interval(args.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let stats = fetch(client, explain, "", window).await?;
                    print(&format!("{REDRAW}{}", top_screen(&stats, limit, &now(), true)))?;
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    .await;
    print(LEAVE_SCREEN)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::{DataplaneKind, SourceTraffic};

    fn web() -> ServiceTraffic {
        ServiceTraffic {
            service: "web".into(),
            total: Some(TrafficFigures {
                requests: 1200,
                request_rate: 20.0,
                responses_2xx: 1190,
                responses_5xx: 10,
                success_rate: Some(1190.0 / 1200.0),
                latency_p50_ms: Some(0.42),
                latency_p99_ms: Some(1500.0),
                bytes_in: 2048,
                ..Default::default()
            }),
            sources: vec![SourceTraffic {
                source: Some(TrafficSource {
                    kind: DataplaneKind::Gateway as i32,
                    name: "edge".into(),
                }),
                figures: Some(TrafficFigures {
                    requests: 1200,
                    ..Default::default()
                }),
            }],
            active_connections: 3,
            ..Default::default()
        }
    }

    #[test]
    fn cells_are_short_and_readable() {
        assert_eq!(rate_cell(0.26), "0.3");
        assert_eq!(rate_cell(1234.4), "1234");
        assert_eq!(percent_cell(None), "-");
        assert_eq!(percent_cell(Some(0.9917)), "99.17%");
        assert_eq!(latency_cell(Some(0.42)), "0.42ms");
        assert_eq!(latency_cell(Some(37.2)), "37ms");
        assert_eq!(latency_cell(Some(2500.0)), "2.5s");
        assert_eq!(bytes_cell(512), "512B");
        assert_eq!(bytes_cell(1536), "1.5KiB");
    }

    #[test]
    fn table_and_detail_show_the_golden_figures_and_callers() {
        let table = traffic_table(&[web()]).render();
        assert!(
            table.contains("web      20.0   99.17%   0.42ms  1.5s"),
            "{table}"
        );
        let text = service_traffic_text(&web());
        assert!(text.contains("requests:     1200 (20.0/s)"), "{text}");
        assert!(text.contains("gateway:edge"), "{text}");
    }

    #[test]
    fn json_keeps_unknown_figures_null() {
        let mut quiet = web();
        quiet.total = Some(TrafficFigures::default());
        let j = service_traffic_json(&quiet);
        assert_eq!(j["total"]["success_rate"], Value::Null);
        assert_eq!(j["total"]["latency_ms"]["p99"], Value::Null);
        assert_eq!(j["sources"][0]["source"], "gateway:edge");
        let j = service_traffic_json(&web());
        assert_eq!(j["total"]["errors"], 10);
        assert_eq!(j["total"]["latency_ms"]["p50"], 0.42);
    }

    #[test]
    fn window_and_interval_are_checked_before_connecting() {
        let w = |secs| WindowArg {
            window: Duration::from_secs(secs),
        };
        assert_eq!(window_seconds(w(60)).unwrap(), 60);
        assert_eq!(window_seconds(w(301)).unwrap_err().exit_code(), 2);
        assert_eq!(window_seconds(w(5)).unwrap_err().exit_code(), 2);
        let top = TopArgs {
            window: w(60),
            interval: Duration::from_millis(100),
            limit: 5,
        };
        assert_eq!(check_top(&top).unwrap_err().exit_code(), 2);
    }
}
