//! Client ID Metadata Documents: a client whose `client_id` is an https URL
//! publishes its name and redirect URIs at that URL, and the server fetches
//! the document when the client starts an authorization, instead of the
//! client registering first (`/oauth/register`).
//!
//! The fetch is a request the server makes to an address an outsider chose,
//! so it is guarded: https only; the host must resolve to public addresses
//! only (no loopback, private, link-local, shared or reserved ranges, IPv4 or
//! IPv6), and the request goes to the address that was checked (no second
//! lookup an attacker's DNS could answer differently); no redirects; at most
//! [`MAX_BYTES`], within [`TIMEOUT`]. A fetched document is used for
//! [`FRESH_FOR`] before it is fetched again. The test flag
//! `CRMKIT_TEST_CIMD_LOOPBACK=1` also lets `http://` loopback URLs through,
//! for the test suite's document server; nothing else changes with it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The largest document accepted.
pub const MAX_BYTES: usize = 16 * 1024;
/// The whole fetch (lookup, connection, body) must end within this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched document is used before it is fetched again.
pub const FRESH_FOR: Duration = Duration::from_secs(600);
/// The longest `client_id` URL accepted.
const MAX_URL: usize = 1000;

/// Whether a `client_id` names a metadata document (registered clients' ids
/// are `mcp_…` and never look like this).
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// What a client's metadata document says.
#[derive(Debug, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub redirect_uris: Vec<String>,
}

/// Why a document was not used: a sentence for the sign-in page.
#[derive(Debug)]
pub struct Refused(pub String);

fn refused(why: impl Into<String>) -> Refused {
    Refused(why.into())
}

/// When each document URL was last fetched (per process).
#[derive(Default)]
pub struct Cache {
    fetched: Mutex<HashMap<String, Instant>>,
}

impl Cache {
    pub fn is_fresh(&self, url: &str) -> bool {
        let fetched = self.fetched.lock().expect("never poisoned");
        fetched.get(url).is_some_and(|t| t.elapsed() < FRESH_FOR)
    }

    pub fn mark(&self, url: &str) {
        let mut fetched = self.fetched.lock().expect("never poisoned");
        if fetched.len() >= 10_000 {
            fetched.retain(|_, t| t.elapsed() < FRESH_FOR);
        }
        fetched.insert(url.to_string(), Instant::now());
    }
}

/// Whether an address is one the server may fetch from: not loopback,
/// private, link-local, shared (CGNAT), multicast, documentation, benchmark
/// or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x0064 && s[1] == 0xff9b)
        || (s[0] == 0x2002))
}

/// Fetches and checks the metadata document at `client_id`.
pub async fn fetch(client_id: &str, allow_loopback: bool) -> Result<Document, Refused> {
    let url = url::Url::parse(client_id)
        .map_err(|_| refused("The app's client_id is not a valid URL."))?;
    if client_id.len() > MAX_URL
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path().len() < 2
    {
        return Err(refused(
            "The app's client_id URL must be an https address with a path, without user, password or fragment.",
        ));
    }
    let loopback_test = allow_loopback && url.scheme() == "http";
    if url.scheme() != "https" && !loopback_test {
        return Err(refused("The app's client_id URL must use https."));
    }
    let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
        return Err(refused("The app's client_id URL has no host."));
    };
    let addrs: Vec<SocketAddr> = match &host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(*ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(*ip), port)],
        url::Host::Domain(d) => {
            match tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((*d, port))).await {
                Ok(Ok(found)) => found.collect(),
                _ => return Err(refused("The app's client_id host could not be resolved.")),
            }
        }
    };
    let allowed = |a: &SocketAddr| is_public(a.ip()) || (allow_loopback && a.ip().is_loopback());
    if addrs.is_empty() || !addrs.iter().all(allowed) {
        return Err(refused(
            "The app's client_id host is not a public address; it cannot be fetched.",
        ));
    }
    if loopback_test && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(refused("The app's client_id URL must use https."));
    }
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .user_agent(concat!("crmkit/", env!("CARGO_PKG_VERSION")));
    if let url::Host::Domain(d) = &host {
        // The request goes to the address checked above.
        client = client.resolve(d, addrs[0]);
    }
    let client = client
        .build()
        .map_err(|_| refused("The app's metadata document could not be fetched."))?;
    let unreachable = || refused("The app's metadata document could not be fetched.");
    let mut res = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|_| unreachable())?;
    if !res.status().is_success() {
        return Err(refused(format!(
            "The app's metadata document answered {} instead of the document.",
            res.status().as_u16()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|_| unreachable())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            return Err(refused(format!(
                "The app's metadata document is larger than {} KiB.",
                MAX_BYTES / 1024
            )));
        }
    }
    let doc = check(client_id, &body)?;
    tracing::info!(
        host = %host,
        "fetched a client metadata document"
    );
    Ok(doc)
}

/// Checks a fetched document: its `client_id` is the URL it came from; its
/// redirect URIs are allowed ones; it asks for nothing the server does not
/// do (public clients, the authorization code grant).
pub fn check(client_id: &str, body: &[u8]) -> Result<Document, Refused> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| refused("The app's metadata document is not JSON."))?;
    if v.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(refused(
            "The app's metadata document names another client_id than its own URL.",
        ));
    }
    let uris: Vec<String> = match v.get("redirect_uris").and_then(Value::as_array) {
        Some(a) if !a.is_empty() && a.len() <= 20 => a
            .iter()
            .map(|u| u.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| refused("The app's redirect_uris must be strings."))?,
        _ => {
            return Err(refused(
                "The app's metadata document lists no redirect_uris (1 to 20).",
            ));
        }
    };
    if let Some(bad) = uris.iter().find(|u| !super::oauth::redirect_uri_ok(u)) {
        return Err(refused(format!(
            "The app's redirect URI {bad:?} is not allowed: https, http on loopback, or the app's own scheme."
        )));
    }
    let method = v.get("token_endpoint_auth_method").and_then(Value::as_str);
    if method.is_some_and(|m| m != "none") {
        return Err(refused(
            "The app asks for a client secret; this server has public clients only (token_endpoint_auth_method none).",
        ));
    }
    let lists = |key: &str, needed: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .is_none_or(|a| a.iter().any(|g| g.as_str() == Some(needed)))
    };
    if !lists("grant_types", "authorization_code") || !lists("response_types", "code") {
        return Err(refused(
            "The app's metadata document does not use the authorization code flow.",
        ));
    }
    let host = url::Url::parse(client_id)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let name = v
        .get("client_name")
        .and_then(Value::as_str)
        .map(|n| {
            n.trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or(host);
    Ok(Document {
        name,
        redirect_uris: uris,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_document_must_name_itself_and_allowed_redirects() {
        let id = "https://app.example/client.json";
        let doc = |v: Value| check(id, v.to_string().as_bytes());
        let ok = doc(serde_json::json!({
            "client_id": id, "client_name": " Example\u{7} App ",
            "redirect_uris": ["https://app.example/cb"],
            "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"],
        }))
        .unwrap();
        assert_eq!(ok.name, "Example App");
        assert_eq!(ok.redirect_uris, ["https://app.example/cb"]);
        let unnamed =
            doc(serde_json::json!({"client_id": id, "redirect_uris": ["https://app.example/cb"]}))
                .unwrap();
        assert_eq!(unnamed.name, "app.example");
        for (bad, why) in [
            (
                serde_json::json!({"client_id": "https://evil.example/c.json", "redirect_uris": ["https://app.example/cb"]}),
                "another client_id",
            ),
            (serde_json::json!({"client_id": id}), "no redirect_uris"),
            (
                serde_json::json!({"client_id": id, "redirect_uris": []}),
                "no redirect_uris",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": [7]}),
                "strings",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": ["http://evil.example/cb"]}),
                "not allowed",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": ["javascript://cb"]}),
                "not allowed",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "client_secret_basic"}),
                "client secret",
            ),
            (
                serde_json::json!({"client_id": id, "redirect_uris": ["https://app.example/cb"], "grant_types": ["client_credentials"]}),
                "authorization code",
            ),
        ] {
            let err = doc(bad.clone()).unwrap_err().0;
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check(id, b"<html>").unwrap_err().0.contains("not JSON"));
    }

    #[tokio::test]
    async fn urls_that_are_not_fetched() {
        for (url, why) in [
            ("http://app.example/client.json", "must use https"),
            ("https://app.example/", "with a path"),
            ("https://user@app.example/c.json", "without user"),
            ("https://app.example/c.json#x", "fragment"),
            ("https://127.0.0.1/c.json", "not a public address"),
            ("https://10.0.0.8/c.json", "not a public address"),
            ("https://[::1]/c.json", "not a public address"),
            ("https://localhost/c.json", "not a public address"),
            ("http://127.0.0.1:9/c.json", "must use https"),
        ] {
            let err = fetch(url, false).await.unwrap_err().0;
            assert!(err.contains(why), "{url}: {err}");
        }
        // The test flag lets loopback through, and plain http only there.
        let err = fetch("http://10.0.0.8/c.json", true).await.unwrap_err().0;
        assert!(err.contains("not a public address"), "{err}");
    }
}
