//! The CLI's error type and its exit codes (SPEC §8, documented in `--help`).

/// 0 ok, 1 error, 2 usage/invalid, 3 not found, 4 auth needed, 5 forbidden,
/// 6 needs a human, 130 interrupted.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
    /// The server's error object as it sent it (`error`, `message`, `hint`,
    /// `allowed`, …), shown as is on stderr under `--json`.
    pub body: Option<serde_json::Value>,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
            body: None,
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(2, message)
    }
    pub fn human(message: impl Into<String>) -> CliError {
        CliError::new(6, message)
    }
    pub fn auth(message: impl Into<String>) -> CliError {
        CliError::new(4, message)
    }
}

impl CliError {
    /// The error as one JSON object for `--json`: the server's own when it
    /// sent one, else `{"error": WHAT, "message": …}` with WHAT named after
    /// the exit code.
    pub fn to_json(&self) -> serde_json::Value {
        if let Some(b) = &self.body {
            return b.clone();
        }
        let what = match self.code {
            2 => "usage",
            3 => "not_found",
            4 => "auth_required",
            5 => "forbidden",
            6 => "needs_a_human",
            130 => "interrupted",
            _ => "error",
        };
        let message = self
            .message
            .strip_prefix("error: ")
            .unwrap_or(&self.message);
        serde_json::json!({"error": what, "message": message, "exit_code": self.code})
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The exit code for an API error code and HTTP status.
pub fn for_api(status: u16, code: &str) -> u8 {
    match (status, code) {
        (_, "auth_required" | "invalid_token" | "token_expired") => 4,
        (_, "confirmation_required" | "escalation_required") => 6,
        (_, "admin_required" | "plan_limit_reached") => 5,
        (404, _) => 3,
        (401, _) => 4,
        (403, _) => 5,
        // Not a fault of the request: the same one works later (Retry-After).
        (429, _) => 1,
        (400..=499, _) => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_map_to_the_documented_codes() {
        assert_eq!(for_api(401, "token_expired"), 4);
        assert_eq!(for_api(404, "not_found"), 3);
        assert_eq!(for_api(400, "invalid_request"), 2);
        assert_eq!(for_api(403, "plan_limit_reached"), 5);
        assert_eq!(for_api(409, "confirmation_required"), 6);
        assert_eq!(for_api(409, "conflict"), 2);
        assert_eq!(for_api(429, "rate_limited"), 1);
        assert_eq!(for_api(500, "internal"), 1);
        assert_eq!(for_api(502, "email_failed"), 1);
    }
}
