//! Permission check benchmark: what one authorization decision costs a sidecar per
//! stream or request, with a large rule set.
//!
//! ```sh
//! cargo build --release -p weft-tests --bin bench-authz
//! taskset -c 1 target/release/bench-authz --rules 1000
//! ```
//!
//! The mesh holds `--rules` permissions: one `allow` per caller service to the
//! destination, a tenth of them limited to the app's port, some `deny`s, and a
//! catch-all `audit * -> *`. The sidecar of the destination precomputes its decisions
//! when the config is applied (timed once: "precompute"); each check is then the
//! caller's identity taken from its verified SPIFFE id plus one hash lookup ("check"),
//! cycling over named and unnamed callers so that both lookup paths are measured. For
//! comparison, "scan" is the decision function run over every rule, which is what the
//! control plane does for `weftctl permission check`.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use weft_certs::{IdentityKind, SpiffeId, TrustDomain};
use weft_policy::{Action, Caller, DefaultPolicy, Destination, Policy, Rule, Source};

#[derive(Parser, Debug)]
#[command(name = "bench-authz")]
struct Args {
    /// Permissions in the mesh.
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Checks to time.
    #[arg(long, default_value_t = 5_000_000)]
    checks: usize,
}

const DESTINATION: &str = "web";
const PORT: u16 = 8080;

fn rules(n: usize) -> Vec<Rule> {
    let mut rules: Vec<Rule> = (0..n.saturating_sub(1))
        .map(|i| Rule {
            id: format!("perm-{i:05}"),
            source: Source::Service(format!("caller-{i}")),
            destination: Destination::Service(
                if i % 3 == 0 { DESTINATION } else { "other" }.into(),
            ),
            port: (i % 10 == 0).then_some(PORT),
            action: if i % 50 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
        })
        .collect();
    rules.push(Rule {
        id: "perm-audit".into(),
        source: Source::Any,
        destination: Destination::Any,
        port: None,
        action: Action::Audit,
    });
    rules
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let td = TrustDomain::new("weft.local")?;
    let policy = Policy::new(rules(args.rules), DefaultPolicy::Deny);
    // Callers: every third is named by a rule for this destination, the rest are not.
    let callers: Vec<SpiffeId> = (0..1024)
        .map(|i| SpiffeId::new(&td, IdentityKind::Service, &format!("caller-{}", i * 7)))
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let table = policy.for_destination(DESTINATION, Some(PORT));
    let precompute = started.elapsed();

    let started = Instant::now();
    let mut allowed = 0usize;
    for i in 0..args.checks {
        let id = &callers[i % callers.len()];
        let caller = Caller::of(black_box(id), td.as_str());
        allowed += usize::from(black_box(table.decide(caller)).allowed());
    }
    let check = started.elapsed();

    let scans = (args.checks / 1000).max(1000);
    let started = Instant::now();
    for i in 0..scans {
        let id = &callers[i % callers.len()];
        let caller = Caller::of(black_box(id), td.as_str());
        black_box(policy.decide(caller, DESTINATION, Some(PORT)));
    }
    let scan = started.elapsed();

    println!(
        "bench-authz: {} rules, destination {DESTINATION}:{PORT}",
        args.rules
    );
    println!(
        "precompute (per config change): {:>10.1} us",
        precompute.as_secs_f64() * 1e6
    );
    println!(
        "check (per stream/request):     {:>10.1} ns  ({} checks, {:.1}% allowed)",
        check.as_secs_f64() * 1e9 / args.checks as f64,
        args.checks,
        100.0 * allowed as f64 / args.checks as f64
    );
    println!(
        "scan of every rule (for comparison): {:>6.1} ns",
        scan.as_secs_f64() * 1e9 / scans as f64
    );
    Ok(())
}
