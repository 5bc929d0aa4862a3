//! Client keys issued by the gateway: generation, hashing, and request authentication.
//!
//! Keys are 256-bit random strings, so a plain SHA-256 is a sound hash at rest (no salt or
//! slow KDF is needed against guessing a 43-character random secret). Lookups are cached
//! for `key_cache_ttl` (negative results too), which bounds how long a revoked key keeps
//! working. The cache is keyed by the presented secret itself, in memory only, so a request
//! with a known key costs one map lookup and no hashing; a value that cannot be an issued
//! key (wrong prefix, length or characters) is refused before any lookup or caching.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, Uri};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::store::{KeyRow, Store};

/// Every issued key starts with this, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "gg-";
const KEY_RANDOM_CHARS: usize = 43; // 43 × log2(62) ≈ 256 bits
const DISPLAY_PREFIX_CHARS: usize = 10;

/// Hex SHA-256 of a key: what the store keeps.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random key: `(secret, hash, display prefix)`.
pub fn generate_key() -> (String, String, String) {
    let secret = format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rng(), KEY_RANDOM_CHARS)
    );
    let hash = hash_key(&secret);
    let prefix = secret[..DISPLAY_PREFIX_CHARS].to_string();
    (secret, hash, prefix)
}

/// Model rules of a client key.
#[derive(Clone, Debug, Default)]
pub struct KeyModels {
    /// Allowed models: comma-separated patterns (`*` wildcard); `None` = any.
    pub allowed: Option<String>,
    /// Replaces the model the client asks for.
    pub force: Option<String>,
    /// passthrough | think_tags | strip (`None`: the routing default).
    pub reasoning: Option<String>,
}

/// Creates and stores a key; the secret is returned once and never stored.
pub async fn create_key(
    store: &Store,
    name: &str,
    expires_at: Option<i64>,
) -> anyhow::Result<(KeyRow, String)> {
    create_key_with(store, name, expires_at, KeyModels::default()).await
}

/// [`create_key`] with model rules.
pub async fn create_key_with(
    store: &Store,
    name: &str,
    expires_at: Option<i64>,
    models: KeyModels,
) -> anyhow::Result<(KeyRow, String)> {
    let (secret, hash, prefix) = generate_key();
    let now = chrono::Utc::now().timestamp();
    let id = store
        .insert_key(&crate::store::NewKey {
            name,
            key_hash: &hash,
            key_prefix: &prefix,
            created_at: now,
            expires_at,
            models: models.allowed.as_deref(),
            force_model: models.force.as_deref(),
            reasoning: models.reasoning.as_deref(),
        })
        .await?;
    let row = KeyRow {
        id,
        name: name.to_string(),
        key_prefix: prefix,
        created_at: now,
        expires_at,
        revoked_at: None,
        models: models.allowed,
        force_model: models.force,
        reasoning: models.reasoning,
    };
    Ok((row, secret))
}

/// The client key from `Authorization: Bearer`, `x-api-key`, or `?api_key=`, in that order.
pub fn extract_key<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            let key = v[7..].trim();
            if !key.is_empty() {
                return Some(key.into());
            }
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        if !v.trim().is_empty() {
            return Some(v.trim().into());
        }
    }
    let query = uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether `secret` has the shape of an issued key: the prefix, then the random part's
/// length and alphabet. Nothing else can match a stored hash.
fn well_formed(secret: &str) -> bool {
    secret.len() == KEY_PREFIX.len() + KEY_RANDOM_CHARS
        && secret.starts_with(KEY_PREFIX)
        && secret.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// Checks client keys against the store, with a short-lived cache.
pub struct Authenticator {
    store: Store,
    /// Keyed by the secret: a hit costs one lookup, no SHA-256 and no allocation. Hashed
    /// with foldhash (randomly seeded per process) rather than the standard SipHash, which
    /// cost 400 instructions a request on a 46-byte key.
    cache: moka::sync::Cache<Box<str>, Option<Arc<KeyRow>>, foldhash::quality::RandomState>,
}

impl Authenticator {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Authenticator {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::quality::RandomState::default()),
        }
    }

    /// The key behind the request, or the client error that says why there is none.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Arc<KeyRow>, ApiError> {
        self.resolve(self.look_up(headers, uri)?).await
    }

    /// The first half of [`Authenticator::authenticate`], which needs nothing from the
    /// request once done (so the request's head can be let go before anything is awaited):
    /// the cached key, or the secret to look up.
    pub fn look_up(&self, headers: &HeaderMap, uri: &Uri) -> Result<Lookup, ApiError> {
        let secret = extract_key(headers, uri).ok_or(ApiError::MissingKey)?;
        if !well_formed(&secret) {
            return Err(ApiError::InvalidKey);
        }
        Ok(match self.cache.get(secret.as_ref()) {
            Some(cached) => Lookup::Cached(cached),
            None => Lookup::Uncached(secret.into()),
        })
    }

    /// The second half: the store is asked on a cache miss; then the key must be live.
    pub async fn resolve(&self, lookup: Lookup) -> Result<Arc<KeyRow>, ApiError> {
        let row = match lookup {
            Lookup::Cached(cached) => cached,
            Lookup::Uncached(secret) => {
                let found = self
                    .store
                    .find_key(&hash_key(&secret))
                    .await
                    .map_err(|e| ApiError::Internal(format!("key lookup: {e}")))?
                    .map(Arc::new);
                self.cache.insert(secret, found.clone());
                found
            }
        };
        let row = row.ok_or(ApiError::InvalidKey)?;
        if row.revoked_at.is_some() {
            return Err(ApiError::RevokedKey);
        }
        if let Some(exp) = row.expires_at {
            if exp <= chrono::Utc::now().timestamp() {
                let when = chrono::DateTime::from_timestamp(exp, 0)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| exp.to_string());
                return Err(ApiError::ExpiredKey(when));
            }
        }
        Ok(row)
    }
}

/// What [`Authenticator::look_up`] found: a cached answer (`None`: no such key), or a
/// well-formed secret the cache does not know.
pub enum Lookup {
    Cached(Option<Arc<KeyRow>>),
    Uncached(Box<str>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn generated_keys_are_unique_and_hash_matches() {
        let (a, ha, pa) = generate_key();
        let (b, _, _) = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        assert_eq!(hash_key(&a), ha);
        assert!(a.starts_with(&pa));
        assert_eq!(ha.len(), 64);
        assert!(well_formed(&a));
    }

    #[test]
    fn only_values_shaped_like_an_issued_key_are_looked_up() {
        let (key, _, _) = generate_key();
        assert!(well_formed(&key));
        assert!(!well_formed(&key[..key.len() - 1]), "too short");
        assert!(!well_formed(&format!("{key}x")), "too long");
        assert!(!well_formed(&format!("xx-{}", &key[3..])), "wrong prefix");
        let mut odd = key.clone();
        odd.replace_range(10..11, "-");
        assert!(!well_formed(&odd), "outside the alphabet");
        let mut wide = key[..key.len() - 2].to_string();
        wide.push('é');
        assert_eq!(wide.len(), key.len());
        assert!(!well_formed(&wide), "multi-byte character");
    }

    #[test]
    fn key_is_taken_from_each_place() {
        let uri: Uri = "/v1/messages?beta=true&api_key=gg-q".parse().expect("uri");
        let mut h = HeaderMap::new();
        assert_eq!(extract_key(&h, &uri).as_deref(), Some("gg-q"));
        h.insert("x-api-key", HeaderValue::from_static("gg-x"));
        assert_eq!(extract_key(&h, &uri).as_deref(), Some("gg-x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer gg-b"),
        );
        assert_eq!(extract_key(&h, &uri).as_deref(), Some("gg-b"));
        let bare: Uri = "/v1/messages".parse().expect("uri");
        assert_eq!(extract_key(&HeaderMap::new(), &bare), None);
    }
}
