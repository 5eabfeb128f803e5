//! SPIFFE ids as Weft uses them: `spiffe://<trust-domain>/<kind>/<name>`.
//!
//! Weft deliberately accepts a narrow subset of SPIFFE: exactly two path segments, a fixed
//! set of kinds and DNS-label-like names. A narrow grammar means a certificate's identity can
//! be compared as a string without normalisation surprises, and a name that is valid here is
//! also valid as a DNS label, a metric label and a file name.

use std::fmt;

use crate::error::IdError;

/// Longest accepted trust domain (the SPIFFE spec's limit).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest accepted workload name (a DNS label).
const MAX_NAME_LEN: usize = 63;
const SCHEME: &str = "spiffe://";

/// A validated trust domain, e.g. `weft.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates `s`: 1..=255 of lowercase `[a-z0-9.-]`, no leading/trailing `.` or `-`,
    /// no empty label (`..`).
    pub fn new(s: &str) -> Result<Self, IdError> {
        let err = |reason| IdError::TrustDomain {
            value: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(err("it is longer than 255 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(err(
                "it contains a character other than a-z, 0-9, '.' and '-'",
            ));
        }
        if s.starts_with(['.', '-']) || s.ends_with(['.', '-']) {
            return Err(err("it starts or ends with '.' or '-'"));
        }
        if s.contains("..") {
            return Err(err("it contains an empty label (\"..\")"));
        }
        Ok(TrustDomain(s.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of workload an identity belongs to; the first path segment of the id.
///
/// The kind is part of the identity so that a gateway token can never yield a service
/// identity with the same name (and vice versa).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// An application's sidecar: `/service/<name>`.
    Service,
    /// A public edge gateway: `/gateway/<name>`.
    Gateway,
    /// A region ingress: `/ingress/<name>`.
    Ingress,
    /// The control plane itself: `/control-plane/<name>`.
    ControlPlane,
}

impl IdentityKind {
    /// The path segment used in the SPIFFE id.
    pub fn segment(&self) -> &'static str {
        match self {
            IdentityKind::Service => "service",
            IdentityKind::Gateway => "gateway",
            IdentityKind::Ingress => "ingress",
            IdentityKind::ControlPlane => "control-plane",
        }
    }

    /// The kind for a path segment, if it is one of the four known ones.
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "service" => Some(IdentityKind::Service),
            "gateway" => Some(IdentityKind::Gateway),
            "ingress" => Some(IdentityKind::Ingress),
            "control-plane" => Some(IdentityKind::ControlPlane),
            _ => None,
        }
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// A workload identity: `spiffe://<trust_domain>/<kind>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    kind: IdentityKind,
    name: String,
}

impl SpiffeId {
    /// Builds an id from validated parts; `name` must pass [`validate_name`].
    pub fn new(td: &TrustDomain, kind: IdentityKind, name: &str) -> Result<Self, IdError> {
        validate_name(name)?;
        Ok(SpiffeId {
            trust_domain: td.clone(),
            kind,
            name: name.to_owned(),
        })
    }

    /// Parses `spiffe://<td>/<segment>/<name>` with exactly two path segments.
    pub fn parse(uri: &str) -> Result<Self, IdError> {
        let err = |reason: String| IdError::Uri {
            value: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("it does not start with \"spiffe://\"".to_owned()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| err("it has no path".to_owned()))?;
        let trust_domain = TrustDomain::new(td).map_err(|e| err(e.to_string()))?;
        let mut segments = path.split('/');
        let (Some(kind), Some(name), None) = (segments.next(), segments.next(), segments.next())
        else {
            return Err(err("the path must have exactly two segments".to_owned()));
        };
        let kind = IdentityKind::from_segment(kind).ok_or_else(|| {
            err(format!(
                "unknown kind {kind:?} (expected service, gateway, ingress or control-plane)"
            ))
        })?;
        validate_name(name).map_err(|e| err(e.to_string()))?;
        Ok(SpiffeId {
            trust_domain,
            kind,
            name: name.to_owned(),
        })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// The kind (first path segment).
    pub fn kind(&self) -> &IdentityKind {
        &self.kind
    }

    /// The workload name (second path segment).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full `spiffe://` URI.
    pub fn uri(&self) -> String {
        format!(
            "{SCHEME}{}/{}/{}",
            self.trust_domain,
            self.kind.segment(),
            self.name
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Checks a workload name: 1..=63 of `[a-z0-9-]`, starting with a letter, not ending with `-`.
///
/// Exposed so the control plane validates service names with the very same rule that
/// identities use; a service that can be created can always get a certificate.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    let err = |reason| IdError::Name {
        value: name.to_owned(),
        reason,
    };
    let Some(first) = name.bytes().next() else {
        return Err(err("it is empty"));
    };
    if name.len() > MAX_NAME_LEN {
        return Err(err("it is longer than 63 characters"));
    }
    if !first.is_ascii_lowercase() {
        return Err(err("it does not start with a lowercase letter"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("it contains a character other than a-z, 0-9 and '-'"));
    }
    if name.ends_with('-') {
        return Err(err("it ends with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("weft.local").unwrap()
    }

    #[test]
    fn trust_domain_rules() {
        for ok in ["weft.local", "a", "example-1.org", "x.y.z"] {
            assert!(TrustDomain::new(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "Weft.local",
            ".weft",
            "weft.",
            "-weft",
            "weft-",
            "we ft",
            "we_ft",
            "a..b",
            long.as_str(),
        ] {
            assert!(TrustDomain::new(bad).is_err(), "{bad}");
        }
        assert!(TrustDomain::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn name_rules() {
        for ok in ["a", "billing-api", "x1", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "-a", "a-", "Abc", "a_b", "a.b", &"a".repeat(64)] {
            let e = validate_name(bad).unwrap_err();
            assert!(e.to_string().contains("starting with a letter"), "{e}");
        }
    }

    #[test]
    fn uri_round_trip() {
        for kind in [
            IdentityKind::Service,
            IdentityKind::Gateway,
            IdentityKind::Ingress,
            IdentityKind::ControlPlane,
        ] {
            let id = SpiffeId::new(&td(), kind.clone(), "web").unwrap();
            let parsed = SpiffeId::parse(&id.uri()).unwrap();
            assert_eq!(parsed, id);
            assert_eq!(parsed.kind(), &kind);
            assert_eq!(parsed.name(), "web");
            assert_eq!(parsed.trust_domain(), "weft.local");
            assert_eq!(id.to_string(), id.uri());
        }
        assert_eq!(
            SpiffeId::new(&td(), IdentityKind::ControlPlane, "cp")
                .unwrap()
                .uri(),
            "spiffe://weft.local/control-plane/cp"
        );
    }

    #[test]
    fn parse_rejects() {
        for bad in [
            "http://weft.local/service/a",
            "spiffe://weft.local",
            "spiffe://weft.local/",
            "spiffe://weft.local/service",
            "spiffe://weft.local/service/",
            "spiffe://weft.local/service/a/b",
            "spiffe://weft.local/service/a/",
            "spiffe://weft.local/pod/a",
            "spiffe://WEFT.local/service/a",
            "spiffe://weft.local:443/service/a",
            "spiffe://u@weft.local/service/a",
            "spiffe://weft.local/service/a?x=1",
            "spiffe://weft.local/service/a#f",
            "spiffe:///service/a",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
