//! One HTTP client for every command: base URL, bearer token, output format,
//! and the server's error body turned into a [`CliError`] with its hint.

use reqwest::Method;
use serde_json::Value;

use crate::exit::{CliError, for_api};

pub struct Client {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Result<Value, CliError> {
        serde_json::from_str(&self.text)
            .map_err(|e| CliError::new(1, format!("the server sent invalid JSON: {e}")))
    }
}

/// `error:`/`message:`/`hint:`/`allowed:` (text) or the same keys in JSON.
fn api_error(status: u16, text: &str) -> CliError {
    let (mut code, mut message, mut hint) = (String::new(), String::new(), String::new());
    let mut allowed = String::new();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        code = v["error"].as_str().unwrap_or("").to_string();
        message = v["message"]
            .as_str()
            .or(v["error_description"].as_str())
            .unwrap_or("")
            .to_string();
        hint = v["hint"].as_str().unwrap_or("").to_string();
        if let Some(list) = v["allowed"].as_array() {
            allowed = list
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ");
        }
    } else {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("error: ") {
                code = v.to_string();
            } else if let Some(v) = line.strip_prefix("message: ") {
                message = v.to_string();
            } else if let Some(v) = line.strip_prefix("hint: ") {
                hint = v.to_string();
            } else if let Some(v) = line.strip_prefix("allowed: ") {
                allowed = v.to_string();
            }
        }
    }
    let mut out = format!("{code}: {message}");
    if code.is_empty() {
        out = format!("the server answered {status}: {}", text.trim());
    }
    if !hint.is_empty() {
        out.push_str(&format!("\nhint: {}", for_the_cli(&hint)));
    }
    if !allowed.is_empty() {
        out.push_str(&format!("\nallowed: {allowed}"));
    }
    CliError::new(for_api(status, &code), out).with_api_code(&code)
}

/// The server's hints name API calls; where a command does the same, the
/// hint names the command (`crmkit api` shows the server's words as sent).
fn for_the_cli(hint: &str) -> String {
    const SAME: &[(&str, &str)] = &[
        (
            "sign in again with POST /auth/request then POST /auth/verify",
            "sign in again: crmkit login",
        ),
        (
            "request a fresh one (POST /auth/request)",
            "request a fresh one (crmkit login)",
        ),
        (
            "GET /workspaces lists the workspaces you belong to",
            "crmkit workspaces list shows the workspaces you belong to",
        ),
        (
            "GET /workspaces, then POST /workspaces/{id}/tokens",
            "crmkit workspaces list, then crmkit workspaces use ID",
        ),
        (
            "GET /tokens lists your tokens and their ids",
            "crmkit tokens list shows your tokens and their ids",
        ),
        (
            "repeat the same request with ?code=CODE or header X-Escalation-Code: CODE",
            "run the same command again with --code CODE",
        ),
        (
            "GET /help lists every endpoint",
            "crmkit --help lists every command",
        ),
    ];
    let mut out = hint.to_string();
    for (api, cli) in SAME {
        out = out.replace(api, cli);
    }
    out
}

impl CliError {
    fn with_api_code(mut self, code: &str) -> Self {
        if !code.is_empty() {
            self.message = format!("error: {}", self.message);
        }
        self
    }
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("crmkit-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::new(1, e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// Sends a request; a 4xx/5xx becomes an error unless `raw`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        json: bool,
        headers: &[(String, String)],
        raw: bool,
    ) -> Result<Answer, CliError> {
        let url = format!("{}{}", self.base, path);
        let mut rb = self.http.request(method, &url);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb = rb.header(
            "accept",
            if json {
                "application/json"
            } else {
                "text/plain"
            },
        );
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = rb.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "cannot connect"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            CliError::new(
                1,
                format!(
                    "{why}: {} ({e}); is `crmkit serve` running there? set --server or CRMKIT_URL",
                    self.base
                ),
            )
        })?;
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .map_err(|e| CliError::new(1, e.to_string()))?;
        if status >= 400 && !raw {
            return Err(api_error(status, &text));
        }
        Ok(Answer { status, text })
    }

    pub async fn get(&self, path: &str, json: bool) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None, json, &[], false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_errors_keep_the_hint_and_map_the_exit_code() {
        let e = api_error(
            404,
            "error: not_found\nmessage: no contact\nhint: check the id\n",
        );
        assert_eq!(e.code, 3);
        assert!(
            e.message.contains("not_found: no contact") && e.message.contains("hint: check the id")
        );
        let e = api_error(401, r#"{"error":"token_expired","message":"m","hint":"h"}"#);
        assert_eq!(e.code, 4);
    }
}
