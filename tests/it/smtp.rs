//! A real SMTP server on loopback for the tests: it speaks enough of RFC 5321
//! for lettre's SMTP transport (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and
//! keeps every message it accepts. `Mode::Refuse` answers 550 to every
//! recipient, to prove the server's `email_failed` path; `Mode::Hold` keeps
//! a sender waiting, to prove that a slow mail server holds nothing else up;
//! [`SmtpServer::hold_next_to`] keeps one message waiting while the others
//! go through.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

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

#[derive(Clone, Debug)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: String,
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
}

impl SmtpServer {
    pub async fn start(mode: Mode) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = SmtpServer {
            port,
            inbox: Arc::new(Mutex::new(Vec::new())),
            mode: Arc::new(Mutex::new(mode)),
            held: Arc::default(),
            hold_next: Arc::default(),
            released: Arc::default(),
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

    async fn session(&self, sock: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 localhost test ESMTP\r\n").await?;
        let mut rcpt = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                w.write_all(b"250-localhost\r\n250 8BITMIME\r\n").await?;
            } else if upper.starts_with("MAIL FROM") {
                if *self.mode.lock().unwrap() == Mode::Hold {
                    self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while *self.mode.lock().unwrap() == Mode::Hold {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                rcpt.clear();
                w.write_all(b"250 ok\r\n").await?;
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
                    w.write_all(b"550 mailbox unavailable\r\n").await?;
                } else {
                    rcpt.push(addr);
                    w.write_all(b"250 ok\r\n").await?;
                }
            } else if upper == "DATA" {
                w.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                self.inbox.lock().unwrap().push(Received {
                    rcpt: rcpt.clone(),
                    data,
                });
                if *self.mode.lock().unwrap() == Mode::RefuseAfterData {
                    w.write_all(b"554 rejected\r\n").await?;
                } else {
                    w.write_all(b"250 queued\r\n").await?;
                }
            } else if upper == "QUIT" {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else if upper == "RSET" || upper == "NOOP" {
                w.write_all(b"250 ok\r\n").await?;
            } else {
                w.write_all(b"502 not implemented\r\n").await?;
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

/// The six-digit code in a message (the subject carries it).
pub fn code_in(data: &str) -> Option<String> {
    let subject = data.lines().find(|l| l.starts_with("Subject:"))?;
    let digits: String = subject.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits.len() >= 6).then(|| digits[digits.len() - 6..].to_string())
}
