//! Storage URLs and the options that complete them.
//!
//! A storage URL names the service, the bucket (or directory) and an optional
//! key prefix; endpoint, region and credentials come from [`StorageOptions`],
//! which the CLI fills from flags or the usual AWS environment variables.

use opendal::services;
use opendal::Operator;

use crate::{ObjectError, Result};

/// Connection settings that are not part of the URL itself.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Use virtual-host style addressing instead of path style.
    pub virtual_host_style: bool,
    /// How long one attempt of a request may go without progress before it
    /// is cut and tried again (default 10 s); a whole request, retries
    /// included, gets six times that plus a second per MiB it moves.
    pub timeout: Option<std::time::Duration>,
}

impl StorageOptions {
    /// Options from the standard AWS environment variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            endpoint: var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT_URL_S3")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            virtual_host_style: false,
            timeout: None,
        }
    }

    /// Fill every unset field from `other`.
    pub fn or(mut self, other: StorageOptions) -> Self {
        self.endpoint = self.endpoint.or(other.endpoint);
        self.region = self.region.or(other.region);
        self.access_key = self.access_key.or(other.access_key);
        self.secret_key = self.secret_key.or(other.secret_key);
        self.virtual_host_style |= other.virtual_host_style;
        self.timeout = self.timeout.or(other.timeout);
        self
    }
}

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUrl {
    pub scheme: Scheme,
    /// Bucket or container; for `file://` the directory.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing slash.
    pub prefix: String,
    /// Query parameters given in the URL (endpoint=, region=).
    pub query: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    File,
    Memory,
    S3,
    Oss,
    Gcs,
    Azblob,
}

fn invalid(url: &str, reason: impl Into<String>) -> ObjectError {
    ObjectError::InvalidUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme_str, rest) = url.split_once("://").ok_or_else(|| {
            invalid(
                url,
                "expected SCHEME://..., one of file:///dir, mem://, s3://bucket[/prefix], \
                 oss://, gs://, azblob://",
            )
        })?;
        let scheme = match scheme_str {
            "file" => Scheme::File,
            "mem" | "memory" => Scheme::Memory,
            "s3" => Scheme::S3,
            "oss" => Scheme::Oss,
            "gs" | "gcs" => Scheme::Gcs,
            "azblob" => Scheme::Azblob,
            other => {
                return Err(invalid(
                    url,
                    format!("unknown scheme {other:?}; use file, mem, s3, oss, gs or azblob"),
                ))
            }
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
        let (bucket, prefix) = match scheme {
            Scheme::File => {
                if !path.starts_with('/') {
                    return Err(invalid(url, "file URLs need an absolute path: file:///dir"));
                }
                (path.trim_end_matches('/').to_string(), String::new())
            }
            Scheme::Memory => (String::new(), path.trim_matches('/').to_string()),
            _ => {
                let path = path.trim_start_matches('/');
                let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
                if bucket.is_empty() {
                    return Err(invalid(url, "the bucket name is missing"));
                }
                (bucket.to_string(), prefix.trim_matches('/').to_string())
            }
        };
        let bucket = if scheme == Scheme::File && bucket.is_empty() {
            "/".to_string()
        } else {
            bucket
        };
        Ok(Self {
            scheme,
            bucket,
            prefix,
            query,
        })
    }

    fn query_value(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The URL without credentials, for logs and status output.
    pub fn redacted(&self) -> String {
        let scheme = match self.scheme {
            Scheme::File => "file",
            Scheme::Memory => "mem",
            Scheme::S3 => "s3",
            Scheme::Oss => "oss",
            Scheme::Gcs => "gs",
            Scheme::Azblob => "azblob",
        };
        let mut s = match self.scheme {
            Scheme::File => format!("file://{}", self.bucket),
            _ => format!("{scheme}://{}", self.bucket),
        };
        if !self.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.prefix);
        }
        s
    }

    pub(crate) fn operator(&self, options: &StorageOptions) -> Result<Operator> {
        let root = format!("/{}", self.prefix);
        let endpoint = self
            .query_value("endpoint")
            .map(str::to_string)
            .or_else(|| options.endpoint.clone());
        let region = self
            .query_value("region")
            .map(str::to_string)
            .or_else(|| options.region.clone());
        let fail = |e: opendal::Error| invalid(&self.redacted(), e.to_string());
        let op = match self.scheme {
            Scheme::File => Operator::new(services::Fs::default().root(&self.bucket))
                .map_err(fail)?
                .finish(),
            Scheme::Memory => Operator::new(services::Memory::default().root(&root))
                .map_err(fail)?
                .finish(),
            Scheme::S3 => {
                let mut b = services::S3::default()
                    .bucket(&self.bucket)
                    .root(&root)
                    .region(region.as_deref().unwrap_or("us-east-1"))
                    .disable_ec2_metadata();
                if let Some(ep) = &endpoint {
                    b = b.endpoint(ep);
                }
                if let (Some(ak), Some(sk)) = (&options.access_key, &options.secret_key) {
                    b = b.access_key_id(ak).secret_access_key(sk);
                } else {
                    b = b.allow_anonymous();
                }
                if options.virtual_host_style || self.query_value("virtual_host").is_some() {
                    b = b.enable_virtual_host_style();
                }
                Operator::new(b).map_err(fail)?.finish()
            }
            Scheme::Oss => {
                let mut b = services::Oss::default().bucket(&self.bucket).root(&root);
                if let Some(ep) = &endpoint {
                    b = b.endpoint(ep);
                }
                if let (Some(ak), Some(sk)) = (&options.access_key, &options.secret_key) {
                    b = b.access_key_id(ak).access_key_secret(sk);
                }
                Operator::new(b).map_err(fail)?.finish()
            }
            Scheme::Gcs => {
                let mut b = services::Gcs::default().bucket(&self.bucket).root(&root);
                if let Some(ep) = &endpoint {
                    b = b.endpoint(ep);
                }
                Operator::new(b).map_err(fail)?.finish()
            }
            Scheme::Azblob => {
                let mut b = services::Azblob::default()
                    .container(&self.bucket)
                    .root(&root);
                if let Some(ep) = &endpoint {
                    b = b.endpoint(ep);
                }
                if let (Some(ak), Some(sk)) = (&options.access_key, &options.secret_key) {
                    b = b.account_name(ak).account_key(sk);
                }
                Operator::new(b).map_err(fail)?.finish()
            }
        };
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        let u = StorageUrl::parse("s3://bucket/some/prefix/").expect("s3");
        assert_eq!(u.scheme, Scheme::S3);
        assert_eq!(u.bucket, "bucket");
        assert_eq!(u.prefix, "some/prefix");
        let u = StorageUrl::parse("file:///var/data/").expect("file");
        assert_eq!(u.bucket, "/var/data");
        let u = StorageUrl::parse("s3://b?endpoint=http://127.0.0.1:9000").expect("query");
        assert_eq!(u.query_value("endpoint"), Some("http://127.0.0.1:9000"));
        assert_eq!(
            StorageUrl::parse("mem://").expect("mem").scheme,
            Scheme::Memory
        );
        for (url, scheme) in [
            ("oss://b/p", Scheme::Oss),
            ("gs://b", Scheme::Gcs),
            ("azblob://c/p", Scheme::Azblob),
        ] {
            assert_eq!(StorageUrl::parse(url).expect(url).scheme, scheme);
        }
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        let err = StorageUrl::parse("bucket/x")
            .expect_err("no scheme")
            .to_string();
        assert!(err.contains("expected SCHEME://"), "{err}");
        let err = StorageUrl::parse("ftp://x")
            .expect_err("scheme")
            .to_string();
        assert!(err.contains("unknown scheme \"ftp\""), "{err}");
        let err = StorageUrl::parse("s3://").expect_err("bucket").to_string();
        assert!(err.contains("bucket name is missing"), "{err}");
        let err = StorageUrl::parse("file://relative")
            .expect_err("rel")
            .to_string();
        assert!(err.contains("absolute path"), "{err}");
    }

    #[test]
    fn every_compiled_service_builds_an_operator() {
        let opts = StorageOptions {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        };
        for url in ["s3://b/p", "oss://b/p", "azblob://c/p"] {
            StorageUrl::parse(url)
                .expect(url)
                .operator(&opts)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
}
