//! Validators shared by several endpoints: addresses, labels, names.

use crate::error::AppError;

/// Normalises and checks an email address: a bare ASCII `local@domain`, at most
/// 254 characters, lowercased. Display names, lists, whitespace, control and
/// non-ASCII characters are refused, so a look-alike (`ı`, the Kelvin sign) can
/// never reach another person's account or inbox.
pub fn email(field: &str, raw: &str) -> Result<String, AppError> {
    let bad = |why: &str| {
        AppError::invalid(
            format!("{field} {why}"),
            format!("send {field} as a plain address like jane@example.com"),
        )
    };
    if raw.is_empty() {
        return Err(bad("is empty"));
    }
    if raw.len() > 254 {
        return Err(bad("is longer than 254 characters"));
    }
    if !raw.is_ascii() {
        return Err(bad("contains non-ASCII characters"));
    }
    if raw
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("contains spaces or control characters"));
    }
    if raw.bytes().any(|b| b"<>(),;:\"[]\\".contains(&b)) {
        return Err(bad(
            "must be a single bare address (no name, brackets or lists)",
        ));
    }
    let Some((local, domain)) = raw.rsplit_once('@') else {
        return Err(bad("has no @"));
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return Err(bad("has an invalid part before the @"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad("has misplaced dots before the @"));
    }
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !domain_ok {
        return Err(bad("has an invalid domain"));
    }
    Ok(raw.to_ascii_lowercase())
}

/// `j***@example.com`: enough for a person to recognise, not to harvest.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// A short printable label (token names, workspace names): 1..=max characters
/// after trimming, no control characters.
pub fn label(field: &str, raw: &str, max: usize) -> Result<String, AppError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(AppError::invalid(
            format!("{field} is empty"),
            format!("send a non-empty {field}"),
        ));
    }
    if s.chars().count() > max {
        return Err(AppError::invalid(
            format!("{field} is longer than {max} characters"),
            format!("shorten {field} to at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(AppError::invalid(
            format!("{field} contains control characters (newlines, tabs, …)"),
            format!("send {field} as one line of printable text"),
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_unsafe_address() {
        for bad in [
            "",
            "a b@x.com",
            "a@x.com\r\nBcc: evil@x.com",
            "Jane <j@x.com>",
            "a@x.com,b@y.com",
            "a@x.com;b@y.com",
            "noat",
            "@x.com",
            "a@",
            "a@-x.com",
            "a@x..com",
            "\u{131}@x.com",
            "\u{212a}ate@x.com",
            &format!("{}@x.com", "a".repeat(300)),
        ] {
            assert!(email("email", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            email("email", "Jane.Doe+crm@Example.COM").unwrap(),
            "jane.doe+crm@example.com"
        );
        assert_eq!(mask_email("jane@example.com"), "j***@example.com");
    }
}
