//! The mesh TLS configs of this dataplane, rebuilt when its credentials rotate.
//!
//! Configs are cached per credentials value: a renewal or a new trust bundle publishes
//! new credentials, the next handshake builds fresh configs from them, and connections
//! already open keep the certificate they were made with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use weft_certs::{CertError, Credentials, SpiffeId, mesh_client_config, mesh_server_config};

/// ALPN of the tunnel.
pub const TUNNEL_ALPN: &[u8] = b"h2";

#[derive(Default)]
struct Cache {
    for_creds: Option<Arc<Credentials>>,
    server: Option<Arc<rustls::ServerConfig>>,
    clients: HashMap<String, Arc<rustls::ClientConfig>>,
}

/// Hands out server and client configs for the current credentials.
pub struct MeshTls {
    creds: watch::Receiver<Arc<Credentials>>,
    cache: Mutex<Cache>,
}

impl MeshTls {
    pub fn new(creds: watch::Receiver<Arc<Credentials>>) -> Arc<Self> {
        Arc::new(MeshTls {
            creds,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The credentials in effect now.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.creds.borrow().clone()
    }

    fn with_cache<T>(&self, f: impl FnOnce(&mut Cache, &Arc<Credentials>) -> T) -> T {
        let creds = self.credentials();
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
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

    /// Server side of the tunnel: requires a client certificate from the bundle.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, CertError> {
        self.with_cache(|cache, creds| {
            if let Some(s) = &cache.server {
                return Ok(s.clone());
            }
            let cfg = mesh_server_config(&creds.identity, &creds.bundle, &[TUNNEL_ALPN])?;
            cache.server = Some(cfg.clone());
            Ok(cfg)
        })
    }

    /// Client side of the tunnel: accepts only a server holding `expected`.
    pub fn client(&self, expected: &SpiffeId) -> Result<Arc<rustls::ClientConfig>, CertError> {
        self.with_cache(|cache, creds| {
            let key = expected.uri();
            if let Some(c) = cache.clients.get(&key) {
                return Ok(c.clone());
            }
            let cfg = mesh_client_config(&creds.identity, &creds.bundle, expected, &[TUNNEL_ALPN])?;
            cache.clients.insert(key, cfg.clone());
            Ok(cfg)
        })
    }
}
