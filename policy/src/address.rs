//! Which addresses the mesh may connect to on a dataplane's word: shared by the control
//! plane (when a dataplane announces its address) and the region ingress (before it
//! splices a connection there), so both refuse the same things.
//!
//! An announced address is where peers and ingresses open connections for whoever asks
//! by SNI, so it must never point the mesh at a host's own services: link-local
//! addresses (cloud metadata endpoints), unspecified, multicast and broadcast addresses
//! are always refused; loopback only in a mesh that runs on one host.

use std::net::IpAddr;

/// What kind of destination an address is, for the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A routable address.
    Routable,
    /// This host: only for a mesh on one host.
    Loopback,
    /// Never a dataplane: why.
    Forbidden(&'static str),
}

/// Classifies `ip` (an IPv4 address seen as IPv6 counts as IPv4).
pub fn classify(ip: IpAddr) -> Reach {
    let ip = ip.to_canonical();
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        Reach::Forbidden("cannot be connected to")
    } else if link_local {
        Reach::Forbidden("is link-local (it could reach a host's own metadata services)")
    } else if ip.is_loopback() {
        Reach::Loopback
    } else {
        Reach::Routable
    }
}

/// Whether the mesh may connect to `ip`; `single_host`: the mesh runs on one host,
/// where loopback is where every dataplane is.
pub fn may_connect(ip: IpAddr, single_host: bool) -> bool {
    match classify(ip) {
        Reach::Routable => true,
        Reach::Loopback => single_host,
        Reach::Forbidden(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(classify(ip("10.0.0.1")), Reach::Routable);
        assert_eq!(classify(ip("2001:db8::1")), Reach::Routable);
        assert_eq!(classify(ip("127.0.0.5")), Reach::Loopback);
        assert_eq!(classify(ip("::1")), Reach::Loopback);
        assert_eq!(classify(ip("::ffff:127.0.0.1")), Reach::Loopback);
        for bad in [
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(matches!(classify(ip(bad)), Reach::Forbidden(_)), "{bad}");
            assert!(!may_connect(ip(bad), true), "{bad}");
        }
        assert!(may_connect(ip("127.0.0.1"), true) && !may_connect(ip("127.0.0.1"), false));
    }
}
