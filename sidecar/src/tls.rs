//! The mesh TLS configs of this dataplane, rebuilt when its credentials rotate.
//!
//! Configs are cached per credentials value: a renewal or a new trust bundle publishes
//! new credentials, the next handshake builds fresh configs from them, and connections
//! already open keep the certificate they were made with.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::watch;
use weft_certs::{
    CertError, Credentials, Revocations, SpiffeId, mesh_client_config_with_revocations,
    mesh_server_config_with_revocations,
};

/// The two protocols of the inbound port, told apart by ALPN on the mTLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeshAlpn {
    /// `h2`: HTTP/2 whose streams are `CONNECT` tunnels carrying raw bytes (sidecar
    /// outbound traffic; translation, if any, at the last hop).
    Tunnel,
    /// `weft-http/2`: plain HTTP/2, one request per stream, served directly by the
    /// inbound's translating server (L7 callers: the gateway).
    Http,
}

impl MeshAlpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            MeshAlpn::Tunnel => b"h2",
            MeshAlpn::Http => b"weft-http/2",
        }
    }

    /// The protocol a handshake agreed on.
    pub fn of(negotiated: Option<&[u8]>) -> Option<Self> {
        [MeshAlpn::Tunnel, MeshAlpn::Http]
            .into_iter()
            .find(|a| negotiated == Some(a.id()))
    }
}

#[derive(Default)]
struct Cache {
    for_creds: Option<Arc<Credentials>>,
    server: Option<Arc<rustls::ServerConfig>>,
    clients: HashMap<(String, MeshAlpn), Arc<rustls::ClientConfig>>,
}

/// Hands out server and client configs for the current credentials. Every config
/// refuses the peer certificates in [`MeshTls::revoked`] (checked at each handshake, so
/// a list pushed later applies to configs already built).
pub struct MeshTls {
    creds: watch::Receiver<Arc<Credentials>>,
    cache: Mutex<Cache>,
    revoked: Arc<Revocations>,
}

impl MeshTls {
    pub fn new(creds: watch::Receiver<Arc<Credentials>>) -> Arc<Self> {
        Arc::new(MeshTls {
            creds,
            cache: Mutex::new(Cache::default()),
            revoked: Revocations::new(),
        })
    }

    /// The revoked certificates this dataplane refuses (see [`crate::authz::follow_revocations`]).
    pub fn revoked(&self) -> &Arc<Revocations> {
        &self.revoked
    }

    /// The credentials in effect now.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.creds.borrow().clone()
    }

    fn with_cache<T>(&self, f: impl FnOnce(&mut Cache, &Arc<Credentials>) -> T) -> T {
        let creds = self.credentials();
        let mut cache = self.cache.lock();
        if !cache
            .for_creds
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &creds))
        {
            *cache = Cache {
                for_creds: Some(creds.clone()),
                ..Cache::default()
            };
        }
        f(&mut cache, &creds)
    }

    /// Server side of the inbound port: requires a client certificate from the bundle,
    /// offers both [`MeshAlpn`] protocols.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        self.with_cache(|cache, creds| {
            if let Some(s) = &cache.server {
                return Ok(s.clone());
            }
            let alpn = [MeshAlpn::Tunnel.id(), MeshAlpn::Http.id()];
            let cfg = mesh_server_config_with_revocations(
                &creds.identity,
                &creds.bundle,
                &alpn,
                &self.revoked,
            )?;
            cache.server = Some(cfg.clone());
            Ok(cfg)
        })
    }

    /// Client side: speaks `alpn`, accepts only a server holding `expected`.
    pub fn client(
        &self,
        expected: &SpiffeId,
        alpn: MeshAlpn,
    ) -> Result<Arc<rustls::ClientConfig>, CertError> {
        self.with_cache(|cache, creds| {
            let key = (expected.uri(), alpn);
            if let Some(c) = cache.clients.get(&key) {
                return Ok(c.clone());
            }
            let cfg = mesh_client_config_with_revocations(
                &creds.identity,
                &creds.bundle,
                expected,
                &[alpn.id()],
                &self.revoked,
            )?;
            cache.clients.insert(key, cfg.clone());
            Ok(cfg)
        })
    }
}
