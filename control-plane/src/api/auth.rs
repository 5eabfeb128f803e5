//! Who is calling: an operator's token for the admin API and the dashboard, the mesh
//! certificate on the TLS connection for dataplanes.
//!
//! Operators present the admin token (full access) or a viewer token (read-only:
//! `weftctl token create --viewer NAME`). The dashboard turns either into a session
//! cookie at login, so the token itself does not sit in the browser. Every credential
//! is checked here, by [`Authenticator`], for the admin API ([`super::gate`]) and the
//! dashboard alike.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Request;
use weft_certs::SpiffeId;

use crate::registry::now_unix;
use crate::store::{Store, StoreError, TokenKind};

/// SHA-256 of a token, the only form in which the admin token is kept.
pub fn token_sha256(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes())
        .as_ref()
        .to_vec()
}

/// Who a credential stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: every call.
    Admin,
    /// A viewer token: list and get calls only.
    Viewer { token_id: String, name: String },
}

impl Principal {
    /// How logs and the dashboard name the caller.
    pub fn label(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Viewer { name, token_id } => format!("viewer {name} ({token_id})"),
        }
    }
}

/// Why a credential was refused. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this needs a token: send `authorization: Bearer <token>` with the admin token (<data-dir>/admin.token) or a viewer token from `weftctl token create --viewer NAME` (weftctl: --token or WEFT_TOKEN)"
    )]
    Missing,
    #[error(
        "the token is not valid here; use the admin token in <data-dir>/admin.token or a viewer token from `weftctl token create --viewer NAME` (weftctl: --token or WEFT_TOKEN)"
    )]
    Wrong,
    #[error(
        "viewer token {0} was revoked; create a new one with `weftctl token create --viewer NAME`"
    )]
    Revoked(String),
    #[error("viewer token {0} expired; create a new one with `weftctl token create --viewer NAME`")]
    Expired(String),
    #[error("the dashboard session expired; log in again")]
    SessionExpired,
    #[error("the control plane could not check the token: {0}")]
    Store(StoreError),
}

/// Viewer tokens are `weftview1.<token id>.<mac>`: the MAC (HMAC-SHA256 under the
/// store's token key) proves the control plane issued the id, and everything else
/// (name, expiry, revocation) is read from the store on every use.
const VIEWER_PREFIX: &str = "weftview1";
/// Dashboard sessions are `weftsession1.<admin|viewer>.<token id>.<expires>.<mac>`.
const SESSION_PREFIX: &str = "weftsession1";

/// HMAC-SHA256 of `message` under `key`, base64url. Each kind of credential MACs a
/// message with its own prefix, so one can never pass for another.
fn mac(key: &[u8], message: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, message.as_bytes()).as_ref())
}

fn mac_matches(key: &[u8], message: &str, tag: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, message.as_bytes(), &tag).is_ok()
}

/// The secret viewer token for the stored token `id`.
pub fn viewer_token(id: &str, key: &[u8]) -> String {
    format!("{VIEWER_PREFIX}.{id}.{}", mac(key, &format!("viewer|{id}")))
}

/// The id of a viewer token issued by this control plane, if `token` is one.
fn viewer_token_id<'a>(token: &'a str, key: &[u8]) -> Option<&'a str> {
    let rest = token.strip_prefix(VIEWER_PREFIX)?.strip_prefix('.')?;
    let (id, tag) = rest.split_once('.')?;
    mac_matches(key, &format!("viewer|{id}"), tag).then_some(id)
}

/// Checks the credentials of operators: tokens on the admin API, sessions on the
/// dashboard.
pub struct Authenticator {
    admin_sha256: Vec<u8>,
    token_key: Vec<u8>,
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub fn new(admin_sha256: Vec<u8>, token_key: Vec<u8>, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Authenticator {
            admin_sha256,
            token_key,
            store,
        })
    }

    /// Who `token` stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Comparing digests: timing reveals nothing useful about the token itself.
        if token_sha256(token) == self.admin_sha256 {
            return Ok(Principal::Admin);
        }
        let id = viewer_token_id(token, &self.token_key).ok_or(AuthError::Wrong)?;
        self.viewer(id, now_unix()).await
    }

    /// The viewer behind the stored token `id`, if it may still be used at `now`.
    async fn viewer(&self, id: &str, now: i64) -> Result<Principal, AuthError> {
        let record = match self.store.get_token(id).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return Err(AuthError::Wrong),
            Err(e) => return Err(AuthError::Store(e)),
        };
        if record.kind != TokenKind::Viewer {
            return Err(AuthError::Wrong);
        }
        if record.revoked_at != 0 {
            return Err(AuthError::Revoked(record.id));
        }
        if now >= record.expires_at {
            return Err(AuthError::Expired(record.id));
        }
        Ok(Principal::Viewer {
            token_id: record.id,
            name: record.name,
        })
    }

    /// The value of an `authorization` header: `Bearer <token>`.
    pub async fn authenticate_bearer(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let value = header.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Missing)?;
        self.authenticate(token).await
    }

    /// A session for `principal` until `expires` (Unix seconds), for a cookie.
    pub fn session(&self, principal: &Principal, expires: i64) -> String {
        let (kind, id) = match principal {
            Principal::Admin => ("admin", "-"),
            Principal::Viewer { token_id, .. } => ("viewer", token_id.as_str()),
        };
        let body = format!("{kind}.{id}.{expires}");
        format!(
            "{SESSION_PREFIX}.{body}.{}",
            mac(&self.token_key, &format!("session|{body}"))
        )
    }

    /// Who a session cookie stands for. A viewer's session ends with its token: it is
    /// checked against the store each time, so revoking the token ends the session.
    pub async fn authenticate_session(&self, session: &str) -> Result<Principal, AuthError> {
        let rest = session
            .strip_prefix(SESSION_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(AuthError::Wrong)?;
        let (body, tag) = rest.rsplit_once('.').ok_or(AuthError::Wrong)?;
        if !mac_matches(&self.token_key, &format!("session|{body}"), tag) {
            return Err(AuthError::Wrong);
        }
        let mut parts = body.splitn(3, '.');
        let (Some(kind), Some(id), Some(expires)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Wrong);
        };
        let now = now_unix();
        if expires.parse::<i64>().map_or(true, |e| now >= e) {
            return Err(AuthError::SessionExpired);
        }
        match kind {
            "admin" => Ok(Principal::Admin),
            "viewer" => self.viewer(id, now).await,
            _ => Err(AuthError::Wrong),
        }
    }
}

/// The certificate a dataplane presented on its TLS connection.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub id: SpiffeId,
    /// Expiry of the leaf (unix seconds; 0 when unreadable).
    pub not_after: i64,
    /// Lowercase hex serial of the leaf.
    pub serial: String,
}

/// The caller's mesh identity, if its TLS connection presented a certificate (the TLS
/// layer has already checked that it chains to the trust bundle).
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerCert> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let id = weft_certs::spiffe_id_of(leaf.as_ref()).ok()?;
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let serial = weft_certs::serial_hex(leaf.as_ref()).ok()?;
    Some(PeerCert {
        id,
        not_after,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_tokens_verify_only_under_their_key_and_prefix() {
        let key = b"key-one";
        let token = viewer_token("tok-12", key);
        assert_eq!(viewer_token_id(&token, key), Some("tok-12"));
        assert_eq!(viewer_token_id(&token, b"key-two"), None);
        let forged = token.replace("tok-12", "tok-13");
        assert_eq!(viewer_token_id(&forged, key), None);
        assert_eq!(viewer_token_id("weft1.abc.def", key), None);
        assert_eq!(viewer_token_id("weftview1.tok-12", key), None);
    }
}
