//! An S3 store for examples and tests against a local S3 server (moto): a bucket made with a
//! plain `PUT /bucket` (object_store cannot create buckets) and a store on it with the
//! conditional create that checkpoint manifests need.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// Creates `bucket` on the S3 server at `endpoint` (`http://host:port`); an existing bucket
/// is fine.
pub(crate) fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), String> {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = TcpStream::connect(address).map_err(|e| format!("connect to {address}: {e}"))?;
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("PUT /{bucket}: {e}"))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .map_err(|e| format!("PUT /{bucket}: {e}"))?;
    match reply.lines().next() {
        Some(status) if status.starts_with("HTTP/1.1 200") => Ok(()),
        status => Err(format!("PUT /{bucket}: {status:?}")),
    }
}

/// A store on `bucket` at `endpoint` with test credentials, conditional puts by ETag, and
/// `retries` retries with backoff from 20 ms.
pub(crate) fn s3_store(endpoint: &str, bucket: &str, retries: usize) -> Arc<dyn ObjectStore> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            base: 2.0,
        },
        max_retries: retries,
        retry_timeout: Duration::from_secs(20),
    };
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry)
        .build()
        .expect("an S3 store from a valid configuration");
    Arc::new(store)
}
