//! Serve settings: defaults < config file (TOML) < environment < flags.
//!
//! Every setting is a flag with a `CRMKIT_*` environment variable (clap merges
//! those two, flag first); the config file fills what neither gave; then the
//! built-in defaults. Values are read as strings and validated here, so every bad
//! value stops start-up with one line naming the setting, and exit code 2.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Flags of `crmkit serve` (and of `migrate` / `admin`, which need the database).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)
    #[arg(long, env = "CRMKIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "CRMKIT_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// `sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]
    #[arg(long, env = "CRMKIT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]
    #[arg(long, env = "CRMKIT_BASE_URL", value_name = "URL")]
    pub base_url: Option<String>,
    /// `smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode
    #[arg(long, env = "CRMKIT_SMTP_URL", value_name = "URL")]
    pub smtp_url: Option<String>,
    /// PEM file of CA certificates to trust for the SMTP server's certificate, besides the public ones (smtp+starttls:// and smtps:// only)
    #[arg(long, env = "CRMKIT_SMTP_CA_FILE", value_name = "FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// Sender address [default: crmkit <no-reply@localhost>]
    #[arg(long, env = "CRMKIT_MAIL_FROM", value_name = "ADDR")]
    pub mail_from: Option<String>,
    /// A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]
    #[arg(long, env = "CRMKIT_TOKEN_IDLE_TTL", value_name = "DURATION")]
    pub token_idle_ttl: Option<String>,
    /// Database pool size [default: 8 for SQLite, 10 for PostgreSQL]
    #[arg(long, env = "CRMKIT_DB_MAX_CONNECTIONS", value_name = "N")]
    pub db_max_connections: Option<String>,
    /// How long start-up keeps retrying an unreachable database [default: 30s]
    #[arg(long, env = "CRMKIT_DB_STARTUP_WAIT", value_name = "DURATION")]
    pub db_startup_wait: Option<String>,
    /// Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]
    #[arg(long, env = "CRMKIT_BODY_LIMIT", value_name = "SIZE")]
    pub body_limit: Option<String>,
    /// Log filter, e.g. info or crmkit=debug [default: info]
    #[arg(long, env = "CRMKIT_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)
    #[arg(long, env = "CRMKIT_TRUST_PROXY", value_name = "BOOL")]
    pub trust_proxy: Option<String>,
    /// The default plan's contacts cap [default: 1000]
    #[arg(
        long,
        env = "CRMKIT_LIMIT_CONTACTS",
        value_name = "N",
        hide_short_help = true
    )]
    pub limit_contacts: Option<String>,
    /// The default plan's companies cap [default: 1000]
    #[arg(
        long,
        env = "CRMKIT_LIMIT_COMPANIES",
        value_name = "N",
        hide_short_help = true
    )]
    pub limit_companies: Option<String>,
    /// The default plan's deals cap [default: 1000]
    #[arg(
        long,
        env = "CRMKIT_LIMIT_DEALS",
        value_name = "N",
        hide_short_help = true
    )]
    pub limit_deals: Option<String>,
    /// The default plan's members cap, pending invites included [default: 10]
    #[arg(
        long,
        env = "CRMKIT_LIMIT_MEMBERS",
        value_name = "N",
        hide_short_help = true
    )]
    pub limit_members: Option<String>,
    /// The default plan's workspaces-per-user cap [default: 5]
    #[arg(
        long,
        env = "CRMKIT_LIMIT_WORKSPACES",
        value_name = "N",
        hide_short_help = true
    )]
    pub limit_workspaces: Option<String>,
}

/// The config file. Unknown keys are an error that names the key.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    database_url: Option<String>,
    base_url: Option<String>,
    smtp_url: Option<String>,
    smtp_ca_file: Option<PathBuf>,
    mail_from: Option<String>,
    token_idle_ttl: Option<String>,
    db_max_connections: Option<u32>,
    db_startup_wait: Option<String>,
    body_limit: Option<String>,
    log: Option<String>,
    trust_proxy: Option<bool>,
    #[serde(default)]
    plans: BTreeMap<String, FilePlan>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FilePlan {
    contacts: Option<i64>,
    companies: Option<i64>,
    deals: Option<i64>,
    members: Option<i64>,
    workspaces: Option<i64>,
}

/// Caps of one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub contacts: i64,
    pub companies: i64,
    pub deals: i64,
    pub members: i64,
    pub workspaces: i64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            contacts: 1000,
            companies: 1000,
            deals: 1000,
            members: 10,
            workspaces: 5,
        }
    }
}

impl Plan {
    fn overlay(mut self, f: &FilePlan) -> Plan {
        self.contacts = f.contacts.unwrap_or(self.contacts);
        self.companies = f.companies.unwrap_or(self.companies);
        self.deals = f.deals.unwrap_or(self.deals);
        self.members = f.members.unwrap_or(self.members);
        self.workspaces = f.workspaces.unwrap_or(self.workspaces);
        self
    }
}

/// How mail leaves the server.
#[derive(Clone, PartialEq, Eq)]
pub enum MailMode {
    /// No SMTP configured: each mail is one marked line in the server log.
    Local,
    Smtp(String),
}

impl std::fmt::Debug for MailMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailMode::Local => f.write_str("Local"),
            // The URL may carry a password.
            MailMode::Smtp(_) => f.write_str("Smtp(<redacted>)"),
        }
    }
}

/// Fully resolved, validated settings.
#[derive(Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub base_url: String,
    pub mail: MailMode,
    /// `smtp_ca_file`'s certificates (PEM), trusted besides the public roots.
    pub smtp_ca: Option<Vec<u8>>,
    /// Test flag `CRMKIT_TEST_CIMD_LOOPBACK=1`: client metadata documents may
    /// be fetched from loopback, over http (`mcp::cimd`).
    pub cimd_loopback: bool,
    pub mail_from: String,
    pub token_idle_ttl: Duration,
    pub db_max_connections: Option<u32>,
    pub db_startup_wait: Duration,
    pub log: String,
    pub trust_proxy: bool,
    pub plans: BTreeMap<String, Plan>,
    /// Request body cap in bytes.
    pub body_limit: usize,
    /// Login-code requests allowed per address per window.
    pub auth_per_email: i64,
    /// Auth calls (request + verify) allowed per client address per window.
    pub auth_per_ip: i64,
    pub rate_window: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("base_url", &self.base_url)
            .field("mail", &self.mail)
            .field("token_idle_ttl", &self.token_idle_ttl)
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((cred, host)) = rest.rsplit_once('@')
    {
        return match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{cred}@{host}"),
        };
    }
    url.to_string()
}

/// A start-up configuration problem: one line, exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(setting: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid {setting}: {msg}"))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines with a caret; keep the first sentence.
        let msg = e.message().replace('\n', " ");
        ConfigError(format!("config file {}: {msg}", path.display()))
    })
}

/// A size in bytes: `1048576`, `512KiB`, `1MiB` (also `KB`/`MB`, 1,000s;
/// any case), from 1 KiB to 32 MiB: an over-limit body is read and dropped
/// before its 413 (up to 64 MiB), so the cap stays well below that.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1MiB, 512KiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1024,
        "mib" => 1024 * 1024,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        _ => return Err(format!("{s:?}: the unit is one of B, KiB, MiB, KB, MB")),
    };
    let bytes = n.saturating_mul(mult);
    if !(1024..=32 * 1024 * 1024).contains(&bytes) {
        return Err(format!("{s:?} is not between 1KiB and 32MiB"));
    }
    Ok(bytes as usize)
}

/// Parses `90d`, `12h`, `3s`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90d, 12h or 3s ({e})"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn parse_cap(setting: &str, s: &str) -> Result<i64, ConfigError> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad(setting, format!("{s:?} is not a non-negative whole number")))
}

fn parse_bool(setting: &str, s: &str) -> Result<bool, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(bad(setting, format!("{s:?} is not true or false"))),
    }
}

fn check_http_url(setting: &str, s: &str) -> Result<String, ConfigError> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| {
            bad(
                setting,
                format!("{s:?} must start with http:// or https://"),
            )
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') || s.contains(char::is_whitespace) {
        return Err(bad(
            setting,
            format!("{s:?} is not a URL like https://crm.example.com"),
        ));
    }
    Ok(s.to_string())
}

fn check_smtp_url(s: &str) -> Result<String, ConfigError> {
    let ok = ["smtp://", "smtp+starttls://", "smtps://"].iter().any(|p| {
        s.strip_prefix(p)
            .map(|rest| !rest.is_empty() && !rest.starts_with('/'))
            .unwrap_or(false)
    });
    if !ok {
        return Err(ConfigError(
            "invalid smtp_url: expected smtp://host:port, smtp+starttls://user:pass@host:587 or smtps://user:pass@host:465"
                .into(),
        ));
    }
    Ok(s.to_string())
}

/// The CA certificates of `smtp_ca_file`: checked at start-up, so a wrong
/// path or file fails there and not at the first mail.
fn read_smtp_ca(path: &Path, mail: &MailMode) -> Result<Vec<u8>, ConfigError> {
    let tls = matches!(mail, MailMode::Smtp(u) if u.starts_with("smtp+starttls://") || u.starts_with("smtps://"));
    if !tls {
        return Err(bad(
            "smtp_ca_file",
            "it applies to smtp+starttls:// and smtps:// only; set smtp_url to one of them",
        ));
    }
    let pem = std::fs::read(path).map_err(|e| {
        bad(
            "smtp_ca_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "smtp_ca_file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

fn check_database_url(s: &str) -> Result<String, ConfigError> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        use std::str::FromStr;
        sea_orm::sqlx::postgres::PgConnectOptions::from_str(s)
            .map_err(|e| ConfigError(format!("invalid database_url {}: {e}", redact_url(s))))?;
        let rest = s.split_once("://").map(|(_, r)| r).unwrap_or("");
        let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        let authority = host.split(['/', '?']).next().unwrap_or("");
        let port_ok = match authority.rsplit_once(':') {
            Some((_, p)) if !authority.ends_with(']') => p.parse::<u16>().is_ok(),
            _ => true,
        };
        if authority.is_empty() || !port_ok {
            return Err(ConfigError(format!(
                "invalid database_url {}: expected postgres://user:password@host:5432/database",
                redact_url(s)
            )));
        }
        Ok(s.to_string())
    } else if s.starts_with("sqlite:") {
        Ok(s.to_string())
    } else {
        Err(ConfigError(
            "invalid database_url: expected sqlite://PATH?mode=rwc or postgres://user@host/db"
                .into(),
        ))
    }
}

/// The default SQLite file: `<data dir>/crmkit.db`, created if missing.
fn default_database_url() -> Result<String, ConfigError> {
    let dir = match std::env::var_os("CRMKIT_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => directories::ProjectDirs::from("", "", "crmkit")
            .ok_or_else(|| {
                ConfigError("no home directory: set CRMKIT_DATABASE_URL or CRMKIT_DATA_DIR".into())
            })?
            .data_dir()
            .to_path_buf(),
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        ConfigError(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    })?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        dir.join("crmkit.db").display()
    ))
}

impl Settings {
    /// Resolves the layers and validates every value.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let pick = |flag: &Option<String>, file: &Option<String>| {
            flag.clone()
                .or_else(|| file.clone())
                .filter(|s| !s.trim().is_empty())
        };

        let bind_s = pick(&args.bind, &file.bind).unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind: SocketAddr = bind_s.trim().parse().map_err(|_| {
            bad(
                "bind",
                format!("{bind_s:?} is not an address like 127.0.0.1:8080"),
            )
        })?;

        let database_url = match pick(&args.database_url, &file.database_url) {
            Some(u) => check_database_url(u.trim())?,
            None => default_database_url()?,
        };
        let base_url = match pick(&args.base_url, &file.base_url) {
            Some(u) => check_http_url("base_url", &u)?,
            None => format!("http://{bind}"),
        };
        let mail = match pick(&args.smtp_url, &file.smtp_url) {
            Some(u) => MailMode::Smtp(check_smtp_url(u.trim())?),
            None => MailMode::Local,
        };
        let ca_file = args
            .smtp_ca_file
            .clone()
            .or_else(|| file.smtp_ca_file.clone());
        let smtp_ca = match ca_file.filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Some(read_smtp_ca(&path, &mail)?),
            None => None,
        };
        let mail_from = pick(&args.mail_from, &file.mail_from)
            .unwrap_or_else(|| "crmkit <no-reply@localhost>".into());
        mail_from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| bad("mail_from", format!("{mail_from:?}: {e}")))?;
        let token_idle_ttl = match pick(&args.token_idle_ttl, &file.token_idle_ttl) {
            Some(s) => parse_duration(&s).map_err(|e| bad("token_idle_ttl", e))?,
            None => Duration::from_secs(90 * 24 * 3600),
        };
        let db_max_connections = match &args.db_max_connections {
            Some(s) => Some(
                s.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad("db_max_connections", format!("{s:?} is not 1..1000")))?,
            ),
            None => match file.db_max_connections {
                Some(n) if !(1..=1000).contains(&n) => {
                    return Err(bad("db_max_connections", format!("{n} is not 1..1000")));
                }
                n => n,
            },
        };
        let db_startup_wait = match pick(&args.db_startup_wait, &file.db_startup_wait) {
            Some(s) => parse_duration(&s).map_err(|e| bad("db_startup_wait", e))?,
            None => Duration::from_secs(30),
        };
        let body_limit = match pick(&args.body_limit, &file.body_limit) {
            Some(s) => parse_size(&s).map_err(|e| bad("body_limit", e))?,
            None => 1024 * 1024,
        };
        let log = pick(&args.log, &file.log).unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| bad("log", e))?;
        let trust_proxy = match &args.trust_proxy {
            Some(s) => parse_bool("trust_proxy", s)?,
            None => file.trust_proxy.unwrap_or(false),
        };

        let mut default_plan =
            Plan::default().overlay(file.plans.get("default").unwrap_or(&FilePlan::default()));
        for (name, slot, v) in [
            (
                "CRMKIT_LIMIT_CONTACTS",
                &mut default_plan.contacts,
                &args.limit_contacts,
            ),
            (
                "CRMKIT_LIMIT_COMPANIES",
                &mut default_plan.companies,
                &args.limit_companies,
            ),
            (
                "CRMKIT_LIMIT_DEALS",
                &mut default_plan.deals,
                &args.limit_deals,
            ),
            (
                "CRMKIT_LIMIT_MEMBERS",
                &mut default_plan.members,
                &args.limit_members,
            ),
            (
                "CRMKIT_LIMIT_WORKSPACES",
                &mut default_plan.workspaces,
                &args.limit_workspaces,
            ),
        ] {
            if let Some(s) = v {
                *slot = parse_cap(name, s)?;
            }
        }
        let mut plans = BTreeMap::new();
        for (name, p) in &file.plans {
            if !valid_plan_name(name) {
                return Err(bad(
                    "plans",
                    format!("plan name {name:?} must be 1-40 of a-z 0-9 _ -"),
                ));
            }
            if name != "default" {
                plans.insert(name.clone(), Plan::default().overlay(p));
            }
        }
        plans.insert("default".to_string(), default_plan);

        Ok(Settings {
            bind,
            database_url,
            base_url,
            mail,
            smtp_ca,
            cimd_loopback: std::env::var("CRMKIT_TEST_CIMD_LOOPBACK").is_ok_and(|v| v == "1"),
            mail_from,
            token_idle_ttl,
            db_max_connections,
            db_startup_wait,
            log,
            trust_proxy,
            plans,
            body_limit,
            auth_per_email: 5,
            auth_per_ip: 100,
            rate_window: Duration::from_secs(600),
        })
    }

    /// The caps of a plan; a plan that is no longer configured falls back to
    /// `default` rather than locking a workspace out.
    pub fn plan(&self, name: &str) -> Plan {
        self.plans
            .get(name)
            .or_else(|| self.plans.get("default"))
            .copied()
            .unwrap_or_default()
    }
}

pub fn valid_plan_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("crmkit-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9999\"\ntoken_idle_ttl = \"12h\"\ndatabase_url = \"sqlite://x.db\"\n[plans.default]\ncontacts = 7\n[plans.pro]\ndeals = 99\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            bind: Some("127.0.0.1:7000".into()),
            limit_deals: Some("3".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.bind.port(), 7000);
        assert_eq!(s.token_idle_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(s.plan("default").contacts, 7);
        assert_eq!(s.plan("default").deals, 3);
        assert_eq!(s.plan("pro").deals, 99);
        assert_eq!(s.plan("pro").contacts, 1000);
        assert_eq!(s.base_url, "http://127.0.0.1:7000");
    }

    #[test]
    fn unknown_config_key_is_named() {
        let dir = std::env::temp_dir().join(format!("crmkit-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "bindd = \"x\"\n").unwrap();
        let err = Settings::resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.0.contains("bindd"), "{err}");
    }

    /// The config file's pool size is held to the same range as the flag's:
    /// 0 made a pool that never connects, reported as an unreachable
    /// database.
    #[test]
    fn a_config_file_pool_size_is_checked() {
        let dir = std::env::temp_dir().join(format!("crmkit-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (n, ok) in [(0, false), (1001, false), (1, true), (1000, true)] {
            let path = dir.join(format!("pool{n}.toml"));
            std::fs::write(
                &path,
                format!("database_url = \"sqlite://x.db\"\ndb_max_connections = {n}\n"),
            )
            .unwrap();
            let got = Settings::resolve(&ServeArgs {
                config: Some(path),
                ..Default::default()
            });
            match got {
                Ok(s) => {
                    assert!(ok, "{n} accepted");
                    assert_eq!(s.db_max_connections, Some(n));
                }
                Err(e) => {
                    assert!(!ok, "{n} refused: {e}");
                    assert!(e.0.starts_with("invalid db_max_connections"), "{e}");
                    assert!(!e.0.contains('\n'), "{e}");
                }
            }
        }
    }

    #[test]
    fn body_limits_are_sizes_in_range() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512 kib"), Ok(512 * 1024));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("32MiB"), Ok(32 * 1024 * 1024));
        for bad in ["", "MiB", "1.5MiB", "1GiB", "33MiB", "100", "-1", "1 MiBs"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        let s = Settings::resolve(&ServeArgs {
            database_url: Some("sqlite://x.db".into()),
            body_limit: Some("64KiB".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.body_limit, 64 * 1024);
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for args in [
            ServeArgs {
                bind: Some("nope".into()),
                ..Default::default()
            },
            ServeArgs {
                token_idle_ttl: Some("soon".into()),
                ..Default::default()
            },
            ServeArgs {
                base_url: Some("ftp://x".into()),
                ..Default::default()
            },
            ServeArgs {
                smtp_url: Some("mail.example.com".into()),
                ..Default::default()
            },
            ServeArgs {
                limit_contacts: Some("-1".into()),
                ..Default::default()
            },
            ServeArgs {
                body_limit: Some("lots".into()),
                ..Default::default()
            },
        ] {
            let args = ServeArgs {
                database_url: Some("sqlite://x.db".into()),
                ..args
            };
            let err = Settings::resolve(&args).unwrap_err();
            assert!(!err.0.contains('\n'), "{err}");
            assert!(err.0.starts_with("invalid "), "{err}");
        }
    }

    #[test]
    fn a_smtp_ca_file_is_checked_at_start_up() {
        let manifest = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        let pem = std::env::temp_dir().join(format!("crmkit-ca-{}.pem", std::process::id()));
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let resolve = |url: &str, file: &PathBuf| {
            Settings::resolve(&ServeArgs {
                database_url: Some("sqlite://x.db".into()),
                smtp_url: Some(url.into()),
                smtp_ca_file: Some(file.clone()),
                ..Default::default()
            })
        };
        // Each refusal is one line naming the setting, like every bad value.
        let err = |url: &str, file: &PathBuf| {
            let e = resolve(url, file).err().unwrap().0;
            assert!(
                e.starts_with("invalid smtp_ca_file: ") && !e.contains('\n'),
                "{e}"
            );
            e
        };
        assert!(err("smtp://mail:25", &pem).contains("smtp+starttls:// and smtps:// only"));
        assert!(err("smtps://mail", &PathBuf::from("/nonexistent/ca.pem")).contains("cannot read"));
        assert!(err("smtps://mail", &manifest).contains("holds no PEM certificate"));
        let ok = resolve("smtp+starttls://mail:587", &pem).unwrap();
        assert_eq!(
            ok.smtp_ca.as_deref(),
            Some(std::fs::read(&pem).unwrap().as_slice())
        );
        std::fs::remove_file(&pem).ok();
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("smtps://me:hunter2@mail:465"),
            "smtps://me:***@mail:465"
        );
        let s = format!("{:?}", MailMode::Smtp("smtps://me:hunter2@mail".into()));
        assert!(!s.contains("hunter2"));
    }
}
