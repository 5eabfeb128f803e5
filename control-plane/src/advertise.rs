//! Which addresses a dataplane may announce as its own.
//!
//! Other dataplanes connect to the announced address, and a region's ingress splices
//! public-facing connections to it: an address taken on trust would let any token
//! holder point the mesh at anything the ingress host reaches (its own loopback
//! services, a metadata endpoint, a port scan). So an announced address must be the
//! address the discovery stream comes from, or lie in a network the operator allowed
//! with `weft-cp --allow-advertise CIDR`; a host name must resolve (at the control
//! plane) only to such addresses. Loopback is accepted only when the control plane
//! itself listens on loopback, i.e. the whole mesh runs on one host (the quickstart,
//! the tests); link-local, unspecified and multicast addresses never are.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use weft_policy::address::Reach;

/// How long resolving an announced host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The rule, as configured at start.
#[derive(Clone, Debug, Default)]
pub struct AdvertisePolicy {
    /// The control plane listens on loopback: every dataplane is on this host.
    pub single_host: bool,
    /// `--allow-advertise` networks.
    pub allowed: Vec<IpNet>,
}

/// Parses a `--allow-advertise` value: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let v = value.trim();
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid network \"{value}\": use a CIDR like 10.0.0.0/8 or fd00::/8, or one address")
        })
}

impl AdvertisePolicy {
    /// Checks `address` (`host:port`, already syntactically valid) announced by a
    /// dataplane whose stream comes from `peer`. Host names are resolved here.
    pub async fn check(&self, address: &str, peer: Option<IpAddr>) -> Result<(), String> {
        let Some((host, _port)) = address.rsplit_once(':') else {
            return Err(format!(
                "invalid advertised address \"{address}\": use host:port"
            ));
        };
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ips: Vec<IpAddr> = match literal.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let resolved =
                    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address)).await;
                match resolved {
                    Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                    _ => Vec::new(),
                }
            }
        };
        if ips.is_empty() {
            return Err(format!(
                "advertised address \"{address}\" does not resolve at the control plane; set --advertise to an address or a name the control plane resolves"
            ));
        }
        for ip in ips {
            self.check_ip(address, ip, peer)?;
        }
        Ok(())
    }

    fn check_ip(&self, address: &str, ip: IpAddr, peer: Option<IpAddr>) -> Result<(), String> {
        let ip = ip.to_canonical();
        let shown = if address.starts_with(&ip.to_string()) {
            format!("\"{address}\"")
        } else {
            format!("\"{address}\" ({ip})")
        };
        match weft_policy::address::classify(ip) {
            Reach::Forbidden(why) => {
                return Err(format!(
                    "advertised address {shown} {why}, so it is never accepted; set --advertise to the address other dataplanes reach this one at"
                ));
            }
            Reach::Loopback if self.single_host => return Ok(()),
            Reach::Loopback => {
                return Err(format!(
                    "advertised address {shown} is a loopback address: other hosts cannot reach it, and an ingress must never splice to its own host; set --advertise to an address other dataplanes reach (or run weft-cp with --listen 127.0.0.1:PORT for a mesh on one host)"
                ));
            }
            Reach::Routable => {}
        }
        if peer.map(|p| p.to_canonical()) == Some(ip)
            || self.allowed.iter().any(|n| n.contains(&ip))
        {
            return Ok(());
        }
        let from = peer.map_or_else(
            || "an unknown address".to_owned(),
            |p| p.to_canonical().to_string(),
        );
        Err(format!(
            "advertised address {shown} is not the address this dataplane connects from ({from}); advertise that address, or allow the network with `weft-cp --allow-advertise CIDR`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy(single_host: bool, allowed: &[&str]) -> AdvertisePolicy {
        AdvertisePolicy {
            single_host,
            allowed: allowed.iter().map(|c| parse_cidr(c).unwrap()).collect(),
        }
    }

    #[tokio::test]
    async fn the_source_address_or_an_allowed_network_is_accepted() {
        let p = policy(false, &["10.1.0.0/16"]);
        let peer = Some(ip("192.0.2.7"));
        assert!(p.check("192.0.2.7:15008", peer).await.is_ok());
        assert!(p.check("10.1.2.3:15008", peer).await.is_ok());
        let e = p.check("192.0.2.8:15008", peer).await.unwrap_err();
        assert!(
            e.contains("192.0.2.7") && e.contains("--allow-advertise"),
            "{e}"
        );
        // An IPv4 peer seen through a dual-stack socket is the same address.
        assert!(
            p.check("192.0.2.7:1", Some(ip("::ffff:192.0.2.7")))
                .await
                .is_ok()
        );
        assert!(
            p.check("[2001:db8::1]:15008", Some(ip("2001:db8::1")))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn loopback_only_for_a_single_host_mesh_and_link_local_never() {
        let wide = policy(false, &["0.0.0.0/0"]);
        let e = wide
            .check("127.0.0.1:6379", Some(ip("127.0.0.1")))
            .await
            .unwrap_err();
        assert!(
            e.contains("loopback") && e.contains("--listen 127.0.0.1"),
            "{e}"
        );
        let local = policy(true, &[]);
        assert!(
            local
                .check("127.0.0.5:15008", Some(ip("127.0.0.1")))
                .await
                .is_ok()
        );
        assert!(
            local
                .check("[::1]:15008", Some(ip("127.0.0.1")))
                .await
                .is_ok()
        );
        for bad in [
            "169.254.169.254:80",
            "[fe80::1]:80",
            "0.0.0.0:15008",
            "224.0.0.1:1",
        ] {
            for p in [&wide, &local] {
                assert!(
                    p.check(bad, Some(ip("169.254.169.254"))).await.is_err(),
                    "{bad}"
                );
            }
        }
        // Outside a single-host mesh a non-loopback address must still match.
        assert!(
            local
                .check("192.0.2.9:15008", Some(ip("127.0.0.1")))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let p = policy(false, &[]);
        let e = p
            .check("localhost:15008", Some(ip("127.0.0.1")))
            .await
            .unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let e = p.check("does-not-exist.invalid:1", None).await.unwrap_err();
        assert!(e.contains("does not resolve"), "{e}");
        assert!(
            policy(true, &[])
                .check("localhost:15008", None)
                .await
                .is_ok()
        );
    }

    #[test]
    fn networks_parse() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("CIDR"));
    }
}
