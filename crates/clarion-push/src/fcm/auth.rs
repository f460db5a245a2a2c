//! OAuth2 access tokens for FCM from a Google service account (RFC 7523 JWT bearer
//! grant): sign an RS256 assertion with the account's key, exchange it at the
//! account's `token_uri`, keep the token until shortly before it expires.
//!
//! One token serves every send of the target. The cache sits behind an async mutex
//! that is held while a token is fetched, so that concurrent sends wait for the one
//! refresh in flight instead of each asking for a token of their own.

use crate::http::{Clock, error_chain};
use clarion_core::{DeliveryError, Secret};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// The only scope FCM sends need.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google accepts assertions valid for at most one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Refresh this long before the token expires (or halfway, for short-lived tokens), so
/// a send never starts with a token about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The fields of a service-account JSON key file that we use.
#[derive(Deserialize)]
pub(crate) struct ServiceAccountFile {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) private_key_id: Option<String>,
    pub(crate) private_key: Secret,
    pub(crate) client_email: String,
    pub(crate) token_uri: String,
}

/// A service account ready to sign assertions.
pub(crate) struct ServiceAccount {
    pub(crate) client_email: String,
    pub(crate) token_uri: url::Url,
    pub(crate) key_id: Option<String>,
    pub(crate) key: EncodingKey,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri.as_str())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl ServiceAccount {
    /// The signed JWT assertion, issued now.
    pub(crate) fn assertion(&self, now: SystemTime) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: self.token_uri.as_str(),
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

/// An access token and when to stop using it.
#[derive(Clone)]
pub(crate) struct AccessToken {
    pub(crate) value: Arc<Secret>,
    /// After this, fetch a new one before sending.
    refresh_at: Instant,
    /// After this, the token is useless; before it, it is a fallback while the token
    /// endpoint is failing.
    expires_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Secret,
    expires_in: u64,
}

#[derive(Deserialize)]
struct TokenErrorReply {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The target's access-token cache.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    client: reqwest::Client,
    clock: Clock,
    cache: Mutex<Option<AccessToken>>,
    /// Tokens fetched so far (for `Debug` and tests).
    fetched: AtomicU64,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .field("fetched", &self.fetched.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub(crate) fn new(account: ServiceAccount, client: reqwest::Client, clock: Clock) -> Self {
        TokenSource {
            account,
            client,
            clock,
            cache: Mutex::new(None),
            fetched: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// A token to send with: the cached one while it is fresh, else a new one. Holding
    /// the lock across the fetch is the point: one refresh serves every waiting send.
    pub(crate) async fn token(&self) -> Result<AccessToken, DeliveryError> {
        let mut cache = self.cache.lock().await;
        let now = self.clock.now();
        if let Some(t) = cache.as_ref().filter(|t| now < t.refresh_at) {
            return Ok(t.clone());
        }
        match self.fetch().await {
            Ok(t) => {
                *cache = Some(t.clone());
                Ok(t)
            }
            Err(e) => match cache.as_ref().filter(|t| self.clock.now() < t.expires_at) {
                Some(still_valid) => {
                    tracing::warn!(error = %e, "FCM token refresh failed; using the current token until it expires");
                    Ok(still_valid.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Forgets `used` after FCM refused it, unless another send already replaced it.
    pub(crate) async fn invalidate(&self, used: &AccessToken) {
        let mut cache = self.cache.lock().await;
        if cache
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.value, &used.value))
        {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<AccessToken, DeliveryError> {
        let assertion = self.account.assertion(SystemTime::now()).map_err(|e| {
            DeliveryError::permanent(format!("cannot sign the service-account assertion: {e}"))
        })?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let started = self.clock.now();
        let reply = self
            .client
            .post(self.account.token_uri.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| {
                DeliveryError::retryable(
                    format!(
                        "cannot reach the OAuth2 token endpoint {}: {}",
                        self.account.token_uri,
                        error_chain(&e)
                    ),
                    None,
                )
            })?;
        let status = reply.status();
        let retry_after = crate::http::retry_after(reply.headers(), SystemTime::now());
        let body = crate::http::read_limited(reply).await.map_err(|e| {
            DeliveryError::retryable(
                format!("reading the OAuth2 token reply failed: {}", error_chain(&e)),
                None,
            )
        })?;
        if status.is_success() {
            let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
                DeliveryError::retryable(
                    format!("the OAuth2 token endpoint sent an unreadable reply: {e}"),
                    None,
                )
            })?;
            self.fetched.fetch_add(1, Ordering::Relaxed);
            let lifetime = Duration::from_secs(reply.expires_in);
            let margin = REFRESH_MARGIN.min(lifetime / 2);
            return Ok(AccessToken {
                value: Arc::new(reply.access_token),
                refresh_at: started + lifetime - margin,
                expires_at: started + lifetime,
            });
        }
        let detail = match serde_json::from_slice::<TokenErrorReply>(&body) {
            Ok(e) => match e.error_description {
                Some(d) => format!("{}: {d}", e.error),
                None => e.error,
            },
            Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
        };
        let reason = format!(
            "the OAuth2 token endpoint refused service account {} (HTTP {}): {detail}",
            self.account.client_email,
            status.as_u16()
        );
        let err = if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            DeliveryError::retryable(reason, retry_after)
        } else {
            DeliveryError::permanent(reason)
        };
        Err(err.with_code(format!("oauth2:{}", status.as_u16())))
    }
}
