//! One HTTP client for every command: base URL, bearer token, output format,
//! and the server's error body turned into a [`CliError`] with its hint.

use reqwest::Method;
use serde_json::Value;

use crate::exit::{CliError, for_api};

pub struct Client {
    pub base: String,
    pub token: Option<String>,
    /// The sign-in command hints name (`crmkit login --profile work`).
    pub login: String,
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
/// An answer without an error code did not come from a crmkit server (a
/// proxy, another web server, a wrong `--server` path): that is said, with
/// exit 1, rather than read as "not found".
fn api_error(base: &str, login: &str, status: u16, text: &str) -> CliError {
    let (mut code, mut message, mut hint) = (String::new(), String::new(), String::new());
    let mut allowed = String::new();
    let mut body = None;
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
        if !code.is_empty() {
            body = Some(v);
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
    if code.is_empty() {
        let shown: String = text.trim().chars().take(200).collect();
        return CliError::new(
            1,
            format!(
                "{base} answered {status} without a crmkit error, so it is not a crmkit server (or not its root URL); check --server or CRMKIT_URL. It sent: {shown}"
            ),
        );
    }
    // crmkit's routes hang off the server's root: a path in the server URL
    // makes every command a "no route".
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    if code == "not_found" && message.starts_with("no route ") && after_scheme.contains('/') {
        return CliError::new(
            1,
            format!(
                "{message}: the server URL {base} has a path, and crmkit's routes start at the server's root; set --server or CRMKIT_URL to the root (e.g. http://host:8080)"
            ),
        );
    }
    let mut out = format!("{code}: {message}");
    if !hint.is_empty() {
        out.push_str(&format!("\nhint: {}", for_the_cli(&hint, login)));
    }
    // A token from the environment is not the CLI's to replace: signing in
    // again does not help while the variable still holds the dead one.
    if matches!(code.as_str(), "invalid_token" | "token_expired")
        && std::env::var_os("CRMKIT_TOKEN").is_some()
    {
        out.push_str(
            "\nnote: the token came from CRMKIT_TOKEN, which beats a sign-in: set it to a valid token, or unset it to use the one `crmkit login` keeps",
        );
    }
    if !allowed.is_empty() {
        out.push_str(&format!("\nallowed: {allowed}"));
    }
    let mut e = CliError::new(for_api(status, &code), out).with_api_code(&code);
    e.body = body;
    e
}

/// The server's hints name API calls; where a command does the same, the
/// hint names the command (`crmkit api` shows the server's words as sent).
/// `login` is the sign-in command of this profile.
fn for_the_cli(hint: &str, login: &str) -> String {
    const SAME: &[(&str, &str)] = &[
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
            "crmkit workspaces list, then crmkit workspaces use WORKSPACE",
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
        ("see GET /help", "see the manual: crmkit api GET /help"),
        (
            "is joined with POST /workspaces/{id}/tokens",
            "is joined with crmkit workspaces use WORKSPACE",
        ),
        (
            "GET /workspaces/{id}/members lists them",
            "crmkit workspaces members WORKSPACE lists them",
        ),
        (
            "POST /workspaces/{id}/members/{userId}/role {\"role\":\"admin\"}",
            "crmkit workspaces role WORKSPACE MEMBER admin",
        ),
        (
            "POST /workspaces/{id}/members/{userId}/role",
            "crmkit workspaces role WORKSPACE MEMBER ROLE",
        ),
        (
            "GET /whoami with a token for that workspace shows usage",
            "crmkit whoami in that workspace shows usage",
        ),
        (
            "send sort=FIELD (ascending) or sort=-FIELD (descending)",
            "give --sort FIELD (ascending) or --sort -FIELD (descending)",
        ),
        ("send limit=", "give --limit "),
        (
            "fetch further pages with cursor=… from the `# next:` line (JSON: next_cursor)",
            "fetch further pages with --cursor … from the `# next:` line, or all of them with --all",
        ),
        (
            "GET /contacts?email=",
            "crmkit contacts list --where email=",
        ),
        (
            "GET /contacts lists what exists (search= finds by name)",
            "crmkit contacts list shows what exists (--search finds by name)",
        ),
        (
            "GET /companies lists what exists (search= finds by name)",
            "crmkit companies list shows what exists (--search finds by name)",
        ),
        (
            "GET /deals lists what exists (search= finds by title)",
            "crmkit deals list shows what exists (--search finds by title)",
        ),
        (
            "GET /activities lists what exists (contact=, deal= and kind= narrow it)",
            "crmkit activities lists what exists (--kind narrows it; crmkit contacts activities CONTACT, crmkit deals activities DEAL)",
        ),
    ];
    let mut out = hint.replace(
        "sign in again with POST /auth/request then POST /auth/verify",
        &format!("sign in again: {login}"),
    );
    for (api, cli) in SAME {
        out = out.replace(api, cli);
    }
    // `send FIELD as …, or null to clear`: the CLI clears with --clear.
    if let Some(field) = out
        .strip_prefix("send ")
        .and_then(|r| r.split_whitespace().next())
        && out.ends_with("or null to clear")
    {
        let field = field.to_string();
        out = out.replace(
            "or null to clear",
            &format!("or empty it with --clear {field}"),
        );
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
            login: "crmkit login".to_string(),
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
        let writes = method != Method::GET;
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
        // Until the answer is in, an interruption may leave the change made.
        let _sent = writes.then(WriteInFlight::start);
        let res = rb.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "cannot connect"
            } else if e.is_timeout() {
                "timed out"
            } else {
                "request failed"
            };
            let made = if writes && !e.is_connect() {
                "; the change may have been made: check before sending it again"
            } else {
                "; is `crmkit serve` running there? set --server or CRMKIT_URL"
            };
            CliError::new(1, format!("{why}: {} ({e}){made}", self.base))
        })?;
        let status = res.status().as_u16();
        let text = res
            .text()
            .await
            .map_err(|e| CliError::new(1, e.to_string()))?;
        drop(_sent);
        if status >= 400 && !raw {
            return Err(api_error(&self.base, &self.login, status, &text));
        }
        Ok(Answer { status, text })
    }

    pub async fn get(&self, path: &str, json: bool) -> Result<Answer, CliError> {
        self.send(Method::GET, path, None, json, &[], false).await
    }
}

/// Writes sent whose answer has not come back yet.
static WRITES_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a write from its sending until its answer is read (or given up).
struct WriteInFlight;

impl WriteInFlight {
    fn start() -> WriteInFlight {
        WRITES_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        WriteInFlight
    }
}

impl Drop for WriteInFlight {
    fn drop(&mut self) {
        WRITES_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether a write was on its way when the CLI was interrupted: then the
/// change may have been made, and the user is told to check.
pub fn write_in_flight() -> bool {
    WRITES_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_errors_keep_the_hint_and_map_the_exit_code() {
        let e = api_error(
            "http://x",
            "crmkit login",
            404,
            "error: not_found\nmessage: no contact\nhint: check the id\n",
        );
        assert_eq!(e.code, 3);
        assert!(
            e.message.contains("not_found: no contact") && e.message.contains("hint: check the id")
        );
        let e = api_error(
            "http://x",
            "crmkit login --profile work",
            401,
            r#"{"error":"token_expired","message":"m","hint":"h"}"#,
        );
        assert_eq!(e.code, 4);
        assert_eq!(e.to_json()["error"], "token_expired");
        // Not a crmkit answer: said so, exit 1, not "not found".
        let e = api_error(
            "http://x",
            "crmkit login",
            404,
            "<!DOCTYPE HTML><html>nothing here</html>",
        );
        assert_eq!(e.code, 1);
        assert!(e.message.contains("not a crmkit server"), "{}", e.message);
        assert!(e.body.is_none());
    }

    #[test]
    fn hints_name_the_commands_of_this_profile() {
        assert_eq!(
            for_the_cli(
                "sign in again with POST /auth/request then POST /auth/verify",
                "crmkit login --profile work"
            ),
            "sign in again: crmkit login --profile work"
        );
        assert_eq!(
            for_the_cli(
                "send follow_up_at as RFC3339, e.g. 2026-06-10T09:00:00Z, or null to clear",
                "crmkit login"
            ),
            "send follow_up_at as RFC3339, e.g. 2026-06-10T09:00:00Z, or empty it with --clear follow_up_at"
        );
        assert_eq!(
            for_the_cli(
                "check the id; GET /deals lists what exists (search= finds by title)",
                "crmkit login"
            ),
            "check the id; crmkit deals list shows what exists (--search finds by title)"
        );
    }
}
