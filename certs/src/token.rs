//! Bootstrap tokens: how a new sidecar, gateway or ingress proves it may obtain one
//! specific identity, and how it learns which control plane to trust before it holds the
//! trust bundle.
//!
//! A token is `weft1.<payload>.<mac>` (base64url, no padding). The payload names the
//! token id, the identity kind and name, the expiry and the SHA-256 of the mesh CA
//! certificate; the MAC is HMAC-SHA256 under a key only the control plane holds. The
//! CA fingerprint lets the holder pin the control plane's TLS chain on first contact
//! (like `kubeadm join --discovery-token-ca-cert-hash`), so no CA file has to be
//! copied around. Revocation is checked by the control plane against its store on
//! every use; the MAC makes tokens unforgeable without a store lookup.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::IdentityKind;

const PREFIX: &str = "weft1";

/// Why a token was refused. The messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "malformed bootstrap token ({0}); copy the whole last line printed by `weftctl token create`"
    )]
    Malformed(&'static str),
    #[error(
        "bootstrap token signature does not verify: it was not issued by this control plane; create one with `weftctl token create`"
    )]
    BadSignature,
}

/// What a bootstrap token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapClaims {
    /// Public id, used to list and revoke the token.
    pub id: String,
    /// Identity kind the token may obtain.
    pub kind: IdentityKind,
    /// Service, gateway or ingress name.
    pub name: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Lowercase hex SHA-256 of the mesh CA certificate (DER) at creation time.
    pub ca_sha256: String,
    /// Trust domain of the mesh, so the holder can name the identity it asks for.
    pub trust_domain: String,
}

fn kind_str(kind: &IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Service => "service",
        IdentityKind::Gateway => "gateway",
        IdentityKind::Ingress => "ingress",
        IdentityKind::ControlPlane => "control-plane",
    }
}

fn kind_parse(s: &str) -> Option<IdentityKind> {
    match s {
        "service" => Some(IdentityKind::Service),
        "gateway" => Some(IdentityKind::Gateway),
        "ingress" => Some(IdentityKind::Ingress),
        _ => None,
    }
}

impl BootstrapClaims {
    fn payload(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.id,
            kind_str(&self.kind),
            self.name,
            self.expires_at,
            self.ca_sha256,
            self.trust_domain
        )
    }

    /// Encodes and signs the claims with `key`.
    pub fn sign(&self, key: &[u8]) -> String {
        let payload = URL_SAFE_NO_PAD.encode(self.payload());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let tag = ring::hmac::sign(&key, payload.as_bytes());
        format!(
            "{PREFIX}.{payload}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }
}

fn split(token: &str) -> Result<(&str, &str), TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(prefix), Some(payload), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed("unknown token version"));
    }
    Ok((payload, mac))
}

fn decode_payload(payload: &str) -> Result<BootstrapClaims, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| TokenError::Malformed("payload is not UTF-8"))?;
    let fields: Vec<&str> = text.split('|').collect();
    let [id, kind, name, expires_at, ca_sha256, trust_domain] = fields.as_slice() else {
        return Err(TokenError::Malformed(
            "payload has the wrong number of fields",
        ));
    };
    Ok(BootstrapClaims {
        id: (*id).to_owned(),
        kind: kind_parse(kind).ok_or(TokenError::Malformed("unknown identity kind"))?,
        name: (*name).to_owned(),
        expires_at: expires_at
            .parse()
            .map_err(|_| TokenError::Malformed("expiry is not a number"))?,
        ca_sha256: (*ca_sha256).to_owned(),
        trust_domain: (*trust_domain).to_owned(),
    })
}

impl BootstrapClaims {
    /// The SPIFFE id this token allows.
    pub fn spiffe_id(&self) -> Result<crate::SpiffeId, crate::IdError> {
        let td = crate::TrustDomain::new(&self.trust_domain)?;
        crate::SpiffeId::new(&td, self.kind.clone(), &self.name)
    }
}

/// Reads the claims without checking the MAC. The holder uses this to learn the CA
/// fingerprint to pin; it grants nothing by itself.
pub fn parse_unverified(token: &str) -> Result<BootstrapClaims, TokenError> {
    let (payload, _) = split(token)?;
    decode_payload(payload)
}

/// Checks the MAC with `key` and returns the claims. Expiry and revocation are the
/// caller's to check (they need the clock and the store).
pub fn verify(token: &str, key: &[u8]) -> Result<BootstrapClaims, TokenError> {
    let (payload, mac) = split(token)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, payload.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
    decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> BootstrapClaims {
        BootstrapClaims {
            id: "t-1234".into(),
            kind: IdentityKind::Service,
            name: "web".into(),
            expires_at: 1_900_000_000,
            ca_sha256: "ab".repeat(32),
            trust_domain: "weft.local".into(),
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let key = b"0123456789abcdef0123456789abcdef";
        let token = claims().sign(key);
        assert_eq!(verify(&token, key).unwrap(), claims());
        assert_eq!(parse_unverified(&token).unwrap(), claims());
        assert_eq!(
            verify(&token, b"another key"),
            Err(TokenError::BadSignature)
        );

        // Changing the payload (e.g. to another service) breaks the MAC.
        let mut forged = claims();
        forged.name = "db".into();
        let forged_payload = forged.sign(b"attacker key");
        let (_, mac) = split(&token).unwrap();
        let (payload, _) = split(&forged_payload).unwrap();
        let spliced = format!("weft1.{payload}.{mac}");
        assert_eq!(verify(&spliced, key), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_say_so() {
        for bad in ["", "weft1.abc", "weft2.a.b", "weft1.!!!.abc", "a.b.c.d"] {
            assert!(matches!(
                parse_unverified(bad),
                Err(TokenError::Malformed(_))
            ));
        }
    }
}
