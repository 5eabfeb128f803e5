//! Route matching: the public host (and path) of a request → a mesh service.
//!
//! Exact hosts beat wildcards, a longer wildcard suffix beats a shorter one
//! (`*.api.example.com` over `*.example.com`), and within those a longer path prefix
//! wins. A wildcard covers one or more labels but never the bare parent domain. Prefixes
//! match on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.

use crate::control::config::{MeshConfig, RouteEntry};

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let p = prefix.trim_end_matches('/');
    path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
}

/// How specific a matching route is; larger wins.
fn specificity(route: &RouteEntry, host: &str) -> Option<(u8, usize, usize)> {
    let host_rank = if route.host == host {
        (1, route.host.len())
    } else if let Some(suffix) = route.host.strip_prefix("*.") {
        let covered = host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
        if !covered {
            return None;
        }
        (0, suffix.len())
    } else {
        return None;
    };
    Some((host_rank.0, host_rank.1, route.path_prefix.len()))
}

/// The most specific route for `host` (normalised) and `path`.
pub fn find<'a>(config: &'a MeshConfig, host: &str, path: &str) -> Option<&'a RouteEntry> {
    config
        .routes
        .values()
        .filter(|r| prefix_matches(&r.path_prefix, path))
        .filter_map(|r| specificity(r, host).map(|s| (s, r)))
        .max_by(|(a, ra), (b, rb)| a.cmp(b).then_with(|| rb.host.cmp(&ra.host)))
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &[(&str, &str, &str)]) -> MeshConfig {
        let mut c = MeshConfig::default();
        for (host, prefix, service) in routes {
            c.routes.insert(
                format!("{host}{prefix}"),
                RouteEntry {
                    host: (*host).into(),
                    path_prefix: (*prefix).into(),
                    service: (*service).into(),
                    rewrite_host: String::new(),
                    prefer_region: String::new(),
                },
            );
        }
        c
    }

    #[test]
    fn most_specific_wins() {
        let c = config(&[
            ("*.example.com", "/", "wild"),
            ("*.api.example.com", "/", "deeper"),
            ("api.example.com", "/", "exact"),
            ("api.example.com", "/v2", "exact-v2"),
        ]);
        let svc = |h: &str, p: &str| find(&c, h, p).map(|r| r.service.as_str());
        assert_eq!(svc("api.example.com", "/x"), Some("exact"));
        assert_eq!(svc("api.example.com", "/v2/users"), Some("exact-v2"));
        assert_eq!(svc("api.example.com", "/v2x"), Some("exact"));
        assert_eq!(svc("www.example.com", "/"), Some("wild"));
        assert_eq!(svc("a.b.example.com", "/"), Some("wild"));
        assert_eq!(svc("x.api.example.com", "/"), Some("deeper"));
        assert_eq!(
            svc("example.com", "/"),
            None,
            "a wildcard never covers its parent"
        );
        assert_eq!(svc("other.org", "/"), None);
    }
}
