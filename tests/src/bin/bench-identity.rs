//! Identity benchmark: CSR signings per second by the mesh CA, and full TLS 1.3 mTLS
//! handshakes per second with the rustls configs the mesh uses, all on one thread.
//!
//! Run it pinned to one core, in release mode:
//!
//! ```sh
//! cargo build --release -p weft-tests --bin bench-identity
//! taskset -c 1 target/release/bench-identity
//! ```
//!
//! Signing: `CertificateAuthority::issue_from_csr` over pre-generated CSRs (each with its
//! own P-256 key), so only the CA's work is timed: parse the CSR, verify its signature,
//! check the requested identity, sign and encode the leaf.
//!
//! Handshakes: a client and a server `rustls` connection built from
//! `mesh_client_config`/`mesh_server_config` (ECDSA P-256 leaves, SPIFFE checks) are
//! driven by hand over in-memory buffers until both sides are done. Session resumption
//! is disabled on both sides, so every handshake is a full one: key exchange, both
//! certificate chains verified, both CertificateVerify signatures. Both sides run on
//! the same core, so the combined rate counts the CPU of both ends; each side's calls
//! are also timed separately, which gives what one core could do as the server only
//! (or the client only). There is no socket I/O in these figures.
//!
//! Every rate is given twice: per wall-clock second, and per second this thread was
//! actually on the CPU (`/proc/thread-self/schedstat`), which does not count time the
//! scheduler gave to other processes sharing the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use weft_certs::{
    CertificateAuthority, Identity, IdentityKind, SpiffeId, TrustBundle, TrustDomain, generate_csr,
    mesh_client_config, mesh_server_config,
};

/// CSR signing and mTLS handshake rates of Weft's identity stack, on one thread.
#[derive(Parser, Debug)]
#[command(name = "bench-identity")]
struct Args {
    /// CSRs to sign (pre-generated before timing).
    #[arg(long, default_value_t = 3000)]
    csrs: usize,
    /// Full mTLS handshakes to time (after a warm-up of 200).
    #[arg(long, default_value_t = 5000)]
    handshakes: usize,
}

const ALPN: &[u8] = b"weft";
/// Lifetime of the signed leaves: the default `--cert-ttl` (it does not change the cost).
const TTL: Duration = Duration::from_secs(24 * 3600);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("bench-identity: {}", environment());

    let td = TrustDomain::new("weft.local")?;
    let ca = CertificateAuthority::generate(&td)?;
    let bundle = TrustBundle::from_pem(ca.cert_pem())?;

    // --- CSR signing -------------------------------------------------------------
    let id = SpiffeId::new(&td, IdentityKind::Service, "web")?;
    let started = Instant::now();
    let csrs = (0..args.csrs)
        .map(|_| generate_csr(&id).map(|(_, csr)| csr))
        .collect::<Result<Vec<_>, _>>()?;
    let keygen = started.elapsed();
    let started = Instant::now();
    let cpu_started = thread_cpu();
    for csr in &csrs {
        ca.issue_from_csr(csr, &id, TTL)?;
    }
    let signing = started.elapsed();
    let signing_cpu = cpu_since(cpu_started);
    println!();
    println!("CSR signing (CertificateAuthority::issue_from_csr, P-256 CSR -> P-256 leaf):");
    println!(
        "  {:>8.0} signings/s   {:>7.1} us each   ({} CSRs in {:.2} s wall){}",
        rate(args.csrs, signing),
        per_op_us(signing, args.csrs),
        args.csrs,
        signing.as_secs_f64(),
        on_cpu(args.csrs, signing_cpu)
    );
    println!(
        "  {:>8.0} key+CSR/s    {:>7.1} us each   (workload side: P-256 key and CSR generation)",
        rate(args.csrs, keygen),
        per_op_us(keygen, args.csrs)
    );

    // --- mTLS handshakes -----------------------------------------------------------
    let client_id = SpiffeId::new(&td, IdentityKind::Service, "a")?;
    let server_id = SpiffeId::new(&td, IdentityKind::Service, "b")?;
    let client = issue(&ca, &client_id, TTL)?;
    let server = issue(&ca, &server_id, TTL)?;

    let mut client_config = (*mesh_client_config(&client, &bundle, &server_id, &[ALPN])?).clone();
    client_config.resumption = rustls::client::Resumption::disabled();
    let client_config = Arc::new(client_config);
    let mut server_config = (*mesh_server_config(&server, &bundle, &[ALPN])?).clone();
    server_config.send_tls13_tickets = 0;
    server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let server_config = Arc::new(server_config);
    let name = ServerName::try_from("b.weft.local")?;

    for _ in 0..200 {
        handshake(&client_config, &server_config, &name)?;
    }
    let (mut client_time, mut server_time) = (Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    let cpu_started = thread_cpu();
    for _ in 0..args.handshakes {
        let (c, s) = handshake(&client_config, &server_config, &name)?;
        client_time += c;
        server_time += s;
    }
    let total = started.elapsed();
    let total_cpu = cpu_since(cpu_started);
    let n = args.handshakes;
    // Each side's share of the time spent inside rustls calls, applied to the on-CPU time.
    let server_share = server_time.as_secs_f64() / (server_time + client_time).as_secs_f64();
    let side_cpu = |share: f64| total_cpu.map(|t| t.mul_f64(share));
    println!();
    println!("Full TLS 1.3 mTLS handshakes (mesh configs, no resumption, in memory):");
    println!(
        "  {:>8.0} handshakes/s  both sides on this core   ({n} in {:.2} s wall){}",
        rate(n, total),
        total.as_secs_f64(),
        on_cpu(n, total_cpu)
    );
    println!(
        "  {:>8.0} handshakes/s  server side only           ({:.1} us each, wall){}",
        rate(n, server_time),
        per_op_us(server_time, n),
        on_cpu(n, side_cpu(server_share))
    );
    println!(
        "  {:>8.0} handshakes/s  client side only           ({:.1} us each, wall){}",
        rate(n, client_time),
        per_op_us(client_time, n),
        on_cpu(n, side_cpu(1.0 - server_share))
    );
    Ok(())
}

/// Time this thread has spent on a CPU, from `/proc/thread-self/schedstat` (first field,
/// nanoseconds). `None` where that file does not exist (non-Linux, schedstats off).
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

fn cpu_since(start: Option<Duration>) -> Option<Duration> {
    Some(thread_cpu()?.saturating_sub(start?))
}

/// The ", N/s on-CPU" suffix, or nothing when on-CPU time is unknown.
fn on_cpu(n: usize, cpu: Option<Duration>) -> String {
    cpu.map_or_else(String::new, |t| {
        format!("; {:.0}/s per on-CPU second", rate(n, t))
    })
}

/// A leaf for `id` from `ca`, with a key made here.
fn issue(ca: &CertificateAuthority, id: &SpiffeId, ttl: Duration) -> anyhow::Result<Identity> {
    let (key, csr) = generate_csr(id)?;
    let issued = ca.issue_from_csr(&csr, id, ttl)?;
    Ok(Identity::from_pem(&issued.chain_pem, &key)?)
}

/// One full handshake; returns the time spent in client calls and in server calls.
fn handshake(
    client_config: &Arc<rustls::ClientConfig>,
    server_config: &Arc<rustls::ServerConfig>,
    name: &ServerName<'static>,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut client = ClientConnection::new(client_config.clone(), name.clone())?;
    let mut client_time = t.elapsed();
    let t = Instant::now();
    let mut server = ServerConnection::new(server_config.clone())?;
    let mut server_time = t.elapsed();
    let mut buf = Vec::with_capacity(16 * 1024);
    // TLS 1.3 with client auth takes two round trips; allow a few more before giving up.
    for _ in 0..6 {
        buf.clear();
        let t = Instant::now();
        while client.wants_write() {
            client.write_tls(&mut buf)?;
        }
        client_time += t.elapsed();
        if !buf.is_empty() {
            let t = Instant::now();
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                server.read_tls(&mut rd)?;
                server.process_new_packets().context("server")?;
            }
            server_time += t.elapsed();
        }
        buf.clear();
        let t = Instant::now();
        while server.wants_write() {
            server.write_tls(&mut buf)?;
        }
        server_time += t.elapsed();
        if !buf.is_empty() {
            let t = Instant::now();
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd)?;
                client.process_new_packets().context("client")?;
            }
            client_time += t.elapsed();
        }
        let done = !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write();
        if done {
            if server.peer_certificates().is_none_or(<[_]>::is_empty) {
                bail!("the server saw no client certificate: not an mTLS handshake");
            }
            return Ok((client_time, server_time));
        }
    }
    bail!("the handshake did not complete in 6 flights")
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn per_op_us(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n.max(1) as f64
}

/// CPU model and the CPUs this process may run on, so figures say where they came from.
fn environment() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let allowed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let note = if allowed.contains(['-', ',']) {
        " (not pinned: run under `taskset -c 1` for one-core figures)"
    } else {
        ""
    };
    format!("{cpu}, single thread, allowed CPUs {allowed}{note}; rustls + ring")
}
