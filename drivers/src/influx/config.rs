//! The `[influx]` table: where readings and events go, and how they are batched.
//!
//! The token is never written in the config: it comes from an environment variable
//! (`token_env`) or a file (`token_file`, e.g. a systemd credential or a Kubernetes
//! secret); neither is required (VictoriaMetrics and an open InfluxDB need none).

use parkguard_rules::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

fn d_batch_size() -> usize {
    5000
}
fn d_batch_interval_ms() -> u64 {
    1000
}
fn d_timeout_ms() -> u64 {
    10_000
}
fn d_connect_timeout_ms() -> u64 {
    5_000
}
fn d_retry_initial_ms() -> u64 {
    500
}
fn d_retry_max_ms() -> u64 {
    60_000
}
fn d_concurrency() -> usize {
    4
}

/// `[influx]`: InfluxDB 2 output. Absent = no time-series database (the spool is then the
/// local archive only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the server, e.g. `https://influx.park.example:8086` (http or https;
    /// `/api/v2/write` is appended). Required.
    pub url: String,
    /// Organisation name. Required.
    pub org: String,
    /// Bucket name. Required.
    pub bucket: String,
    /// Name of the environment variable that holds the API token. Default: none.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Path of a file whose content (trimmed) is the API token. Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Most lines per request. Default 5000 (InfluxData recommends 5000).
    #[serde(default = "d_batch_size")]
    pub batch_size: usize,
    /// Longest a line waits for its batch to fill before it is sent, in milliseconds.
    /// Default 1000.
    #[serde(default = "d_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`). Default: on, unless
    /// the database is on this machine (`localhost`, 127.0.0.0/8, `::1`), where it would
    /// only cost CPU (about a third of the writer's at 100,000 readings/s; issue #11).
    #[serde(default)]
    pub gzip: Option<bool>,
    /// Whole-request timeout, in milliseconds. Default 10000.
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP/TLS connect timeout, in milliseconds. Default 5000.
    #[serde(default = "d_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First retry delay after a failure, in milliseconds (doubles up to
    /// `retry_max_ms`). Default 500.
    #[serde(default = "d_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds; also caps a server's `Retry-After`.
    /// Default 60000.
    #[serde(default = "d_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Requests in flight at once (each of up to `batch_size` lines); the cursor advances
    /// when every request of a round is settled. 1 = strictly one after the other.
    /// Default 4.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
}

/// Where the token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// No token (no `Authorization` header).
    None,
    /// Environment variable name.
    Env(String),
    /// File path.
    File(PathBuf),
}

impl TokenSource {
    /// Read the token. Errors say which variable or file is missing.
    pub fn resolve(&self) -> Result<Option<String>, String> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Env(name) => std::env::var(name)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|_| format!("environment variable `{name}` (influx token) is not set")),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| format!("cannot read influx token file {}: {e}", p.display())),
        }
    }
}

/// Validated `[influx]`.
#[derive(Clone, Debug)]
pub struct InfluxSettings {
    /// The full write URL with `org`, `bucket` and `precision=ns` in the query.
    pub write_url: reqwest::Url,
    /// Token source.
    pub token: TokenSource,
    /// Most lines per request.
    pub batch_size: usize,
    /// Longest wait for a batch to fill.
    pub batch_interval: Duration,
    /// Gzip bodies.
    pub gzip: bool,
    /// Request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay (and cap on `Retry-After`).
    pub retry_max: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

/// Whether `url` names this machine: `localhost` (and `*.localhost`), 127.0.0.0/8, `::1`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

impl InfluxConfig {
    /// A config with defaults for everything but the three required keys.
    pub fn new(url: &str, org: &str, bucket: &str) -> Self {
        Self {
            url: url.into(),
            org: org.into(),
            bucket: bucket.into(),
            token_env: None,
            token_file: None,
            batch_size: d_batch_size(),
            batch_interval_ms: d_batch_interval_ms(),
            gzip: None,
            timeout_ms: d_timeout_ms(),
            connect_timeout_ms: d_connect_timeout_ms(),
            retry_initial_ms: d_retry_initial_ms(),
            retry_max_ms: d_retry_max_ms(),
            concurrency: d_concurrency(),
        }
    }

    /// Check every field; collect every error.
    pub fn validate(&self) -> Result<InfluxSettings, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut write_url = None;
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                let mut u = u;
                {
                    let mut path = u.path().trim_end_matches('/').to_owned();
                    path.push_str("/api/v2/write");
                    u.set_path(&path);
                }
                u.query_pairs_mut()
                    .clear()
                    .append_pair("org", &self.org)
                    .append_pair("bucket", &self.bucket)
                    .append_pair("precision", "ns");
                write_url = Some(u);
            }
            Ok(_) => errs.push(FieldError::new(
                "url",
                "must be an http:// or https:// URL with a host",
            )),
            Err(e) => errs.push(FieldError::new("url", format!("not a URL: {e}"))),
        }
        if self.org.trim().is_empty() {
            errs.push(FieldError::new("org", "must not be empty"));
        }
        if self.bucket.trim().is_empty() {
            errs.push(FieldError::new("bucket", "must not be empty"));
        }
        let token = match (&self.token_env, &self.token_file) {
            (Some(_), Some(_)) => {
                errs.push(FieldError::new(
                    "token_file",
                    "give either `token_env` or `token_file`, not both",
                ));
                TokenSource::None
            }
            (Some(e), None) if e.is_empty() => {
                errs.push(FieldError::new("token_env", "must not be empty"));
                TokenSource::None
            }
            (Some(e), None) => TokenSource::Env(e.clone()),
            (None, Some(f)) => TokenSource::File(f.clone()),
            (None, None) => TokenSource::None,
        };
        if !(1..=100_000).contains(&self.batch_size) {
            errs.push(FieldError::new("batch_size", "must be 1 ..= 100000"));
        }
        if self.batch_interval_ms == 0 || self.batch_interval_ms > 600_000 {
            errs.push(FieldError::new(
                "batch_interval_ms",
                "must be 1 ..= 600000 (10 min)",
            ));
        }
        for (name, v) in [
            ("timeout_ms", self.timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
        ] {
            if v == 0 {
                errs.push(FieldError::new(name, "must be > 0"));
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            errs.push(FieldError::new(
                "retry_max_ms",
                "must be ≥ `retry_initial_ms`",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            errs.push(FieldError::new("concurrency", "must be 1 ..= 64"));
        }
        match write_url {
            Some(write_url) if errs.is_empty() => Ok(InfluxSettings {
                gzip: self.gzip.unwrap_or(!is_loopback(&write_url)),
                write_url,
                token,
                batch_size: self.batch_size,
                batch_interval: Duration::from_millis(self.batch_interval_ms),
                timeout: Duration::from_millis(self.timeout_ms),
                connect_timeout: Duration::from_millis(self.connect_timeout_ms),
                retry_initial: Duration::from_millis(self.retry_initial_ms),
                retry_max: Duration::from_millis(self.retry_max_ms),
                concurrency: self.concurrency,
            }),
            _ => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_by_default_unless_the_database_is_on_this_machine() {
        let gz = |url: &str, set: Option<bool>| {
            let mut c = InfluxConfig::new(url, "o", "b");
            c.gzip = set;
            c.validate().map(|s| s.gzip).map_err(|e| format!("{e:?}"))
        };
        for (url, local) in [
            ("http://127.0.0.1:8086", true),
            ("http://127.8.9.10:8428/", true),
            ("http://localhost:8086", true),
            ("https://LOCALHOST.:8086", true),
            ("http://[::1]:8086", true),
            ("http://10.0.0.5:8086", false),
            ("https://influx.park.example:8086", false),
            ("http://[fd00::1]:8086", false),
            ("http://localhost.park.example:8086", false),
        ] {
            // Off on this machine, on elsewhere; the key forces the other way.
            assert_eq!(gz(url, None), Ok(!local), "{url}");
            assert_eq!(gz(url, Some(local)), Ok(local), "{url}, set");
        }
    }

    #[test]
    fn valid_builds_write_url() {
        let s = InfluxConfig::new("http://127.0.0.1:8086/", "园区 org", "b&b")
            .validate()
            .expect("valid");
        assert_eq!(
            s.write_url.as_str(),
            "http://127.0.0.1:8086/api/v2/write?org=%E5%9B%AD%E5%8C%BA+org&bucket=b%26b&precision=ns"
        );
        assert_eq!(s.token, TokenSource::None);
    }

    #[test]
    fn collects_every_error() {
        let mut c = InfluxConfig::new("ftp://x", "", "");
        c.token_env = Some("A".into());
        c.token_file = Some("/x".into());
        c.batch_size = 0;
        c.retry_max_ms = 1;
        let errs = c.validate().expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "url",
                "org",
                "bucket",
                "token_file",
                "batch_size",
                "retry_max_ms"
            ]
        );
    }

    #[test]
    fn toml_shape_rejects_unknown_keys() {
        let err = serde_json::from_str::<InfluxConfig>(
            r#"{"url":"http://x","org":"o","bucket":"b","token":"secret"}"#,
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `token`"), "{err}");
    }
}
