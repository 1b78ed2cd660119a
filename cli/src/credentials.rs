//! Where the bearer token lives: `CRMKIT_TOKEN` > the OS keyring (Secret
//! Service, Keychain, Credential Manager) > a 0600 file in the config dir, used
//! only when no keyring works (with a warning). Tokens are kept per server URL
//! and profile ([`SignIn::key`]).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::exit::CliError;

const SERVICE: &str = "crmkit";

/// A place a token can be kept.
pub trait Store {
    fn get(&self, server: &str) -> Result<Option<String>, String>;
    fn set(&self, server: &str, token: &str) -> Result<(), String>;
    fn delete(&self, server: &str) -> Result<(), String>;
    fn name(&self) -> &'static str;
}

/// The OS keyring. Every call runs on a helper thread with a timeout, because a
/// locked or absent Secret Service can block.
pub struct Keyring;

fn with_timeout<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(3))
        .unwrap_or_else(|_| Err("the keyring did not answer".into()))
}

impl Store for Keyring {
    fn get(&self, server: &str) -> Result<Option<String>, String> {
        let server = server.to_string();
        with_timeout(move || {
            let entry = keyring::Entry::new(SERVICE, &server).map_err(|e| e.to_string())?;
            match entry.get_password() {
                Ok(t) => Ok(Some(t)),
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }
    fn set(&self, server: &str, token: &str) -> Result<(), String> {
        let (server, token) = (server.to_string(), token.to_string());
        with_timeout(move || {
            keyring::Entry::new(SERVICE, &server)
                .and_then(|e| e.set_password(&token))
                .map_err(|e| e.to_string())
        })
    }
    fn delete(&self, server: &str) -> Result<(), String> {
        let server = server.to_string();
        with_timeout(move || {
            match keyring::Entry::new(SERVICE, &server).and_then(|e| e.delete_credential()) {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
    fn name(&self) -> &'static str {
        "the OS keyring"
    }
}

/// `tokens.json` (mode 0600) in the config dir: `{ "<server>": "<token>" }`.
pub struct File {
    pub path: PathBuf,
}

impl File {
    pub fn default_location() -> Result<File, CliError> {
        let dir = match std::env::var_os("CRMKIT_CONFIG_DIR") {
            Some(d) => PathBuf::from(d),
            None => directories::ProjectDirs::from("", "", "crmkit")
                .ok_or_else(|| {
                    CliError::new(
                        1,
                        "no home directory for the token file; set CRMKIT_CONFIG_DIR",
                    )
                })?
                .config_dir()
                .to_path_buf(),
        };
        Ok(File {
            path: dir.join("tokens.json"),
        })
    }

    fn read(&self) -> serde_json::Map<String, serde_json::Value> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    }

    fn write(&self, map: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let text = serde_json::to_string_pretty(map).map_err(|e| e.to_string())?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&self.path).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        }
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| e.to_string())
    }
}

impl Store for File {
    fn get(&self, server: &str) -> Result<Option<String>, String> {
        Ok(self
            .read()
            .get(server)
            .and_then(|v| v.as_str())
            .map(str::to_string))
    }
    fn set(&self, server: &str, token: &str) -> Result<(), String> {
        let mut m = self.read();
        m.insert(server.to_string(), token.into());
        self.write(&m)
    }
    fn delete(&self, server: &str) -> Result<(), String> {
        let mut m = self.read();
        if m.remove(server).is_some() {
            self.write(&m)?;
        }
        Ok(())
    }
    fn name(&self) -> &'static str {
        "the token file"
    }
}

/// The store to use: the keyring when it answers, else the file (with a
/// one-line warning). `CRMKIT_KEYRING=off` skips the keyring.
pub fn store() -> Result<Box<dyn Store>, CliError> {
    let off = std::env::var("CRMKIT_KEYRING").is_ok_and(|v| v == "off" || v == "0");
    if !off {
        let probe = with_timeout(|| {
            keyring::Entry::store_status()
                .as_ref()
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .and_then(|_| Keyring.get("crmkit-probe").map(|_| ()));
        if probe.is_ok() {
            return Ok(Box::new(Keyring));
        }
    }
    let file = File::default_location()?;
    // Only a fallback is worth a warning: CRMKIT_KEYRING=off chose the file.
    if !off {
        eprintln!(
            "warning: no OS keyring available; keeping the token in {} (mode 0600; CRMKIT_KEYRING=off chooses the file without this warning)",
            file.path.display()
        );
    }
    Ok(Box::new(file))
}

/// One sign-in: a server, and a profile (`None` for the default one).
#[derive(Clone, Copy, Debug)]
pub struct SignIn<'a> {
    pub server: &'a str,
    pub profile: Option<&'a str>,
}

impl SignIn<'_> {
    /// The name its token is kept under: the server URL, as before profiles
    /// existed, for the default profile; `NAME@URL` for another.
    pub fn key(&self) -> String {
        match self.profile {
            None => self.server.to_string(),
            Some(p) => format!("{p}@{}", self.server),
        }
    }

    /// How to sign in again: `crmkit login`, with the profile if any.
    pub fn login_hint(&self) -> String {
        match self.profile {
            None => "crmkit login".into(),
            Some(p) => format!("crmkit login --profile {p}"),
        }
    }
}

impl std::fmt::Display for SignIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.profile {
            None => write!(f, "{}", self.server),
            Some(p) => write!(f, "{} (profile {p})", self.server),
        }
    }
}

/// The token of a sign-in: `CRMKIT_TOKEN` first, then the store.
pub fn token(signin: &SignIn) -> Result<String, CliError> {
    if let Ok(t) = std::env::var("CRMKIT_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_string());
    }
    let store = store()?;
    match store.get(&signin.key()) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(CliError::auth(format!(
            "not signed in to {signin}: run `{}`",
            signin.login_hint()
        ))),
        Err(e) => Err(CliError::auth(format!(
            "cannot read the token from {}: {e}; run `{}`",
            store.name(),
            signin.login_hint()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_store_keeps_tokens_per_server_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("crmkit-cred-{}", std::process::id()));
        let f = File {
            path: dir.join("tokens.json"),
        };
        f.set("http://a", "ck_a").unwrap();
        f.set("http://b", "ck_b").unwrap();
        assert_eq!(f.get("http://a").unwrap().as_deref(), Some("ck_a"));
        f.delete("http://a").unwrap();
        assert_eq!(f.get("http://a").unwrap(), None);
        assert_eq!(f.get("http://b").unwrap().as_deref(), Some("ck_b"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
