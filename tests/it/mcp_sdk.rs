//! The connector with a real MCP client: the official Python SDK's OAuth
//! client and session (tests/mcp_client/connect.py), against the real server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::harness::Server;

/// The Python that has the `mcp` package: `CRMKIT_TEST_PYTHON`, else `python3`.
fn python_with_mcp() -> Option<String> {
    let py = std::env::var("CRMKIT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import mcp.client.auth, httpx2"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

#[tokio::test]
async fn the_official_python_sdk_connects_calls_and_is_cut_off() {
    let py = python_with_mcp();
    if !crate::require(
        "the MCP Python SDK (pip install mcp; or set CRMKIT_TEST_PYTHON)",
        py.is_some(),
    ) {
        return;
    }
    let s = Server::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client/connect.py");
    let mut child = Command::new(py.unwrap())
        .args([script, &s.base, "sdk@example.com"])
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
    let mut saw_ok = false;
    while let Some(line) = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
        .await
        .expect("script hung")
    {
        if line == "NEED_CODE" {
            let code = s.nth_code("sdk@example.com", 1).await;
            writeln!(stdin, "{code}").unwrap();
            stdin.flush().unwrap();
        } else if line == "OK" {
            saw_ok = true;
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && saw_ok,
        "the SDK run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
