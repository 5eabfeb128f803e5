//! Workload-side certificate rotation.
//!
//! The sidecar owns an [`IdentityManager`]; it publishes the current [`Credentials`] through
//! a `tokio::sync::watch` channel, and the listeners/connectors rebuild their rustls configs
//! when it changes. Connections that are already open keep the identity they handshook with
//! (TLS does not re-authenticate mid-connection), so rotation never drops a connection.
//!
//! Policy, from DESIGN.md §4: renew at about 70% of the lifetime with ±10% jitter (so a fleet
//! started together does not hit the CA together), a fresh key per renewal, the old identity
//! kept until the new one is in hand, and exponential backoff (1 s doubling to 30 s) on failure.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::bundle::TrustBundle;
use crate::ca::CLOCK_SKEW_ALLOWANCE;
use crate::error::{CertError, IssueError};
use crate::identity::{Identity, generate_csr};
use crate::spiffe::SpiffeId;
use crate::tls::verify_chain;

/// Fraction of the lifetime after which a certificate is renewed.
const RENEW_FRACTION: f64 = 0.7;
/// Jitter applied to [`RENEW_FRACTION`], as a fraction of it (±10%).
const RENEW_JITTER: f64 = 0.1;
/// First retry delay after a failed renewal.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay: short enough that a control plane coming back is noticed quickly.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Never schedule renewals closer together than this, so a certificate with almost no
/// lifetime left (e.g. capped by an expiring CA) cannot make the sidecar hammer the CA.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// Anything that can turn a CSR into a certificate. The sidecar implements it with the
/// gRPC identity client; tests implement it with an in-memory CA.
pub trait Issuer: Send + Sync + 'static {
    /// Sends `csr_pem` to the CA. The error's message is logged as-is, so make it say
    /// what failed; its kind says whether a retry can help.
    fn issue(&self, csr_pem: String) -> impl Future<Output = Result<IssuedPem, IssueError>> + Send;
}

/// What the CA returns for a CSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedPem {
    /// The leaf then its issuers, PEM.
    pub cert_chain_pem: String,
    /// The mesh trust bundle at issuance time, PEM.
    pub trust_bundle_pem: String,
}

/// A workload's current identity and the bundle it verifies peers with.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The workload's own certificate and key.
    pub identity: Identity,
    /// The roots peers must chain to.
    pub bundle: TrustBundle,
}

/// Holds the current credentials, publishes changes, and renews the certificate.
#[derive(Debug)]
pub struct IdentityManager {
    id: SpiffeId,
    tx: watch::Sender<Arc<Credentials>>,
}

impl IdentityManager {
    /// Starts from credentials obtained at bootstrap (or loaded from the state dir).
    ///
    /// If `initial` does not carry `id` (e.g. the service was renamed while the sidecar was
    /// down), it is still published, and [`IdentityManager::run`] replaces it at once.
    pub fn new(id: SpiffeId, initial: Identity, bundle: TrustBundle) -> Self {
        if initial.spiffe_id() != &id {
            warn!(
                expected = %id,
                held = %initial.spiffe_id(),
                "the stored certificate is for another identity; it will be replaced immediately"
            );
        }
        let (tx, _rx) = watch::channel(Arc::new(Credentials {
            identity: initial,
            bundle,
        }));
        IdentityManager { id, tx }
    }

    /// The identity this manager maintains.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// A receiver that sees every published change (new identity or new bundle).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.tx.subscribe()
    }

    /// The credentials in effect now.
    pub fn current(&self) -> Arc<Credentials> {
        Arc::clone(&self.tx.borrow())
    }

    /// Publishes a trust bundle pushed by the control plane (e.g. during CA rotation).
    ///
    /// Publishing an identical bundle again is a no-op, so repeated pushes do not make every
    /// subscriber rebuild its TLS configs.
    pub fn update_bundle(&self, bundle: TrustBundle) {
        self.tx.send_if_modified(|creds| {
            if creds.bundle == bundle {
                return false;
            }
            if let Err(e) = verify_chain(creds.identity.chain(), &bundle) {
                warn!(
                    error = %e,
                    "the new trust bundle does not cover this workload's certificate; peers \
                     using it will refuse this workload until the next renewal"
                );
            }
            info!(roots = ?bundle.sha256_hexes(), "trust bundle updated");
            *creds = Arc::new(Credentials {
                identity: creds.identity.clone(),
                bundle,
            });
            true
        });
    }

    /// Renews the certificate forever. Cancel by dropping the future (e.g. `select!`/abort).
    ///
    /// Each renewal publishes the new identity together with the bundle the CA returned with
    /// it (the control plane's view at issuance, which is at least as new as any push that
    /// preceded the request).
    pub async fn run<I: Issuer>(&self, issuer: I) {
        let first = self.current();
        let mut anchor_ms = estimated_issue_ms(&first.identity, now_ms());
        drop(first);
        loop {
            let creds = self.current();
            let delay = if creds.identity.spiffe_id() == &self.id {
                let renew_at = renewal_ms(anchor_ms, creds.identity.not_after(), jitter());
                let delay_ms = u64::try_from(renew_at.saturating_sub(now_ms())).unwrap_or(0);
                Duration::from_millis(delay_ms).max(MIN_RENEW_INTERVAL)
            } else {
                Duration::ZERO
            };
            drop(creds);
            tracing::debug!(
                in_ms = delay.as_millis() as u64,
                "next certificate renewal scheduled"
            );
            tokio::time::sleep(delay).await;

            let mut backoff = INITIAL_BACKOFF;
            loop {
                match Self::obtain(&self.id, &issuer).await {
                    Ok((identity, bundle)) => {
                        anchor_ms = now_ms().clamp(
                            identity.not_before().saturating_mul(1000),
                            identity.not_after().saturating_mul(1000),
                        );
                        info!(
                            id = %identity.spiffe_id(),
                            not_after = identity.not_after(),
                            "certificate renewed"
                        );
                        self.tx
                            .send_replace(Arc::new(Credentials { identity, bundle }));
                        break;
                    }
                    Err(e) => {
                        self.report_failure(&e, backoff);
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    fn report_failure(&self, e: &CertError, retry_in: Duration) {
        let expires = self.current().identity.not_after();
        let left_ms = expires.saturating_mul(1000).saturating_sub(now_ms());
        let retry_ms = i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX);
        if left_ms <= 0 {
            error!(
                id = %self.id,
                error = %e,
                expired_at = expires,
                "certificate renewal failed and the current certificate has EXPIRED: peers will \
                 refuse this workload until the control plane issues a new one"
            );
        } else if left_ms <= retry_ms {
            error!(
                id = %self.id,
                error = %e,
                expires_in_s = left_ms / 1000,
                "certificate renewal failed and the current certificate expires before the next \
                 retry; check that the control plane is reachable"
            );
        } else {
            warn!(
                id = %self.id,
                error = %e,
                expires_in_s = left_ms / 1000,
                retry_in_ms = retry_ms,
                "certificate renewal failed; retrying"
            );
        }
    }

    /// One-shot: fresh key, CSR for `id`, issuance, and checks on the result (it must carry
    /// `id`, and chain to the bundle that came with it). Used for the first bootstrap and by
    /// [`IdentityManager::run`].
    pub async fn obtain<I: Issuer>(
        id: &SpiffeId,
        issuer: &I,
    ) -> Result<(Identity, TrustBundle), CertError> {
        let (key_pem, csr_pem) = generate_csr(id)?;
        let issued = issuer.issue(csr_pem).await.map_err(CertError::Issuer)?;
        let identity = Identity::from_pem(&issued.cert_chain_pem, &key_pem)?;
        if identity.spiffe_id() != id {
            return Err(CertError::WrongIdentity {
                expected: id.uri(),
                got: identity.spiffe_id().uri(),
            });
        }
        let bundle = TrustBundle::from_pem(&issued.trust_bundle_pem)?;
        verify_chain(identity.chain(), &bundle)?;
        Ok((identity, bundle))
    }
}

/// When the identity was most probably issued, in unix milliseconds.
///
/// Weft's CA back-dates notBefore by [`CLOCK_SKEW_ALLOWANCE`], so for its certificates the
/// issue time is notBefore + that allowance; for a certificate not back-dated that estimate
/// would lie in the future, hence the cap at `now`.
fn estimated_issue_ms(identity: &Identity, now_ms: i64) -> i64 {
    let nb = identity.not_before().saturating_mul(1000);
    let na = identity.not_after().saturating_mul(1000);
    let skew = i64::try_from(CLOCK_SKEW_ALLOWANCE.as_millis()).unwrap_or(0);
    let estimate = if na.saturating_sub(nb) > skew {
        nb.saturating_add(skew)
    } else {
        nb
    };
    estimate.min(now_ms).max(nb)
}

/// The renewal instant (unix ms): `fraction` of the way from `anchor_ms` to `not_after`.
fn renewal_ms(anchor_ms: i64, not_after: i64, fraction: f64) -> i64 {
    let end = not_after.saturating_mul(1000);
    let lifetime = end.saturating_sub(anchor_ms).max(0);
    // f64 is exact for any realistic lifetime (< 2^53 ms).
    anchor_ms.saturating_add((lifetime as f64 * fraction) as i64)
}

/// `RENEW_FRACTION` with uniform ±`RENEW_JITTER` relative jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    let unit = match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    RENEW_FRACTION * (1.0 + RENEW_JITTER * (2.0 * unit - 1.0))
}

fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_point_is_seventy_percent_of_lifetime() {
        assert_eq!(renewal_ms(0, 100, 0.7), 70_000);
        assert_eq!(renewal_ms(10_000, 20, 0.5), 15_000);
        // Already expired: renew at once (anchor in the past).
        assert_eq!(renewal_ms(50_000, 10, 0.7), 50_000);
    }

    #[test]
    fn jitter_stays_in_band() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.63..=0.77).contains(&j), "{j}");
        }
    }
}
