//! A real SMTP server on loopback for the tests: it speaks enough of RFC 5321
//! for lettre's SMTP transport (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and
//! keeps every message it accepts. `Mode::Refuse` answers 550 to every
//! recipient, to prove the server's `email_failed` path; `Mode::Hold` keeps
//! a sender waiting, to prove that a slow mail server holds nothing else up;
//! [`SmtpServer::hold_next_to`] keeps one message waiting while the others
//! go through. With [`Security::StartTls`] or [`Security::Tls`] it speaks
//! STARTTLS or TLS from the first byte, with a certificate of its own for
//! `localhost` (its PEM in `ca_pem`, for the server's `CRMKIT_SMTP_CA_FILE`).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// 550 to every recipient.
    Refuse,
    /// Takes the whole message (kept in the inbox for inspection), then answers 554.
    RefuseAfterData,
    /// Answers nothing to `MAIL FROM` until the mode changes.
    Hold,
}

/// How the connection to the test server is secured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Security {
    Plain,
    /// Plain until the client's STARTTLS, which it must send before MAIL.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Tls,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: String,
    /// The message came over TLS.
    pub tls: bool,
}

/// How a conversation ended.
#[derive(PartialEq, Eq)]
enum Ended {
    Closed,
    /// The client asked for STARTTLS and was told to go ahead.
    StartTls,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    pub inbox: Arc<Mutex<Vec<Received>>>,
    pub mode: Arc<Mutex<Mode>>,
    /// Senders kept waiting by `Mode::Hold` or `hold_next_to` so far.
    pub held: Arc<std::sync::atomic::AtomicUsize>,
    /// The next message to this address waits at `RCPT TO` until `release`.
    hold_next: Arc<Mutex<Option<String>>>,
    released: Arc<std::sync::atomic::AtomicBool>,
    pub security: Security,
    acceptor: Option<TlsAcceptor>,
    /// The certificate the server presents (PEM), when it speaks TLS.
    pub ca_pem: Option<String>,
}

impl SmtpServer {
    pub async fn start_with(mode: Mode, security: Security) -> SmtpServer {
        let (acceptor, ca_pem) = match security {
            Security::Plain => (None, None),
            _ => {
                let (acceptor, pem) = tls_acceptor();
                (Some(acceptor), Some(pem))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = SmtpServer {
            port,
            inbox: Arc::new(Mutex::new(Vec::new())),
            mode: Arc::new(Mutex::new(mode)),
            held: Arc::default(),
            hold_next: Arc::default(),
            released: Arc::default(),
            security,
            acceptor,
            ca_pem,
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(sock).await;
                });
            }
        });
        server
    }

    /// `CRMKIT_SMTP_URL` for this server.
    pub fn url(&self) -> String {
        match self.security {
            Security::Plain => format!("smtp://127.0.0.1:{}", self.port),
            Security::StartTls => format!("smtp+starttls://localhost:{}", self.port),
            Security::Tls => format!("smtps://localhost:{}", self.port),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Keeps the next message to `addr` waiting at its `RCPT TO` (counted in
    /// `held`) until [`SmtpServer::release`]; other messages, to `addr` too,
    /// go through meanwhile. Once released it is answered by the mode then.
    pub fn hold_next_to(&self, addr: &str) {
        self.released
            .store(false, std::sync::atomic::Ordering::SeqCst);
        *self.hold_next.lock().unwrap() = Some(addr.to_string());
    }

    pub fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn session(&self, sock: TcpStream) -> std::io::Result<()> {
        let acceptor = self.acceptor.as_ref();
        if let (Security::Tls, Some(acceptor)) = (self.security, acceptor) {
            let tls = acceptor.accept(sock).await?;
            self.converse(&mut BufReader::new(tls), true, true).await?;
            return Ok(());
        }
        let mut plain = BufReader::new(sock);
        if self.converse(&mut plain, false, true).await? == Ended::StartTls
            && let Some(acceptor) = acceptor
        {
            let tls = acceptor.accept(plain.into_inner()).await?;
            self.converse(&mut BufReader::new(tls), true, false).await?;
        }
        Ok(())
    }

    /// One SMTP conversation over `s` (`tls`: already encrypted).
    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut BufReader<S>,
        tls: bool,
        greet: bool,
    ) -> std::io::Result<Ended> {
        let offer_starttls = self.security == Security::StartTls && !tls;
        if greet {
            reply(s, b"220 localhost test ESMTP\r\n").await?;
        }
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 {
                return Ok(Ended::Closed);
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                if offer_starttls {
                    reply(s, b"250-localhost\r\n250-STARTTLS\r\n250 8BITMIME\r\n").await?;
                } else {
                    reply(s, b"250-localhost\r\n250 8BITMIME\r\n").await?;
                }
            } else if upper == "STARTTLS" && offer_starttls {
                reply(s, b"220 go ahead\r\n").await?;
                return Ok(Ended::StartTls);
            } else if offer_starttls && !upper.starts_with("QUIT") {
                // Nothing goes over the wire in the clear here.
                reply(s, b"530 must issue a STARTTLS command first\r\n").await?;
            } else if upper.starts_with("MAIL FROM") {
                if *self.mode.lock().unwrap() == Mode::Hold {
                    self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while *self.mode.lock().unwrap() == Mode::Hold {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                rcpt.clear();
                reply(s, b"250 ok\r\n").await?;
            } else if upper.starts_with("RCPT TO") {
                let addr = cmd[8..]
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string();
                let hold = {
                    let mut next = self.hold_next.lock().unwrap();
                    let hold = next.as_deref() == Some(addr.as_str());
                    if hold {
                        *next = None;
                    }
                    hold
                };
                if hold {
                    self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                if *self.mode.lock().unwrap() == Mode::Refuse {
                    reply(s, b"550 mailbox unavailable\r\n").await?;
                } else {
                    rcpt.push(addr);
                    reply(s, b"250 ok\r\n").await?;
                }
            } else if upper == "DATA" {
                reply(s, b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await? == 0 {
                        return Ok(Ended::Closed);
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                self.inbox.lock().unwrap().push(Received {
                    rcpt: rcpt.clone(),
                    data,
                    tls,
                });
                if *self.mode.lock().unwrap() == Mode::RefuseAfterData {
                    reply(s, b"554 rejected\r\n").await?;
                } else {
                    reply(s, b"250 queued\r\n").await?;
                }
            } else if upper == "QUIT" {
                reply(s, b"221 bye\r\n").await?;
                return Ok(Ended::Closed);
            } else if upper == "RSET" || upper == "NOOP" {
                reply(s, b"250 ok\r\n").await?;
            } else {
                reply(s, b"502 not implemented\r\n").await?;
            }
        }
    }

    /// Every message sent to `addr` so far.
    pub fn mails_to(&self, addr: &str) -> Vec<Received> {
        self.inbox
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.rcpt.iter().any(|r| r.eq_ignore_ascii_case(addr)))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().clone()
    }
}

/// Writes one reply and flushes it (a TLS stream holds what it is given).
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    text: &[u8],
) -> std::io::Result<()> {
    s.write_all(text).await?;
    s.flush().await
}

/// A TLS acceptor with a new self-signed certificate for `localhost`, and
/// that certificate as PEM.
fn tls_acceptor() -> (TlsAcceptor, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), cert.pem())
}

/// The six-digit code in a message (the subject carries it).
pub fn code_in(data: &str) -> Option<String> {
    let subject = data.lines().find(|l| l.starts_with("Subject:"))?;
    let digits: String = subject.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits.len() >= 6).then(|| digits[digits.len() - 6..].to_string())
}
