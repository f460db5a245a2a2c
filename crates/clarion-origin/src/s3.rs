//! The object-storage origin: S3 or any S3-compatible store (MinIO, Ceph, R2,
//! moto), through Apache Arrow's `object_store`. Every file is one whole-object
//! PUT with its `Content-Type` and `Cache-Control`; the store gives each object its
//! ETag, which caches and browsers revalidate with.

use crate::{OriginConfigError, check_path};
use clarion_core::{DeliveryError, SecretRef, SecretResolver};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutOptions,
    RetryConfig,
};
use serde::Deserialize;
use std::time::Duration;

/// `[targets.NAME.s3]`: the bucket, where it is and how to sign for it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket's name.
    pub bucket: String,
    /// The bucket's region (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// An S3-compatible store's URL, e.g. `https://storage.example.net`; unset for
    /// AWS itself. Requests go path-style to it (`URL/BUCKET/KEY`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A key prefix the page is published under (e.g. `status/`); default none.
    #[serde(default)]
    pub prefix: String,
    /// The access key id: a secret reference (`{ env = "STATUS_S3_KEY_ID" }`).
    pub access_key_id: SecretRef,
    /// The secret access key: a secret reference.
    pub secret_access_key: SecretRef,
}

fn default_region() -> String {
    "us-east-1".into()
}

pub(crate) struct Bucket {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    cache_control: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store's own Debug would print its configuration; the bucket and
        // prefix say which origin it is, and hold no credential.
        f.debug_struct("Bucket")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    pub(crate) fn build(
        c: &S3Config,
        cache_control: &str,
        timeout: Duration,
        secrets: &dyn SecretResolver,
    ) -> Result<Bucket, OriginConfigError> {
        if c.bucket.trim().is_empty() {
            return Err(OriginConfigError::S3("bucket: must not be empty".into()));
        }
        let key = secrets
            .resolve(&c.access_key_id)
            .map_err(|e| OriginConfigError::S3(format!("access_key_id: {e}")))?;
        let secret = secrets
            .resolve(&c.secret_access_key)
            .map_err(|e| OriginConfigError::S3(format!("secret_access_key: {e}")))?;
        // The daemon retries, with its own backoff and breaker: the store's own
        // retries would hide a failing origin inside one long attempt.
        let retry = RetryConfig {
            max_retries: 0,
            retry_timeout: timeout,
            ..RetryConfig::default()
        };
        let mut options = ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(10)));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_access_key_id(key.expose())
            .with_secret_access_key(secret.expose())
            .with_retry(retry);
        if let Some(endpoint) = &c.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(OriginConfigError::S3(format!(
                    "endpoint: `{endpoint}` is not an http(s) URL"
                )));
            }
            options = options.with_allow_http(endpoint.starts_with("http://"));
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = builder
            .with_client_options(options)
            .build()
            .map_err(|e| OriginConfigError::S3(format!("cannot be used: {e}")))?;
        let prefix = c.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(OriginConfigError::S3(format!(
                "prefix: `{prefix}` must end with `/` (e.g. `status/`)"
            )));
        }
        Ok(Bucket {
            store,
            bucket: c.bucket.clone(),
            prefix,
            cache_control: cache_control.to_string(),
        })
    }

    fn key(&self, path: &str) -> Result<ObjectPath, DeliveryError> {
        ObjectPath::parse(format!("{}{path}", self.prefix))
            .map_err(|e| DeliveryError::permanent(format!("`{path}` is not an object key: {e}")))
    }

    pub(crate) async fn put(&self, file: &clarion_statuspage::File) -> Result<(), DeliveryError> {
        check_path(&file.path)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, file.content_type.into());
        attributes.insert(Attribute::CacheControl, self.cache_control.clone().into());
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let payload = bytes_of(&file.body);
        self.store
            .put_opts(&self.key(&file.path)?, payload.into(), opts)
            .await
            .map(drop)
            .map_err(|e| classify(&self.bucket, &file.path, e))
    }

    /// The bucket answers and takes our signature: a HEAD of the index, found or
    /// not.
    pub(crate) async fn check(&self) -> Result<(), DeliveryError> {
        match self.store.head(&self.key("index.html")?).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(&self.bucket, "index.html", e)),
        }
    }
}

fn bytes_of(body: &std::sync::Arc<[u8]>) -> Vec<u8> {
    body.to_vec()
}

/// Refused credentials are the operator's to fix; anything else (the store down,
/// a timeout, a 5xx) is worth trying again.
fn classify(bucket: &str, path: &str, e: object_store::Error) -> DeliveryError {
    let permanent = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    );
    let reason = format!("bucket `{bucket}`, `{path}`: {e}");
    if permanent {
        DeliveryError::permanent(reason).with_code("denied")
    } else {
        DeliveryError::retryable(reason, None)
    }
}
