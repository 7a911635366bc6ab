//! `parkguard drill start|status|pause|resume|stop|ack|report --api URL`: drills of a
//! running daemon, over its HTTP API (`/api/v1/drills`).
//!
//! Authentication: `PARKGUARD_TOKEN` (an API token, sent as `Authorization: Bearer`), or
//! `--user NAME` with the password in `PARKGUARD_PASSWORD` (a console session). Starting,
//! pausing, resuming and stopping need the engineer role; acknowledging the operator role.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// What to do with a running daemon's drills.
#[derive(Clone, Debug)]
pub enum Remote {
    /// Start a drill with this `POST /api/v1/drills` body.
    Start(Value),
    /// One drill's status, or every drill.
    Status(Option<String>),
    /// Pause.
    Pause(String),
    /// Resume.
    Resume(String),
    /// Stop (prints the final report).
    Stop(String),
    /// Acknowledge a drill alarm.
    Ack {
        /// Drill id.
        id: String,
        /// Alarm id (`TAG:HH`) or source tag.
        alarm: String,
    },
    /// The report as JSON, or as HTML written to a file.
    Report {
        /// Drill id.
        id: String,
        /// Write the HTML page here instead of printing JSON.
        html: Option<std::path::PathBuf>,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Client {
    async fn connect(api: &str, user: Option<&str>) -> Result<Client> {
        let base = api.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        let mut c = Client {
            http,
            base,
            bearer: None,
            cookie: None,
            csrf: None,
        };
        match user {
            Some(user) => {
                let password = std::env::var("PARKGUARD_PASSWORD").map_err(|_| {
                    anyhow!(
                        "--user needs the password in the PARKGUARD_PASSWORD environment variable"
                    )
                })?;
                let resp = c
                    .http
                    .post(format!("{}/api/v1/session/login", c.base))
                    .json(&json!({"username": user, "password": password}))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {}", c.base))?;
                if !resp.status().is_success() {
                    bail!("login as {user} refused: {}", resp.status());
                }
                let cookie = resp
                    .headers()
                    .get_all(reqwest::header::SET_COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| v.split(';').next())
                    .collect::<Vec<_>>()
                    .join("; ");
                let body: Value = resp.json().await.context("login answer")?;
                c.cookie = Some(cookie);
                c.csrf = body["csrf"].as_str().map(str::to_string);
            }
            None => {
                c.bearer = Some(std::env::var("PARKGUARD_TOKEN").map_err(|_| {
                    anyhow!(
                        "set PARKGUARD_TOKEN to an API token (or use --user NAME with PARKGUARD_PASSWORD)"
                    )
                })?);
            }
        }
        Ok(c)
    }

    fn auth(&self, mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(t) = &self.bearer {
            rb = rb.bearer_auth(t);
        }
        if let Some(c) = &self.cookie {
            rb = rb.header(reqwest::header::COOKIE, c);
        }
        if let Some(x) = &self.csrf {
            rb = rb.header("x-csrf-token", x);
        }
        rb
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String> {
        let mut rb = self.auth(self.http.request(method, format!("{}{path}", self.base)));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{status}: {msg}");
        }
        Ok(text)
    }
}

fn pretty(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

/// Run one remote drill command against `api`; prints the answer (JSON).
pub fn run(api: &str, user: Option<&str>, what: Remote) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let c = Client::connect(api, user).await?;
        use reqwest::Method;
        let out = match what {
            Remote::Start(body) => c.call(Method::POST, "/api/v1/drills", Some(body)).await?,
            Remote::Status(None) => c.call(Method::GET, "/api/v1/drills", None).await?,
            Remote::Status(Some(id)) => {
                c.call(Method::GET, &format!("/api/v1/drills/{id}"), None)
                    .await?
            }
            Remote::Pause(id) => {
                c.call(
                    Method::POST,
                    &format!("/api/v1/drills/{id}/pause"),
                    Some(json!({})),
                )
                .await?
            }
            Remote::Resume(id) => {
                c.call(
                    Method::POST,
                    &format!("/api/v1/drills/{id}/resume"),
                    Some(json!({})),
                )
                .await?
            }
            Remote::Stop(id) => {
                c.call(
                    Method::POST,
                    &format!("/api/v1/drills/{id}/stop"),
                    Some(json!({})),
                )
                .await?
            }
            Remote::Ack { id, alarm } => {
                c.call(
                    Method::POST,
                    &format!("/api/v1/drills/{id}/ack"),
                    Some(json!({"alarm": alarm})),
                )
                .await?
            }
            Remote::Report { id, html: None } => {
                c.call(Method::GET, &format!("/api/v1/drills/{id}/report"), None)
                    .await?
            }
            Remote::Report {
                id,
                html: Some(path),
            } => {
                let page = c
                    .call(
                        Method::GET,
                        &format!("/api/v1/drills/{id}/report?format=html"),
                        None,
                    )
                    .await?;
                std::fs::write(&path, page)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                format!("{{\"written\": {:?}}}", path.display().to_string())
            }
        };
        println!("{}", pretty(&out));
        Ok(())
    })
}
