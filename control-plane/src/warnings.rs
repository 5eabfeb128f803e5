//! Problems worth an operator's attention, worded once for every place that shows them:
//! `weftctl service get` (through `GetService`) and the dashboard.

use std::time::Duration;

use weft_proto::v1::{AppProtocol, Dataplane, Protocol, Service};

use crate::ca::rfc3339;

/// Dataplanes renew at 63% to 77% of their certificate's lifetime: with less than this
/// share left, a renewal is overdue.
const CERT_OVERDUE_SHARE: f64 = 0.2;

/// What the app should speak for a declared selector, if anything.
fn expected_app(protocol: Protocol) -> Option<AppProtocol> {
    match protocol {
        Protocol::Http => Some(AppProtocol::Http1),
        Protocol::Http2 | Protocol::Grpc => Some(AppProtocol::Http2),
        Protocol::Tcp | Protocol::Unspecified => None,
    }
}

/// Instances whose probed protocol contradicts the selector, or whose app is down.
pub fn selector_mismatch(service: &Service, dataplanes: &[Dataplane]) -> Vec<String> {
    let declared = Protocol::try_from(service.protocol).unwrap_or(Protocol::Unspecified);
    let Some(expected) = expected_app(declared) else {
        return Vec::new();
    };
    dataplanes
        .iter()
        .filter_map(|dp| {
            let seen = AppProtocol::try_from(dp.app_protocol).unwrap_or(AppProtocol::Unknown);
            let contradicts = matches!(seen, AppProtocol::Http1 | AppProtocol::Http2 | AppProtocol::Opaque)
                && seen != expected;
            if contradicts {
                let fix = match seen {
                    AppProtocol::Http1 => "http",
                    AppProtocol::Http2 => "http2",
                    _ => "tcp",
                };
                Some(format!(
                    "declared {}, app behind {} speaks {}; fix the app or run `weftctl service set-protocol {} {fix}`",
                    declared.selector_name(),
                    dp.address,
                    seen.display_name(),
                    service.name
                ))
            } else if seen == AppProtocol::Down {
                Some(format!("app behind {} refuses connections", dp.address))
            } else {
                None
            }
        })
        .collect()
}

/// A connected dataplane whose certificate expired or should have been renewed by
/// `now`, given the lifetime the control plane issues (`cert_ttl`).
pub fn certificate(d: &Dataplane, now: i64, cert_ttl: Duration) -> Option<String> {
    if !d.connected || d.cert_expiry == 0 {
        return None;
    }
    let left = d.cert_expiry - now;
    if left <= 0 {
        return Some(format!(
            "certificate of {} expired at {}; it can no longer renew: start it again with a new bootstrap token",
            d.id,
            rfc3339(d.cert_expiry)
        ));
    }
    let overdue = cert_ttl.as_secs_f64() * CERT_OVERDUE_SHARE;
    ((left as f64) < overdue).then(|| {
        format!(
            "certificate of {} expires at {} (in {}) and was due for renewal; check its log for renewal errors",
            d.id,
            rfc3339(d.cert_expiry),
            humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
        )
    })
}

/// A dataplane that rejected the latest config it was sent.
pub fn config_rejected(d: &Dataplane) -> Option<String> {
    (d.nacked_version > d.acked_version).then(|| {
        format!(
            "{} rejected config v{} ({}); it keeps v{}",
            d.id,
            d.nacked_version,
            if d.nack_error.is_empty() {
                "no reason given"
            } else {
                &d.nack_error
            },
            d.acked_version
        )
    })
}

/// Every warning about one dataplane.
pub fn for_dataplane(d: &Dataplane, now: i64, cert_ttl: Duration) -> Vec<String> {
    certificate(d, now, cert_ttl)
        .into_iter()
        .chain(config_rejected(d))
        .collect()
}

/// Every warning about a service and its dataplanes.
pub fn for_service(
    service: &Service,
    dataplanes: &[Dataplane],
    now: i64,
    cert_ttl: Duration,
) -> Vec<String> {
    let mut all = selector_mismatch(service, dataplanes);
    all.extend(
        dataplanes
            .iter()
            .flat_map(|d| for_dataplane(d, now, cert_ttl)),
    );
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(expiry: i64) -> Dataplane {
        Dataplane {
            id: "service/web/10.0.0.1:15008".into(),
            address: "10.0.0.1:15008".into(),
            connected: true,
            cert_expiry: expiry,
            ..Dataplane::default()
        }
    }

    #[test]
    fn certificates_warn_once_their_renewal_is_overdue() {
        let ttl = Duration::from_secs(1000);
        assert_eq!(
            certificate(&dp(1300), 1000, ttl),
            None,
            "30% left: renewal not due"
        );
        let due = certificate(&dp(1150), 1000, ttl).unwrap();
        assert!(
            due.contains("was due for renewal") && due.contains("in 2m 30s"),
            "{due}"
        );
        let expired = certificate(&dp(990), 1000, ttl).unwrap();
        assert!(expired.contains("expired"), "{expired}");
        let gone = Dataplane {
            connected: false,
            ..dp(990)
        };
        assert_eq!(
            certificate(&gone, 1000, ttl),
            None,
            "only connected dataplanes"
        );
    }

    #[test]
    fn a_rejected_config_is_a_warning_until_a_newer_one_is_acked() {
        let mut d = dp(0);
        d.acked_version = 4;
        d.nacked_version = 5;
        d.nack_error = "port 80 in use".into();
        assert_eq!(
            config_rejected(&d).unwrap(),
            "service/web/10.0.0.1:15008 rejected config v5 (port 80 in use); it keeps v4"
        );
        d.acked_version = 6;
        assert_eq!(config_rejected(&d), None);
    }

    #[test]
    fn selector_contradicting_the_app_names_the_fix() {
        let svc = Service {
            name: "api".into(),
            protocol: Protocol::Http2 as i32,
            ..Service::default()
        };
        let mut d = dp(0);
        d.app_protocol = AppProtocol::Http1 as i32;
        let w = selector_mismatch(&svc, &[d]);
        assert_eq!(
            w,
            [
                "declared http2, app behind 10.0.0.1:15008 speaks http/1.1; fix the app or run `weftctl service set-protocol api http`"
            ]
        );
    }
}
