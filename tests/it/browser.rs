//! The OAuth sign-in page in a real headless Chromium (tests/browser/signin.mjs,
//! playwright-core driving the system's chromium). Screenshots of each step are
//! kept in target/browser-artifacts/.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::harness::Server;
use crate::mcp::{VERIFIER, authorize_url, register};

fn browser_ready() -> bool {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    std::path::Path::new(&chromium).exists()
        && std::path::Path::new(&format!("{dir}/node_modules/playwright-core")).exists()
        && Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn a_person_signs_in_through_the_page_in_chromium() {
    if !crate::require(
        "Chromium and playwright-core (apt-get install chromium; npm ci in tests/browser)",
        browser_ready(),
    ) {
        return;
    }
    let s = Server::start().await;
    // The redirect lands on a loopback page this test serves.
    let landing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        landing.local_addr().unwrap().port()
    );
    let (hit_tx, mut hit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = landing.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let _ = hit_tx.send(req.lines().next().unwrap_or("").to_string());
            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 9\r\nconnection: close\r\n\r\nconnected").await;
        }
    });
    let client = register(&s, &redirect, "Browser test").await;
    let url = authorize_url(&s, &client, &redirect, VERIFIER, "st8");
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/browser-artifacts");
    std::fs::create_dir_all(shots).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/signin.mjs");
    let mut child = Command::new("node")
        .args([script, &url, "browser@example.com", shots])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut landed = None;
    while let Some(line) = tokio::time::timeout(std::time::Duration::from_secs(90), rx.recv())
        .await
        .expect("browser hung")
    {
        if line == "NEED_CODE" {
            let code = s.nth_code("browser@example.com", 1).await;
            writeln!(stdin, "{code}").unwrap();
            stdin.flush().unwrap();
        } else if let Some(u) = line.strip_prefix("LANDED ") {
            landed = Some(u.to_string());
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let landed = landed.expect("never landed on the redirect");
    assert!(
        landed.starts_with(&redirect)
            && landed.contains("code=oc_")
            && landed.contains("state=st8"),
        "{landed}"
    );
    let request_line = hit_rx.recv().await.unwrap();
    assert!(
        request_line.starts_with("GET /callback?code="),
        "{request_line}"
    );
    for shot in ["1-email.png", "2-code.png", "3-consent.png"] {
        assert!(
            std::fs::metadata(format!("{shots}/{shot}")).unwrap().len() > 1000,
            "{shot}"
        );
    }
}
