//! Shared by the daemon's HTTP tests: a logged-in console session (cookie + CSRF token).
#![allow(clippy::unwrap_used, dead_code)] // tests: a panic is the failure report; not every test uses every call

use reqwest::Method;
use serde_json::{Value, json};

/// A console session: what the browser holds after logging in.
pub struct Session {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// Log in as `user` (asserts 200).
    pub async fn login(base: &str, user: &str, password: &str) -> Session {
        let http = reqwest::Client::new();
        let resp = http
            .post(format!("{base}/api/v1/session/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login of {user}");
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let body: Value = resp.json().await.unwrap();
        let csrf = body["csrf"].as_str().unwrap().to_string();
        Session {
            http,
            base: base.to_string(),
            cookie,
            csrf,
        }
    }

    /// GET: status and body text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GET: status and JSON body (`Null` when it is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, t) = self.get_text(path).await;
        (s, serde_json::from_str(&t).unwrap_or(Value::Null))
    }

    /// GET that must answer 200: the JSON body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (s, v) = self.get(path).await;
        assert_eq!(s, 200, "GET {path}");
        v
    }

    /// A state-changing request with the CSRF token: status and JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// POST with the CSRF token.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, body).await
    }
}
