//! Outgoing mail: login codes, step-up codes and invites.
//!
//! With `CRMKIT_SMTP_URL` set, mail goes through lettre's SMTP transport (plain,
//! STARTTLS or TLS). Without it the server is in local mail mode: each mail is
//! one line in the log marked `LOCAL-MAIL`, the only place a code is ever logged.

use std::time::Duration;

use axum::http::StatusCode;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{ConfigError, MailMode, Settings};
use crate::error::AppError;

pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The one line written in local mail mode (may hold the code).
    pub local_line: String,
}

#[derive(Clone)]
pub enum Mailer {
    Local,
    Smtp(Box<Smtp>),
}

#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// `smtp+starttls://…` is our spelling of lettre's `smtp://…?tls=required`.
fn lettre_url(url: &str) -> String {
    match url.strip_prefix("smtp+starttls://") {
        Some(rest) => {
            let sep = if rest.contains('?') { '&' } else { '?' };
            format!("smtp://{rest}{sep}tls=required")
        }
        None => url.to_string(),
    }
}

/// The TLS settings of a `smtp+starttls://` or `smtps://` URL that also
/// trust the CA certificates of `smtp_ca_file` (a mail server with a
/// certificate from a private CA). The server's name is still verified.
fn private_ca_tls(url: &str, pem: &[u8]) -> Result<Tls, ConfigError> {
    let bad = |e: &dyn std::fmt::Display| ConfigError(format!("invalid smtp_ca_file: {e}"));
    let parsed = url::Url::parse(url).map_err(|e| ConfigError(format!("invalid smtp_url: {e}")))?;
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(ConfigError("invalid smtp_url: no host".into())),
    };
    let ca = Certificate::from_pem(pem).map_err(|e| bad(&e))?;
    let params = TlsParameters::builder(host)
        .add_root_certificate(ca)
        .build()
        .map_err(|e| bad(&e))?;
    Ok(if url.starts_with("smtps://") {
        Tls::Wrapper(params)
    } else {
        Tls::Required(params)
    })
}

impl Mailer {
    pub fn new(settings: &Settings) -> Result<Mailer, ConfigError> {
        match &settings.mail {
            MailMode::Local => Ok(Mailer::Local),
            MailMode::Smtp(url) => {
                let mut transport =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url(url))
                        .map_err(|e| ConfigError(format!("invalid smtp_url: {e}")))?
                        .timeout(Some(Duration::from_secs(15)));
                if let Some(pem) = &settings.smtp_ca {
                    transport = transport.tls(private_ca_tls(url, pem)?);
                }
                let transport = transport.build();
                let from = settings
                    .mail_from
                    .parse()
                    .map_err(|e| ConfigError(format!("invalid mail_from: {e}")))?;
                Ok(Mailer::Smtp(Box::new(Smtp { transport, from })))
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Mailer::Local)
    }

    pub async fn send(&self, mail: Mail) -> Result<(), AppError> {
        match self {
            Mailer::Local => {
                tracing::warn!(
                    "LOCAL-MAIL {}",
                    crate::wire::line::escape_inline(&mail.local_line)
                );
                Ok(())
            }
            Mailer::Smtp(smtp) => {
                let Smtp { transport, from } = smtp.as_ref();
                let failed = |detail: String| {
                    tracing::warn!("mail delivery failed: {detail}");
                    AppError::new(
                        "email_failed",
                        StatusCode::BAD_GATEWAY,
                        "the mail server refused the message or could not be reached",
                        "no code was sent and none is usable; retry in a minute, and tell the operator if it keeps failing",
                    )
                };
                let to: Mailbox = mail
                    .to
                    .parse()
                    .map_err(|e| failed(format!("recipient: {e}")))?;
                let msg = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject)
                    .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
                    .map_err(|e| failed(format!("building message: {e}")))?;
                transport
                    .send(msg)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                Ok(())
            }
        }
    }
}

/// Minimal HTML escaping for the HTML part.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
