//! Input rules for the admin API. Each error message says what is wrong and what a
//! valid value looks like, because it reaches the operator verbatim.

use weft_proto::v1::Protocol;

/// Service, gateway and ingress names: they end up in SPIFFE ids and DNS-like places.
pub fn name(kind: &str, name: &str) -> Result<(), String> {
    weft_certs::validate_name(name).map_err(|e| format!("invalid {kind} name \"{name}\": {e}"))
}

/// A protocol selector sent by an API client. Unknown numbers are refused with the list
/// of valid values; `allow_unset` admits PROTOCOL_UNSPECIFIED (behaves as tcp).
pub fn protocol(value: i32, allow_unset: bool) -> Result<Protocol, String> {
    match Protocol::try_from(value) {
        Ok(Protocol::Unspecified) if allow_unset => Ok(Protocol::Unspecified),
        Ok(Protocol::Unspecified) => Err(format!(
            "protocol is required here; valid values are {}",
            Protocol::VALID_SELECTORS
        )),
        Ok(p) => Ok(p),
        Err(_) => Err(format!(
            "unknown protocol value {value}; valid values are {}",
            Protocol::VALID_SELECTORS
        )),
    }
}

/// Outbound ports: 0 (none) or 1-65535.
pub fn port(port: u32) -> Result<(), String> {
    if port > 65_535 {
        return Err(format!(
            "invalid port {port}: use 1-65535, or leave it unset for a service without an outbound listener"
        ));
    }
    Ok(())
}

fn dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Normalises and checks a route host: lowercase, no trailing dot, no port; either a DNS
/// name or `*.` followed by one (the wildcard never matches the bare parent domain).
pub fn route_host(host: &str) -> Result<String, String> {
    let h = host.trim().to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h).to_owned();
    let bare = h.strip_prefix("*.").unwrap_or(&h);
    let hint = "use a DNS name like api.example.com or a wildcard like *.example.com (no scheme, port or path)";
    if h.is_empty() || h.len() > 253 {
        return Err(format!("invalid route host \"{host}\": {hint}"));
    }
    if bare.contains('*') {
        return Err(format!(
            "invalid route host \"{host}\": a wildcard may only be the whole first label (\"*.\"); {hint}"
        ));
    }
    if !bare.split('.').all(dns_label) {
        return Err(format!("invalid route host \"{host}\": {hint}"));
    }
    Ok(h)
}

/// Path prefixes start with '/', and contain no whitespace, control characters, '?' or '#'.
pub fn path_prefix(prefix: &str) -> Result<String, String> {
    if prefix.is_empty() {
        return Ok("/".to_owned());
    }
    if !prefix.starts_with('/')
        || prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "invalid path prefix \"{prefix}\": it must start with '/' and contain no spaces, '?' or '#' (e.g. /api)"
        ));
    }
    Ok(prefix.to_owned())
}

/// A host rewrite: empty (none) or host[:port].
pub fn rewrite_host(value: &str) -> Result<String, String> {
    let v = value.trim().to_ascii_lowercase();
    if v.is_empty() {
        return Ok(v);
    }
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (v.as_str(), None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || host.is_empty() || !host.split('.').all(dns_label) {
        return Err(format!(
            "invalid rewrite host \"{value}\": use host or host:port, e.g. internal.svc or internal.svc:8080"
        ));
    }
    Ok(v)
}

/// Region labels: dataplane regions (`--region`) and the region a route prefers
/// (`--prefer-region`). Empty (the default region, or no preference) is allowed; `flag`
/// is where the operator sets the value, named in the message.
pub fn region(value: &str, flag: &str) -> Result<(), String> {
    if value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "invalid region \"{value}\": use up to 63 of [a-z0-9-] (e.g. eu, us-east); set it with {flag}"
        ))
    }
}

/// `host:port` addresses dataplanes advertise.
pub fn address(addr: &str) -> Result<(), String> {
    let ok = match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.contains(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid advertised address \"{addr}\": use host:port (e.g. 10.0.0.5:15008); set it with --advertise"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(route_host("API.Example.com.").unwrap(), "api.example.com");
        assert_eq!(route_host("*.example.com").unwrap(), "*.example.com");
        for bad in [
            "",
            "*",
            "a.*.com",
            "example.com:80",
            "http://x",
            "a b.com",
            "-a.com",
            "*example.com",
        ] {
            assert!(route_host(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn prefixes_and_rewrites() {
        assert_eq!(path_prefix("").unwrap(), "/");
        assert_eq!(path_prefix("/api").unwrap(), "/api");
        assert!(path_prefix("api").is_err());
        assert!(path_prefix("/a b").is_err());
        assert_eq!(rewrite_host("Internal:8080").unwrap(), "internal:8080");
        assert!(rewrite_host("a:0").is_err());
        assert!(rewrite_host("a b").is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(protocol(3, false).unwrap(), Protocol::Http2);
        assert!(protocol(0, false).is_err());
        assert_eq!(protocol(0, true).unwrap(), Protocol::Unspecified);
        let err = protocol(42, true).unwrap_err();
        assert!(err.contains("tcp, http, http2, grpc"), "{err}");
    }

    #[test]
    fn regions() {
        for ok in ["", "eu", "us-east-1", "1a"] {
            assert!(region(ok, "--region").is_ok(), "{ok} refused");
        }
        for bad in ["EU", "us east", "eu_west", "é", &"a".repeat(64)] {
            assert!(region(bad, "--region").is_err(), "{bad} accepted");
        }
        let err = region("US", "--prefer-region").unwrap_err();
        assert!(
            err.contains("--prefer-region") && err.contains("\"US\""),
            "{err}"
        );
    }

    #[test]
    fn ports_and_addresses() {
        assert!(port(0).is_ok() && port(65_535).is_ok() && port(65_536).is_err());
        assert!(address("10.0.0.1:15008").is_ok());
        assert!(address("[::1]:15008").is_ok());
        assert!(address("10.0.0.1").is_err() && address(":1").is_err() && address("a:0").is_err());
    }
}
