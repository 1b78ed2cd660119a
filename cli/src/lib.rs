//! crmkit's typed client: every subcommand but `serve`, `migrate` and `admin`.
//!
//! It signs in by emailed code, keeps the token in the OS keyring, and shows
//! the server's answers as a table on a terminal, as the server's grepable
//! lines when piped, or as JSON with `--json`. Deletes and step-up actions ask
//! a person on a terminal and take `--yes` / `--code` in scripts.

pub mod client;
pub mod credentials;
pub mod exit;
pub mod output;

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use crmkit_server::wire::query::{COMPANY, CONTACT, DEAL, Schema, parse_list_query};
use reqwest::Method;
use serde_json::{Map, Value, json};

use client::Client;
pub use exit::CliError;
use output::{Format, emit, show};

/// Options every client command takes.
/// The server URL as sign-ins are kept under it: `http(s)://host[:port]`
/// with any path, without a trailing `/` (so `…:8080/` is the same server).
fn server_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    if !(t.starts_with("http://") || t.starts_with("https://")) {
        return Err(format!("{t:?} needs its scheme: http://{t} (or https://)"));
    }
    Ok(t.trim_end_matches('/').to_string())
}

#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Server URL
    #[arg(
        long,
        env = "CRMKIT_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_parser = server_url
    )]
    pub server: String,
    /// Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)
    #[arg(long, env = "CRMKIT_PROFILE", global = true, value_name = "NAME", value_parser = profile_name)]
    pub profile: Option<String>,
    /// Print JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// Force the output format
    #[arg(long, value_enum, global = true)]
    pub format: Option<Format>,
}

/// A profile name: letters, digits, `-` and `_`, at most 64.
fn profile_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err("a profile name is 1-64 letters, digits, - or _".into())
    }
}

impl Global {
    /// Where this sign-in's token is kept: the server URL, and the profile
    /// unless it is the default one.
    pub fn signin(&self) -> credentials::SignIn<'_> {
        credentials::SignIn {
            server: &self.server,
            profile: self.profile.as_deref().filter(|p| *p != "default"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sign in by emailed code and store the token
    Login(LoginArgs),
    /// Revoke this session's token on the server and forget it here
    Logout,
    /// Show who you are, your workspace, role, plan and usage
    Whoami,
    /// Token helpers
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Your sessions
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Workspaces, members, invites and roles
    #[command(subcommand)]
    Workspaces(WorkspacesCmd),
    /// Contacts (people)
    #[command(subcommand)]
    Contacts(RecordCmd),
    /// Companies
    #[command(subcommand)]
    Companies(RecordCmd),
    /// Deals
    #[command(subcommand)]
    Deals(RecordCmd),
    /// Recent activities
    Activities {
        /// Only this contact's
        #[arg(long)]
        contact: Option<String>,
        /// Only this deal's
        #[arg(long)]
        deal: Option<String>,
        #[command(flatten)]
        filter: ActivityFilter,
        #[command(flatten)]
        page: Page,
    },
    /// Contacts and deals whose follow-up is due
    Reminders {
        /// Also what is due within N days
        #[arg(long)]
        days: Option<u32>,
        #[command(flatten)]
        page: Page,
    },
    /// The workspace audit log, newest first
    Audit {
        /// Only this record's history: a handle or id (deal/d_…, c_…)
        #[arg(long)]
        target: Option<String>,
        /// Only these actions (deal.update) or kinds (deal); repeat or comma-separate
        #[arg(long)]
        action: Vec<String>,
        /// Only what this user did (u_… or user/u_…)
        #[arg(long)]
        user: Option<String>,
        /// Only entries at or after TIME (RFC 3339)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries before TIME (RFC 3339)
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Raw API call with the stored token, output as received
    Api {
        /// GET, POST, PATCH or DELETE
        method: String,
        /// Path with query, e.g. /contacts?stage=lead
        path: String,
        /// JSON body, @file or - for stdin
        #[arg(long)]
        data: Option<String>,
        /// Extra header, K:V (repeatable)
        #[arg(long)]
        header: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Your email
    #[arg(long)]
    pub email: Option<String>,
    /// The emailed code (asked for on a terminal otherwise)
    #[arg(long)]
    pub code: Option<String>,
    /// Only email a code now; sign in later with --code
    #[arg(long, conflicts_with_all = ["code", "with_token"])]
    pub request_only: bool,
    /// Label of this session in `crmkit tokens list`
    #[arg(long, default_value = "crmkit-cli")]
    pub token_name: String,
    /// Read a token from stdin instead
    #[arg(long)]
    pub with_token: bool,
    /// Work in this workspace (name, id or handle) rather than the one
    /// sign-in picks (your personal one, as a rule)
    #[arg(long, value_name = "WORKSPACE", conflicts_with_all = ["request_only", "with_token"])]
    pub workspace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuthCmd {
    /// Print the stored token (the only command that shows it)
    Token,
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Your active tokens
    List,
    /// Revoke one
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum WorkspacesCmd {
    /// Workspaces you belong to
    List,
    /// Create one (you become admin)
    Create { name: String },
    /// Switch: mint a token for that workspace and make it current
    ///
    /// WORKSPACE is its id (w_…), handle or name, in every workspaces command.
    Use {
        #[arg(value_name = "WORKSPACE")]
        id: String,
    },
    /// One workspace: your role, its plan, and its usage against the plan's caps
    Show {
        #[arg(value_name = "WORKSPACE")]
        id: String,
    },
    /// Members and pending invites
    Members {
        #[arg(value_name = "WORKSPACE")]
        id: String,
    },
    /// Invite someone by email (inviting as admin needs the emailed code)
    Invite {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        email: String,
        /// admin or member [default: member; a resent invite keeps its role]
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        code: Option<String>,
    },
    /// Change a member's role (promoting to admin needs the emailed code)
    Role {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        /// The member: user/u_…, u_… or their email
        #[arg(value_name = "MEMBER")]
        user: String,
        role: String,
        #[arg(long)]
        code: Option<String>,
    },
    /// Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite
    Remove {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        /// user/u_…, invite/i_… or an email (a member's first, else an invite's)
        #[arg(value_name = "MEMBER")]
        user: String,
        /// Remove a member without asking (needed when not on a terminal)
        #[arg(long)]
        yes: bool,
    },
    /// Decline an invite to a workspace (`workspaces list` shows it as status=invited)
    Decline {
        #[arg(value_name = "WORKSPACE")]
        id: String,
    },
    /// Rename a workspace (admins)
    Rename {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        name: String,
    },
    /// Leave a workspace you are a member of (an admin re-invites you to come back)
    Leave {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        #[arg(long)]
        yes: bool,
    },
    /// Delete a workspace and all its data (needs the emailed code)
    Delete {
        #[arg(value_name = "WORKSPACE")]
        id: String,
        #[arg(long)]
        code: Option<String>,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug, Default)]
pub struct Page {
    /// At most N per page (1..200)
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a `# next:` cursor
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow cursors to the end
    #[arg(long)]
    pub all: bool,
}

/// Which activities, and in what order: by kind, time (`occurred_at`) and author.
#[derive(Args, Debug, Default)]
pub struct ActivityFilter {
    /// Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only activities before TIME (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only what this user logged (u_… or user/u_…)
    #[arg(long)]
    pub author: Option<String>,
    /// Oldest first (newest first by default)
    #[arg(long)]
    pub oldest_first: bool,
}

impl ActivityFilter {
    /// The query's pairs.
    fn pairs(self) -> Result<Vec<(String, String)>, CliError> {
        let mut out = Vec::new();
        if !self.kind.is_empty() {
            out.push(("kind".to_string(), self.kind.join(",").to_ascii_lowercase()));
        }
        out.extend(time_range("occurred_at", self.since, self.until)?);
        if let Some(a) = self.author {
            out.push(("author".to_string(), a));
        }
        if self.oldest_first {
            out.push(("sort".to_string(), "occurred_at".to_string()));
        }
        Ok(out)
    }
}

/// `--since`/`--until` as `KEY=gte:…`/`KEY=lt:…`; the times are checked
/// here, so that a bad one is refused naming its flag.
fn time_range(
    key: &str,
    since: Option<String>,
    until: Option<String>,
) -> Result<Vec<(String, String)>, CliError> {
    let mut out = Vec::new();
    for (flag, op, time) in [("--since", "gte", since), ("--until", "lt", until)] {
        let Some(t) = time else { continue };
        if crmkit_server::wire::time_fmt::parse(&t).is_err() {
            return Err(CliError::usage(format!(
                "{flag} {t:?} is not a time: give RFC 3339, e.g. {flag} 2026-06-01T00:00:00Z or 2026-06-01T09:00:00+02:00"
            )));
        }
        out.push((key.to_string(), format!("{op}:{t}")));
    }
    Ok(out)
}

#[derive(Args, Debug, Default)]
pub struct ListArgs {
    #[arg(long)]
    pub stage: Option<String>,
    /// Has this tag (repeatable: all of them)
    #[arg(long)]
    pub tag: Vec<String>,
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// Substring search over the key fields
    #[arg(long)]
    pub search: Option<String>,
    /// field or -field
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Any filter of the query language, e.g. 'amount_cents=gte:100000' (repeatable)
    #[arg(long = "where", value_name = "FIELD=[OP:]VALUE")]
    pub filters: Vec<String>,
    #[command(flatten)]
    pub page: Page,
}

#[derive(Args, Debug, Default)]
pub struct WriteArgs {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub phone: Option<String>,
    /// Job title (contacts) or deal title
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub industry: Option<String>,
    /// Company id or handle
    #[arg(long)]
    pub company: Option<String>,
    /// Contact id or handle (deals)
    #[arg(long)]
    pub contact: Option<String>,
    #[arg(long)]
    pub stage: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub amount_cents: Option<i64>,
    #[arg(long)]
    pub currency: Option<String>,
    /// Tag (repeatable; replaces the tags)
    #[arg(long)]
    pub tag: Vec<String>,
    /// key=value (repeatable): true, null, [..], {..} and numbers as JSON
    /// (a number only if kept exactly: 1.10 stays text), else text
    #[arg(long)]
    pub custom: Vec<String>,
    /// Follow-up time, RFC3339
    #[arg(long)]
    pub follow_up: Option<String>,
    /// Follow-up note
    #[arg(long)]
    pub note: Option<String>,
    /// The whole body as JSON, @file.json or - for stdin (flags override it)
    #[arg(long)]
    pub data: Option<String>,
    /// Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags
    #[arg(long, value_name = "FIELD")]
    pub clear: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum RecordCmd {
    /// List and filter
    List(ListArgs),
    /// Counts per group (deals: and amounts per currency), over the filtered records
    Summary {
        /// Group by these fields, comma-separated (deals: status,stage by default)
        #[arg(long)]
        by: Option<String>,
        /// Substring search over the key fields
        #[arg(long)]
        search: Option<String>,
        /// Any filter of the query language (repeatable)
        #[arg(long = "where", value_name = "FIELD=[OP:]VALUE")]
        filters: Vec<String>,
    },
    /// One record
    Get {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
    },
    /// Create (contacts and companies merge into an existing email/domain)
    Create(WriteArgs),
    /// Create many from a JSON array or JSON lines (FILE, or - for stdin);
    /// each is a create, so contacts and companies upsert by email/domain
    Import {
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// Change some fields
    Update {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        #[command(flatten)]
        fields: WriteArgs,
    },
    /// Delete (asks first; --yes in scripts)
    Delete {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        #[arg(long)]
        yes: bool,
    },
    /// Activities: a contact's log, or those naming a deal (companies have none)
    Activities {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        #[command(flatten)]
        filter: ActivityFilter,
        #[command(flatten)]
        page: Page,
    },
    /// Log an activity (on contacts only; --deal adds a deal)
    Log {
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        id: String,
        /// call, email, meeting, note or task
        #[arg(long)]
        kind: String,
        #[arg(long)]
        body: Option<String>,
        /// Deal id or handle
        #[arg(long)]
        deal: Option<String>,
        /// When it happened, RFC3339 (default now)
        #[arg(long)]
        at: Option<String>,
    },
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An id or handle as one path segment (a handle's `/` is percent-encoded).
/// An id or handle as a path segment (spaces around it, as pasted, dropped).
fn id_path(id: &str) -> String {
    enc(id.trim())
}

fn read_data(spec: &str) -> Result<Value, CliError> {
    let text = if spec == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::usage(format!("--data -: {e}")))?;
        s
    } else if let Some(path) = spec.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("--data @{path}: {e}")))?
    } else {
        spec.to_string()
    };
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::usage("--data must be a JSON object"));
    }
    Ok(v)
}

/// A record of an import file and its place there (from 1).
type Numbered = (usize, Map<String, Value>);

/// The records of an import file: a JSON array of objects, or one object
/// per line (JSON lines; blank lines skipped). Each with its place in the
/// file (array index or line number, from 1) for messages.
fn import_records(text: &str) -> Result<Vec<Numbered>, CliError> {
    let object = |v: Value, at: usize| match v {
        Value::Object(m) => Ok((at, m)),
        _ => Err(CliError::usage(format!(
            "record {at} is not a JSON object; the file holds objects such as {{\"name\": \"Jane\"}}"
        ))),
    };
    if text.trim_start().starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| CliError::usage(format!("the file is not a JSON array: {e}")))?;
        return all
            .into_iter()
            .enumerate()
            .map(|(i, v)| object(v, i + 1))
            .collect();
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| CliError::usage(format!("line {} is not JSON: {e}", i + 1)))?;
            object(v, i + 1)
        })
        .collect()
}

/// `crmkit KIND import FILE`: one create per record, in order. A record
/// the server refuses is reported (with its place in the file) and the
/// rest go on; the exit code is that of the first refusal, so a script
/// knows not all went in. Stops at once when signed out or the server is
/// gone.
async fn import(
    c: &Client,
    kind: &str,
    file: &str,
    json_fmt: bool,
    plain: Format,
) -> Result<(), CliError> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::usage(format!("stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("{file}: {e}")))?
    };
    let records = import_records(&text)?;
    if records.is_empty() {
        return Err(CliError::usage(format!(
            "{} holds no records: give a JSON array of objects or one object per line",
            if file == "-" { "stdin" } else { file }
        )));
    }
    let total = records.len();
    let (mut created, mut updated, mut failed) = (0usize, 0usize, 0usize);
    let mut first_failure: Option<CliError> = None;
    let mut stopped: Option<usize> = None;
    let mut out = String::new();
    for (at, record) in records {
        let body = Value::Object(record);
        match c
            .send(
                Method::POST,
                &format!("/{kind}"),
                Some(&body),
                json_fmt,
                &[],
                false,
            )
            .await
        {
            Ok(a) => {
                if a.status == 201 {
                    created += 1;
                } else {
                    updated += 1;
                }
                if json_fmt {
                    out.push_str(a.text.trim_end());
                    out.push('\n');
                } else {
                    // The record's line; the per-record `# created` is summed below.
                    out.extend(
                        a.text
                            .lines()
                            .filter(|l| !l.starts_with('#'))
                            .map(|l| format!("{l}\n")),
                    );
                }
            }
            Err(e) if matches!(e.code, 1 | 4) => return Err(e),
            Err(e) => {
                failed += 1;
                if json_fmt {
                    out.push_str(&format!(
                        "{}\n",
                        json!({"record": at, "error": e.to_json()})
                    ));
                } else {
                    let why = e.message.strip_prefix("error: ").unwrap_or(&e.message);
                    eprintln!("# record {at}: {}", why.replace('\n', "\n#   "));
                }
                // A full plan or missing rights refuse every record alike.
                let hopeless = e.code == 5;
                first_failure.get_or_insert(e);
                if hopeless {
                    stopped = Some(at);
                    break;
                }
            }
        }
    }
    let unsent = total - created - updated - failed;
    if json_fmt {
        out.push_str(&format!(
            "{}\n",
            json!({"result": "imported", "created": created, "updated": updated, "refused": failed, "not_sent": unsent})
        ));
    } else {
        out.push_str(&format!(
            "# imported {}: {created} created, {updated} updated, {failed} refused{}\n",
            created + updated,
            if unsent > 0 {
                format!(", {unsent} not sent")
            } else {
                String::new()
            }
        ));
    }
    // JSON: one object per line (JSON lines), as sent; else lines or a table.
    if json_fmt {
        emit(&out);
    } else {
        show(plain, &out);
    }
    match first_failure {
        Some(e) => {
            let mut message = format!(
                "{failed} record{} refused (see the # record lines above); the others went in",
                if failed == 1 { " was" } else { "s were" }
            );
            if let Some(at) = stopped {
                message = format!(
                    "record {at} was refused for a reason every record shares ({}), so the {unsent} after it were not sent; {created} created, {updated} updated before it",
                    e.body
                        .as_ref()
                        .and_then(|b| b["error"].as_str())
                        .unwrap_or("forbidden")
                );
            }
            let mut err = CliError::new(e.code, message.clone());
            err.body = Some(json!({
                "error": "import_incomplete", "message": message, "created": created,
                "updated": updated, "refused": failed, "not_sent": unsent,
                "first_refusal": e.to_json(),
            }));
            Err(err)
        }
        None => Ok(()),
    }
}

fn body_of(w: &WriteArgs, kind: &str, verb: &str) -> Result<Value, CliError> {
    let mut m: Map<String, Value> = match &w.data {
        Some(d) => read_data(d)?.as_object().cloned().unwrap_or_default(),
        None => Map::new(),
    };
    // The flags are shared by the three kinds: one that names a field this
    // kind lacks is refused here, naming the flags that do apply (its help
    // hides them: [`per_kind`]). Each flag with the body field it sets, and
    // whether it was given.
    let flags: Vec<(&str, &str, bool)> = WRITE_FLAGS
        .iter()
        .map(|(flag, field)| (*flag, *field, w.given(flag)))
        .collect();
    let fields = fields_of(kind);
    if let Some((flag, _, _)) = flags
        .iter()
        .find(|(_, f, given)| *given && !fields.contains(f))
    {
        let apply: Vec<&str> = flags
            .iter()
            .filter(|(_, f, _)| fields.contains(f))
            .map(|(fl, _, _)| *fl)
            .collect();
        return Err(CliError::usage(format!(
            "{flag} is not a field of {kind}; the flags for {kind}: {}",
            apply.join(" ")
        )));
    }
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    };
    set("name", &w.name);
    set("email", &w.email);
    set("phone", &w.phone);
    set("title", &w.title);
    set("domain", &w.domain);
    set("industry", &w.industry);
    set("company_id", &w.company);
    set("contact_id", &w.contact);
    set("stage", &w.stage);
    // Typed by people: closed sets go in the case the API spells them.
    set("status", &w.status.as_deref().map(str::to_ascii_lowercase));
    set(
        "currency",
        &w.currency.as_deref().map(str::to_ascii_uppercase),
    );
    set("follow_up_at", &w.follow_up);
    set("follow_up_note", &w.note);
    if let Some(a) = w.amount_cents {
        m.insert("amount_cents".into(), json!(a));
    }
    if !w.tag.is_empty() {
        m.insert("tags".into(), json!(w.tag));
    }
    for f in &w.clear {
        if let Some((flag, _, _)) = flags.iter().find(|(_, field, given)| *given && field == f) {
            return Err(CliError::usage(format!(
                "{flag} sets {f} and --clear {f} empties it: give one of them"
            )));
        }
        // Tags are cleared by an empty list; every other field by null.
        let empty = if f == "tags" { json!([]) } else { Value::Null };
        m.insert(f.clone(), empty);
    }
    if !w.custom.is_empty() {
        let mut c = m
            .get("custom")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for kv in &w.custom {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| CliError::usage(format!("--custom {kv:?}: expected key=value")))?;
            c.insert(k.to_string(), custom_value(v));
        }
        m.insert("custom".into(), Value::Object(c));
    }
    if m.is_empty() {
        return Err(CliError::usage(format!(
            "nothing to send: give fields such as {}, or --data (see `crmkit {kind} {verb} --help`)",
            if kind == "deals" { "--title" } else { "--name" }
        )));
    }
    Ok(Value::Object(m))
}

/// A `--custom key=VALUE` value: JSON where it reads as JSON (true, null,
/// [1,2], {"a":1}, 42, 1.5), but a number only when JSON keeps it exactly
/// as typed (spaces included): `1.10`, `007` and `12345678901234567890123` (an account number
/// past a double's precision) stay text instead of becoming 1.1, an error
/// and 1.2345678901234568e22.
fn custom_value(v: &str) -> Value {
    match serde_json::from_str::<Value>(v) {
        Ok(Value::Number(n)) if n.to_string() == v => Value::Number(n),
        Ok(Value::Number(_)) | Err(_) => Value::String(v.to_string()),
        Ok(other) => other,
    }
}

/// Every create/update flag that sets a field, with that field.
const WRITE_FLAGS: [(&str, &str); 16] = [
    ("--name", "name"),
    ("--email", "email"),
    ("--phone", "phone"),
    ("--title", "title"),
    ("--domain", "domain"),
    ("--industry", "industry"),
    ("--company", "company_id"),
    ("--contact", "contact_id"),
    ("--stage", "stage"),
    ("--status", "status"),
    ("--amount-cents", "amount_cents"),
    ("--currency", "currency"),
    ("--tag", "tags"),
    ("--custom", "custom"),
    ("--follow-up", "follow_up_at"),
    ("--note", "follow_up_note"),
];

impl WriteArgs {
    /// Whether the flag of [`WRITE_FLAGS`] was given.
    fn given(&self, flag: &str) -> bool {
        match flag {
            "--name" => self.name.is_some(),
            "--email" => self.email.is_some(),
            "--phone" => self.phone.is_some(),
            "--title" => self.title.is_some(),
            "--domain" => self.domain.is_some(),
            "--industry" => self.industry.is_some(),
            "--company" => self.company.is_some(),
            "--contact" => self.contact.is_some(),
            "--stage" => self.stage.is_some(),
            "--status" => self.status.is_some(),
            "--amount-cents" => self.amount_cents.is_some(),
            "--currency" => self.currency.is_some(),
            "--tag" => !self.tag.is_empty(),
            "--custom" => !self.custom.is_empty(),
            "--follow-up" => self.follow_up.is_some(),
            "--note" => self.note.is_some(),
            _ => false,
        }
    }
}

/// A kind's fields, `custom` included (the query schema spells custom
/// fields custom.KEY).
fn fields_of(kind: &str) -> Vec<&'static str> {
    let mut fields: Vec<&str> = schema_of(kind).fields.iter().map(|f| f.name).collect();
    fields.push("custom");
    fields
}

/// The record commands shaped for each kind, for parsing, help, completions
/// and the man page: the three kinds share one set of flags, and each
/// kind's help hides the flags naming fields it lacks (they are still
/// refused with the list of its own, see `body_of`), the activity commands
/// it has none of, and gives a `--where` example that applies to it.
pub fn per_kind(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd;
    for (kind, example) in [
        ("contacts", "stage=in:lead,customer"),
        ("companies", "domain=acme.com"),
        ("deals", "amount_cents=gte:100000"),
    ] {
        let fields = fields_of(kind);
        let lacks = move |flag: &str| {
            WRITE_FLAGS
                .iter()
                .any(|(f, field)| *f == flag && !fields.contains(field))
        };
        let hide_writes = |sub: clap::Command| {
            WRITE_FLAGS
                .iter()
                .filter(|(flag, _)| lacks(flag))
                .fold(sub, |sub, (flag, _)| {
                    let id = flag.trim_start_matches("--").replace('-', "_");
                    sub.mut_arg(id, |a| a.hide(true))
                })
        };
        let list = |sub: clap::Command| {
            let sub = ["stage", "status", "email"]
                .into_iter()
                .filter(|f| lacks(&format!("--{f}")))
                .fold(sub, |sub, f| sub.mut_arg(f, |a| a.hide(true)));
            sub.mut_arg("filters", |a| {
                a.help(format!(
                    "Any filter of the query language, e.g. '{example}' (repeatable; the manual: crmkit api GET /help)"
                ))
            })
        };
        // What a create does when the record's unique key is taken.
        let create_about = match kind {
            "contacts" => "Create (an email already there updates that contact instead)",
            "companies" => "Create (a domain already there updates that company instead)",
            _ => "Create",
        };
        cmd = cmd.mut_subcommand(kind, |k| {
            let k = k
                .mut_subcommand("create", |c| hide_writes(c.about(create_about)))
                .mut_subcommand("update", hide_writes)
                .mut_subcommand("list", list);
            match kind {
                "companies" => k
                    .mut_subcommand("activities", |a| a.hide(true))
                    .mut_subcommand("log", |a| a.hide(true)),
                "deals" => k.mut_subcommand("log", |a| a.hide(true)),
                _ => k,
            }
        });
    }
    cmd
}

fn schema_of(kind: &str) -> &'static Schema {
    match kind {
        "contacts" => &CONTACT,
        "companies" => &COMPANY,
        _ => &DEAL,
    }
}

fn list_query(kind: &str, a: &ListArgs) -> Result<Vec<(String, String)>, CliError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(v) = &a.stage {
        pairs.push(("stage".into(), v.clone()));
    }
    for t in &a.tag {
        pairs.push(("tags".into(), t.clone()));
    }
    if let Some(v) = &a.status {
        pairs.push(("status".into(), v.to_ascii_lowercase()));
    }
    if let Some(v) = &a.email {
        pairs.push(("email".into(), v.clone()));
    }
    for w in &a.filters {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--where {w:?}: expected FIELD=[OP:]VALUE")))?;
        pairs.push((k.to_string(), v.to_string()));
    }
    if let Some(v) = &a.search {
        pairs.push(("search".into(), v.clone()));
    }
    if let Some(v) = &a.sort {
        pairs.push(("sort".into(), v.clone()));
    }
    if let Some(v) = a.page.limit {
        pairs.push(("limit".into(), v.to_string()));
    }
    // The same grammar as the server: refuse a bad filter before sending it.
    parse_list_query(schema_of(kind), &pairs).map_err(|e| {
        let allowed = if e.allowed.is_empty() {
            String::new()
        } else {
            format!("\nallowed: {}", e.allowed.join(", "))
        };
        let mut err = CliError::usage(format!(
            "{}: {}\nhint: {}{allowed}",
            e.code, e.message, e.hint
        ));
        // Under --json, the same object the server would have sent.
        let mut body = json!({"error": e.code, "message": e.message, "hint": e.hint});
        if !e.allowed.is_empty() {
            body["allowed"] = json!(e.allowed);
        }
        err.body = Some(body);
        err
    })?;
    Ok(pairs)
}

/// Whether a person agreed to something that cannot be undone: asked on a
/// terminal (`declined` is said when they do not); a script gets exit 6
/// with `for_scripts`, which names the flag that agrees.
async fn agreed(for_scripts: &str, question: &str, declined: &str) -> Result<bool, CliError> {
    if !tty() {
        return Err(CliError::human(for_scripts));
    }
    let yes = prompt(question).await?.eq_ignore_ascii_case("y");
    if !yes {
        eprintln!("{declined}");
    }
    Ok(yes)
}

/// Whether a typed sign-in code has the shape of one (6 digits).
fn is_code(code: &str) -> bool {
    let c = code.trim();
    c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())
}

fn with_query(path: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return path.to_string();
    }
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    format!("{path}?{}", q.join("&"))
}

fn tty() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal. The line is read on a blocking thread, so that the
/// runtime stays free to see Ctrl-C (exit 130) while a person is asked.
async fn prompt(question: &str) -> Result<String, CliError> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map(|_| line.trim().to_string())
    })
    .await
    .map_err(|e| CliError::new(1, e.to_string()))?
    .map_err(|e| CliError::new(1, e.to_string()))
}

/// The context every command runs in.
pub struct Ctx {
    pub global: Global,
    pub format: Format,
}

impl Ctx {
    fn json(&self) -> bool {
        self.format == Format::Json
    }

    fn client(&self) -> Result<Client, CliError> {
        let token = credentials::token(&self.global.signin())?;
        let mut c = Client::new(&self.global.server, Some(token))?;
        c.login = self.global.signin().login_hint();
        Ok(c)
    }

    /// GET and show, following cursors with `--all`.
    async fn list(&self, c: &Client, path: &str, page: &Page) -> Result<(), CliError> {
        let mut pairs = Vec::new();
        if let Some(cur) = &page.cursor {
            pairs.push(("cursor".to_string(), cur.clone()));
        }
        let first = if pairs.is_empty() {
            path.to_string()
        } else {
            add_query(path, &pairs)
        };
        if !page.all {
            let a = c.get(&first, self.json()).await?;
            show(self.format, &a.text);
            return Ok(());
        }
        // Piped text is written page by page: a reader sees the first
        // lines at once, and one that stops early (`| head`) stops the walk.
        // A table needs every row for its widths, and JSON is one document.
        let stream = self.format == Format::Text && !self.json();
        let mut streamed = 0;
        let mut url = first;
        let mut text = String::new();
        let mut data = Vec::new();
        loop {
            let a = c.get(&url, self.json()).await?;
            let next = if self.json() {
                let v = a.json()?;
                data.extend(v["data"].as_array().cloned().unwrap_or_default());
                v["next_cursor"].as_str().map(str::to_string)
            } else {
                let next = a
                    .text
                    .lines()
                    .find_map(|l| l.strip_prefix("# next: "))
                    .map(str::to_string);
                for l in a.text.lines().filter(|l| !l.starts_with("# ")) {
                    text.push_str(l);
                    text.push('\n');
                }
                if stream {
                    streamed += text.lines().count();
                    emit(&text);
                    text.clear();
                }
                next
            };
            match next {
                Some(n) => url = add_query(path, &[("cursor".into(), n)]),
                None => break,
            }
        }
        if self.json() {
            show(
                self.format,
                &json!({"data": data, "next_cursor": null}).to_string(),
            );
        } else {
            let n = streamed + text.lines().count();
            text.push_str(&format!("# {n} in all\n"));
            show(self.format, &text);
        }
        Ok(())
    }
}

fn add_query(path: &str, pairs: &[(String, String)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{}", q.join("&"))
}

/// Runs one client command.
pub async fn run(global: Global, cmd: Command) -> Result<(), CliError> {
    let format = Format::decide(global.json, global.format);
    let ctx = Ctx { global, format };
    match cmd {
        Command::Login(a) => login(&ctx, a).await,
        Command::Logout => logout(&ctx).await,
        Command::Whoami => {
            let c = ctx.client()?;
            let a = c.get("/whoami", ctx.json()).await?;
            show(
                if format == Format::Table {
                    Format::Text
                } else {
                    format
                },
                &a.text,
            );
            Ok(())
        }
        Command::Auth(AuthCmd::Token) => {
            emit(&format!("{}\n", credentials::token(&ctx.global.signin())?));
            Ok(())
        }
        Command::Tokens(TokensCmd::List) => {
            let c = ctx.client()?;
            show(format, &c.get("/tokens", ctx.json()).await?.text);
            Ok(())
        }
        Command::Tokens(TokensCmd::Revoke { id }) => {
            let c = ctx.client()?;
            // Which token this session runs on, to forget it here if it goes.
            let current = c
                .get("/whoami?format=json", true)
                .await
                .and_then(|a| a.json())
                .ok()
                .and_then(|v| v["data"]["token"].as_str().map(str::to_string));
            let a = c
                .send(
                    Method::DELETE,
                    &format!("/tokens/{}", id_path(&id)),
                    None,
                    ctx.json(),
                    &[],
                    false,
                )
                .await?;
            show(
                if format == Format::Table {
                    Format::Text
                } else {
                    format
                },
                &a.text,
            );
            let bare = |t: &str| t.strip_prefix("token/").unwrap_or(t).to_string();
            if current.as_deref().map(bare) == Some(bare(&id))
                && std::env::var("CRMKIT_TOKEN").is_err()
            {
                credentials::store()?
                    .delete(&ctx.global.signin().key())
                    .map_err(|e| CliError::new(1, e))?;
                eprintln!("# signed out of {}", ctx.global.signin());
            }
            Ok(())
        }
        Command::Workspaces(w) => workspaces(&ctx, w).await,
        Command::Contacts(r) => records(&ctx, "contacts", r).await,
        Command::Companies(r) => records(&ctx, "companies", r).await,
        Command::Deals(r) => records(&ctx, "deals", r).await,
        Command::Activities {
            contact,
            deal,
            filter,
            page,
        } => {
            let c = ctx.client()?;
            let mut pairs = Vec::new();
            if let Some(v) = contact {
                pairs.push(("contact".to_string(), v));
            }
            if let Some(v) = deal {
                pairs.push(("deal".to_string(), v));
            }
            pairs.extend(filter.pairs()?);
            if let Some(l) = page.limit {
                pairs.push(("limit".to_string(), l.to_string()));
            }
            ctx.list(&c, &with_query("/activities", &pairs), &page)
                .await
        }
        Command::Reminders { days, page } => {
            let c = ctx.client()?;
            let mut pairs = Vec::new();
            if let Some(d) = days {
                pairs.push(("days".to_string(), d.to_string()));
            }
            if let Some(l) = page.limit {
                pairs.push(("limit".to_string(), l.to_string()));
            }
            ctx.list(&c, &with_query("/reminders", &pairs), &page).await
        }
        Command::Audit {
            target,
            action,
            user,
            since,
            until,
            page,
        } => {
            let c = ctx.client()?;
            let mut pairs = Vec::new();
            if let Some(t) = target {
                pairs.push(("target".to_string(), t));
            }
            if !action.is_empty() {
                pairs.push(("action".to_string(), action.join(",")));
            }
            if let Some(u) = user {
                pairs.push(("user".to_string(), u));
            }
            pairs.extend(time_range("at", since, until)?);
            pairs.extend(page.limit.map(|l| ("limit".to_string(), l.to_string())));
            ctx.list(&c, &with_query("/audit", &pairs), &page).await
        }
        Command::Api {
            method,
            path,
            data,
            header,
        } => api(&ctx, method, path, data, header).await,
    }
}

async fn login(ctx: &Ctx, a: LoginArgs) -> Result<(), CliError> {
    let server = &ctx.global.server;
    let signin = ctx.global.signin();
    let anon = Client::new(server, None)?;
    if a.with_token {
        if std::io::stdin().is_terminal() {
            // Nothing piped in: say what is being waited for.
            eprint!("Paste the token and press Enter: ");
            let _ = std::io::stderr().flush();
        }
        let mut token = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut token)
            .map_err(|e| CliError::new(1, e.to_string()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(CliError::usage(
                "--with-token reads a token from stdin, and stdin was empty: pipe one in, e.g. `echo $TOKEN | crmkit login --with-token`",
            ));
        }
        let c = Client::new(server, Some(token.clone()))?;
        let who = c.get("/whoami?format=json", true).await?.json()?;
        let store = credentials::store()?;
        let old = store.get(&signin.key()).ok().flatten();
        store.set(&signin.key(), &token).map_err(|e| {
            CliError::new(
                1,
                format!("cannot store the token in {}: {e}", store.name()),
            )
        })?;
        let email = who["data"]["email"].as_str().unwrap_or("?");
        eprintln!(
            "# signed in to {signin} as {email} (token kept in {})",
            store.name()
        );
        if ctx.json() {
            emit(&format!(
                "{}\n",
                json!({"result": "signed_in", "server": server, "profile": signin.profile,
                       "email": email, "workspace": who["data"]["workspace"], "kept_in": store.name()})
            ));
        }
        retire(server, old.filter(|o| *o != token), Some(email)).await;
        return Ok(());
    }
    let email = match a.email {
        Some(e) => e.trim().to_string(),
        None if tty() => {
            let mut email = prompt("Email: ").await?;
            while email.trim().is_empty() {
                email = prompt("Email (the address to mail a sign-in code to): ").await?;
            }
            email.trim().to_string()
        }
        None => return Err(CliError::usage("give --email (no terminal to ask on)")),
    };
    let asked = a.code.is_none();
    let mut code = match a.code {
        Some(c) => c,
        None => {
            anon.send(
                Method::POST,
                "/auth/request",
                Some(&json!({"email": email})),
                false,
                &[],
                false,
            )
            .await?;
            if a.request_only {
                let finish = format!("{} --email {email} --code CODE", signin.login_hint());
                eprintln!("# a sign-in code was emailed to {email}; finish with: {finish}");
                if ctx.json() {
                    emit(&format!(
                        "{}\n",
                        json!({"result": "code_sent", "email": email, "finish_with": finish})
                    ));
                }
                return Ok(());
            }
            if !tty() {
                return Err(CliError::human(format!(
                    "a sign-in code was emailed to {email}; finish with: {} --email {email} --code CODE",
                    signin.login_hint()
                )));
            }
            prompt(&format!("Code emailed to {email}: ")).await?
        }
    };
    // What is not 6 digits is asked for again before it costs one of the
    // code's tries.
    if asked {
        while !is_code(&code) {
            eprintln!("# the code is the 6 digits in the email");
            code = prompt(&format!("Code emailed to {email}: ")).await?;
        }
    }
    // A person who mistyped the code is asked again (the code takes 5 tries).
    let mut tries = 1;
    let v = loop {
        let body = json!({"email": email, "code": code, "token_name": a.token_name});
        match anon
            .send(Method::POST, "/auth/verify", Some(&body), true, &[], false)
            .await
        {
            Ok(answer) => break answer.json()?,
            Err(e) if asked && tries < 3 && e.message.contains("invalid_code") => {
                tries += 1;
                eprintln!("# that code did not work");
                code = prompt(&format!("Code emailed to {email} (try {tries} of 3): ")).await?;
                while !is_code(&code) {
                    eprintln!("# the code is the 6 digits in the email");
                    code = prompt(&format!("Code emailed to {email} (try {tries} of 3): ")).await?;
                }
            }
            Err(e) => return Err(e),
        }
    };
    let mut token = v["data"]["token"]
        .as_str()
        .ok_or_else(|| CliError::new(1, "the server sent no token"))?
        .to_string();
    let mut workspace = v["data"]["workspace"].clone();
    // A workspace that could not be found: the sign-in stands (its code is
    // spent), and the error says where it is instead.
    let mut not_there: Option<CliError> = None;
    if let Some(want) = &a.workspace {
        // A token for the workspace asked for replaces the one sign-in gave.
        let switched = async {
            let c = Client::new(server, Some(token.clone()))?;
            let id = workspace_id(&c, want).await?;
            mint_in(&c, &id, &a.token_name).await
        }
        .await;
        match switched {
            Ok(minted) => {
                let there = minted["data"]["token"]
                    .as_str()
                    .ok_or_else(|| CliError::new(1, "the server sent no token"))?
                    .to_string();
                retire(server, Some(std::mem::replace(&mut token, there)), None).await;
                workspace = minted["data"]["workspace"].clone();
            }
            Err(e) if matches!(e.code, 2 | 3 | 5) => not_there = Some(e),
            Err(e) => {
                retire(server, Some(token), None).await;
                return Err(e);
            }
        }
    }
    let token = token.as_str();
    let store = credentials::store()?;
    let old = store.get(&signin.key()).ok().flatten();
    store.set(&signin.key(), token).map_err(|e| {
        CliError::new(
            1,
            format!("cannot store the token in {}: {e}", store.name()),
        )
    })?;
    eprintln!(
        "# signed in to {signin} as {email} in {} (token kept in {})",
        workspace.as_str().unwrap_or("?"),
        store.name()
    );
    if let Some(joined) = v["joined"].as_array().filter(|j| !j.is_empty()) {
        let names: Vec<String> = joined
            .iter()
            .map(|j| {
                format!(
                    "{} as {}",
                    j["workspace"].as_str().unwrap_or("?"),
                    j["role"].as_str().unwrap_or("?")
                )
            })
            .collect();
        eprintln!(
            "# joined {} (invites accepted); `crmkit workspaces use WORKSPACE` works there",
            names.join(", ")
        );
    }
    if ctx.json() {
        emit(&format!(
            "{}\n",
            json!({"result": "signed_in", "server": server, "profile": signin.profile,
                   "email": email, "workspace": workspace, "joined": v["joined"],
                   "kept_in": store.name()})
        ));
    }
    retire(server, old, Some(&email)).await;
    match not_there {
        Some(e) => Err(CliError::new(
            e.code,
            format!(
                "{}\nyou are signed in, in {} instead: `crmkit workspaces list` shows yours, `crmkit workspaces use WORKSPACE` switches",
                e.message,
                workspace.as_str().unwrap_or("your default workspace")
            ),
        )),
        None => Ok(()),
    }
}

/// Revokes a token this CLI kept and has just replaced, so that switching
/// and signing in again leave no live tokens behind (best effort: a token
/// already dead is fine). Says whose it was when it was another user's.
async fn retire(server: &str, old: Option<String>, now_email: Option<&str>) {
    let Some(old) = old else { return };
    let Ok(c) = Client::new(server, Some(old)) else {
        return;
    };
    let Ok(v) = c
        .get("/whoami?format=json", true)
        .await
        .and_then(|a| a.json())
    else {
        return;
    };
    let Some(id) = v["data"]["token"].as_str() else {
        return;
    };
    let revoked = c
        .send(
            Method::DELETE,
            &format!("/tokens/{}", id_path(id)),
            None,
            false,
            &[],
            false,
        )
        .await
        .is_ok();
    let was = v["data"]["email"].as_str().unwrap_or("?");
    if revoked && now_email.is_some_and(|now| now != was) {
        eprintln!("# replaced the sign-in of {was} in this profile (its token is revoked)");
    }
}

async fn logout(ctx: &Ctx) -> Result<(), CliError> {
    let signin = ctx.global.signin();
    let c = match ctx.client() {
        Ok(c) => c,
        // Signed out already: what logout is for is done.
        Err(e) if e.code == 4 => {
            eprintln!("# not signed in to {signin}: nothing to sign out of");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match c.get("/whoami?format=json", true).await {
        Ok(a) => {
            let v = a.json()?;
            if let Some(id) = v["data"]["token"].as_str() {
                c.send(
                    Method::DELETE,
                    &format!("/tokens/{}", id_path(id)),
                    None,
                    false,
                    &[],
                    false,
                )
                .await?;
            }
        }
        // Already dead on the server: still forget it here.
        Err(e) if e.code == 4 => {}
        Err(e) => return Err(e),
    }
    if std::env::var("CRMKIT_TOKEN").is_err() {
        let store = credentials::store()?;
        store
            .delete(&signin.key())
            .map_err(|e| CliError::new(1, e))?;
    }
    eprintln!("# signed out of {signin}");
    Ok(())
}

/// Runs a call that may need the emailed step-up code: `--code` is sent right
/// away; otherwise a person is asked on a terminal, and a script gets exit 6.
async fn with_step_up(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    json: bool,
    code: Option<String>,
) -> Result<client::Answer, CliError> {
    let headers: Vec<(String, String)> = code
        .iter()
        .map(|c| ("x-escalation-code".to_string(), c.clone()))
        .collect();
    match c
        .send(method.clone(), path, body, json, &headers, false)
        .await
    {
        Err(e) if e.code == 6 && e.message.contains("escalation_required") && code.is_none() => {
            if !tty() {
                // The hint already says: the same command with --code CODE.
                return Err(CliError::human(e.message));
            }
            // As at sign-in: what is not 6 digits is asked for again before
            // it costs one of the code's tries, and a wrong code is asked
            // for again (the code takes 5 tries).
            let mut code = prompt("A confirmation code was emailed to you. Code: ").await?;
            let mut tries = 1;
            loop {
                while !is_code(&code) {
                    eprintln!("# the code is the 6 digits in the email");
                    code = prompt(&format!("Confirmation code (try {tries} of 3): ")).await?;
                }
                let sent = c
                    .send(
                        method.clone(),
                        path,
                        body,
                        json,
                        &[("x-escalation-code".into(), code.trim().to_string())],
                        false,
                    )
                    .await;
                match sent {
                    Err(e) if tries < 3 && e.message.contains("invalid_code") => {
                        tries += 1;
                        eprintln!("# that code did not work");
                        code = prompt(&format!("Confirmation code (try {tries} of 3): ")).await?;
                    }
                    other => return other,
                }
            }
        }
        other => other,
    }
}

/// A workspace as given on the command line: its id or handle, passed on
/// as is, or its name among the workspaces you belong to or are invited to
/// (an exact match first, then one that ignores case).
async fn workspace_id(c: &Client, arg: &str) -> Result<String, CliError> {
    if arg.starts_with("w_") || arg.starts_with("workspace/") {
        return Ok(arg.to_string());
    }
    let v = c.get("/workspaces?format=json", true).await?.json()?;
    let all: Vec<(&str, &str)> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| Some((w["name"].as_str()?, w["id"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut found: Vec<&(&str, &str)> = all.iter().filter(|(n, _)| *n == arg).collect();
    if found.is_empty() {
        found = all
            .iter()
            .filter(|(n, _)| n.to_lowercase() == arg.to_lowercase())
            .collect();
    }
    match found.as_slice() {
        [(_, id)] => Ok((*id).to_string()),
        [] => {
            let names: Vec<String> = all.iter().map(|(n, id)| format!("{n:?} ({id})")).collect();
            Err(CliError::new(
                3,
                format!(
                    "no workspace of yours is named {arg:?}; yours: {}; give a name or id as `crmkit workspaces list` prints it",
                    names.join(", ")
                ),
            ))
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|(_, id)| *id).collect();
            Err(CliError::usage(format!(
                "{} of your workspaces are named {arg:?} ({}); give the id",
                many.len(),
                ids.join(", ")
            )))
        }
    }
}

/// A member as given on the command line: a user or invite id or handle,
/// passed on as is, or an email address, looked up among the workspace's
/// members first and, with `invites_too`, its pending invites second (a role
/// change applies to members only: an invitee's role is set by inviting
/// again).
async fn member_ref(
    c: &Client,
    ws: &str,
    arg: &str,
    invites_too: bool,
) -> Result<String, CliError> {
    if !arg.contains('@') {
        return Ok(arg.to_string());
    }
    let v = c
        .get(
            &format!("/workspaces/{}/members?format=json", id_path(ws)),
            true,
        )
        .await?
        .json()?;
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    let wanted = arg.trim().to_lowercase();
    for status in ["member", "invited"] {
        let found = rows.iter().find_map(|r| {
            (r["status"] == status
                && r["email"].as_str().map(str::to_lowercase).as_deref() == Some(&wanted))
            .then(|| r["handle"].as_str())
            .flatten()
        });
        if let Some(h) = found {
            if status == "invited" && !invites_too {
                return Err(CliError::usage(format!(
                    "{arg} is invited to {ws}, not yet a member; to change the invite's role, invite again: crmkit workspaces invite {ws} {arg} --role ROLE"
                )));
            }
            return Ok(h.to_string());
        }
    }
    Err(CliError::new(
        3,
        format!(
            "{arg} is neither a member of {ws} nor invited to it; `crmkit workspaces members {ws}` lists who is"
        ),
    ))
}

async fn workspaces(ctx: &Ctx, w: WorkspacesCmd) -> Result<(), CliError> {
    let c = ctx.client()?;
    let json_fmt = ctx.json();
    let plain = if ctx.format == Format::Table {
        Format::Text
    } else {
        ctx.format
    };
    match w {
        WorkspacesCmd::List => show(ctx.format, &c.get("/workspaces", json_fmt).await?.text),
        WorkspacesCmd::Create { name } => {
            let a = c
                .send(
                    Method::POST,
                    "/workspaces",
                    Some(&json!({"name": name})),
                    json_fmt,
                    &[],
                    false,
                )
                .await?;
            // The server's way in is a token call; the CLI's is `use`.
            let text: String = a
                .text
                .lines()
                .map(
                    |l| match l.strip_prefix("# to work in it: POST /workspaces/") {
                        Some(rest) => format!(
                            "# to work in it: crmkit workspaces use {}\n",
                            rest.split('/').next().unwrap_or("WORKSPACE")
                        ),
                        None => format!("{l}\n"),
                    },
                )
                .collect();
            show(plain, if json_fmt { &a.text } else { &text });
        }
        WorkspacesCmd::Use { id } => {
            let id = workspace_id(&c, &id).await?;
            let name = c.get("/whoami?format=json", true).await?.json()?["data"]["token_name"]
                .as_str()
                .unwrap_or("crmkit-cli")
                .to_string();
            let v = mint_in(&c, &id, &name).await?;
            let token = v["data"]["token"]
                .as_str()
                .ok_or_else(|| CliError::new(1, "the server sent no token"))?;
            let store = credentials::store()?;
            let key = ctx.global.signin().key();
            // The token replaced is revoked, unless CRMKIT_TOKEN was in use.
            let old = if std::env::var("CRMKIT_TOKEN").is_ok() {
                None
            } else {
                store.get(&key).ok().flatten()
            };
            store.set(&key, token).map_err(|e| CliError::new(1, e))?;
            let email = v["data"]["email"].as_str().unwrap_or("").to_string();
            retire(&ctx.global.server, old, Some(&email)).await;
            let ws = v["data"]["workspace"].as_str().unwrap_or("?");
            if json_fmt {
                emit(&format!(
                    "{}\n",
                    json!({"data": {"workspace": ws, "email": email}, "result": "switched"})
                ));
            } else {
                emit(&format!("# now working in {ws}\n"));
            }
        }
        WorkspacesCmd::Show { id } => {
            let id = workspace_id(&c, &id).await?;
            let a = c
                .get(&format!("/workspaces/{}", id_path(&id)), json_fmt)
                .await?;
            // One record and its usage lines, as `whoami` shows them.
            show(
                if ctx.format == Format::Table {
                    Format::Text
                } else {
                    ctx.format
                },
                &a.text,
            );
        }
        WorkspacesCmd::Members { id } => {
            let id = workspace_id(&c, &id).await?;
            let path = format!("/workspaces/{}/members", id_path(&id));
            show(ctx.format, &c.get(&path, json_fmt).await?.text);
        }
        WorkspacesCmd::Invite {
            id,
            email,
            role,
            code,
        } => {
            let id = workspace_id(&c, &id).await?;
            let mut body = json!({"email": email});
            if let Some(role) = role {
                body["role"] = json!(role.to_ascii_lowercase());
            }
            let a = with_step_up(
                &c,
                Method::POST,
                &format!("/workspaces/{}/invites", id_path(&id)),
                Some(&body),
                json_fmt,
                code,
            )
            .await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Role {
            id,
            user,
            role,
            code,
        } => {
            let id = workspace_id(&c, &id).await?;
            let user = member_ref(&c, &id, &user, false).await?;
            let path = format!(
                "/workspaces/{}/members/{}/role",
                id_path(&id),
                id_path(&user)
            );
            let a = with_step_up(
                &c,
                Method::POST,
                &path,
                Some(&json!({"role": role.to_ascii_lowercase()})),
                json_fmt,
                code,
            )
            .await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Remove { id, user, yes } => {
            let id = workspace_id(&c, &id).await?;
            let given = user;
            let user = member_ref(&c, &id, &given, true).await?;
            // `members` lists pending invites beside members; either goes.
            let under = if user.starts_with("invite/") || user.starts_with("i_") {
                "invites"
            } else {
                "members"
            };
            // Withdrawing an invite takes nothing from anyone; removing a
            // member ends their access, as a delete does.
            if under == "members"
                && !yes
                && !agreed(
                    &format!("removing {given} from {id} ends their access and their tokens for it; add --yes to confirm"),
                    &format!("Remove {given} from workspace {id}? [y/N] "),
                    "# not removed",
                )
                .await?
            {
                return Ok(());
            }
            let a = c
                .send(
                    Method::DELETE,
                    &format!("/workspaces/{}/{under}/{}", id_path(&id), id_path(&user)),
                    None,
                    json_fmt,
                    &[],
                    false,
                )
                .await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Decline { id } => {
            let id = workspace_id(&c, &id).await?;
            let bare = id.strip_prefix("workspace/").unwrap_or(&id).to_string();
            let list = c.get("/workspaces?format=json", true).await?.json()?;
            let invite = list["data"]
                .as_array()
                .and_then(|a| {
                    a.iter().find(|w| w["id"].as_str() == Some(bare.as_str()) && w["status"] == "invited")
                })
                .and_then(|w| w["invite"].as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    CliError::new(
                        3,
                        format!("no pending invite of yours to {id}; `crmkit workspaces list` shows them as status=invited"),
                    )
                })?;
            let path = format!(
                "/workspaces/{}/invites/{}",
                id_path(&bare),
                id_path(&invite)
            );
            let a = c
                .send(Method::DELETE, &path, None, json_fmt, &[], false)
                .await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Rename { id, name } => {
            let id = workspace_id(&c, &id).await?;
            let a = c
                .send(
                    Method::PATCH,
                    &format!("/workspaces/{}", id_path(&id)),
                    Some(&json!({"name": name})),
                    json_fmt,
                    &[],
                    false,
                )
                .await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Leave { id, yes } => {
            let id = workspace_id(&c, &id).await?;
            // Nobody leaves their personal workspace: said before asking.
            let bare = id.strip_prefix("workspace/").unwrap_or(&id);
            let list = c.get("/workspaces?format=json", true).await?.json()?;
            let personal = list["data"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|w| w["id"].as_str() == Some(bare) && w["personal"] == true)
            });
            if personal {
                return Err(CliError::usage(format!(
                    "{id} is your personal workspace: it cannot be left (`crmkit workspaces delete {id}` deletes it with its data)"
                )));
            }
            if !yes
                && !agreed(
                    &format!("leaving {id} ends your access to it until an admin invites you again; add --yes to confirm"),
                    &format!("Leave workspace {id}? [y/N] "),
                    "# not left",
                )
                .await?
            {
                return Ok(());
            }
            let me = c.get("/whoami?format=json", true).await?.json()?["data"]["handle"]
                .as_str()
                .unwrap_or("")
                .to_string();
            // Leaving the workspace this sign-in acts in revokes its token:
            // one for another workspace is minted first, as for a delete.
            let spare = spare_token(&c, &id).await?;
            let path = format!("/workspaces/{}/members/{}", id_path(&id), id_path(&me));
            let left = c.send(Method::DELETE, &path, None, json_fmt, &[], false);
            let a = with_spare(ctx, spare, left).await?;
            show(plain, &a.text);
        }
        WorkspacesCmd::Delete { id, code, yes } => {
            let id = workspace_id(&c, &id).await?;
            if !yes
                && !agreed(
                    &format!("deleting workspace {id} removes all its data; add --yes to confirm (the emailed step-up code then goes in --code)"),
                    &format!("Delete workspace {id} and ALL its data? [y/N] "),
                    "# not deleted",
                )
                .await?
            {
                return Ok(());
            }
            // Deleting the workspace this sign-in acts in revokes its token:
            // a token for another workspace is minted first and kept if the
            // delete goes through (not for the call that only mails the code).
            let asks = code.is_some() || tty();
            let spare = if asks {
                spare_token(&c, &id).await?
            } else {
                None
            };
            let path = format!("/workspaces/{}", id_path(&id));
            let deleted = with_step_up(&c, Method::DELETE, &path, None, json_fmt, code);
            let a = with_spare(ctx, spare, deleted).await?;
            // The server's advice on going on (a token call) is the CLI's
            // job here: with_spare has said where it works now.
            let text: String = a
                .text
                .lines()
                .filter(|l| json_fmt || !l.starts_with("# its tokens are revoked"))
                .map(|l| format!("{l}\n"))
                .collect();
            show(plain, &text);
        }
    }
    Ok(())
}

/// A new token for workspace `id` named `name` (the server's JSON answer).
async fn mint_in(c: &Client, id: &str, name: &str) -> Result<Value, CliError> {
    c.send(
        Method::POST,
        &format!("/workspaces/{}/tokens", id_path(id)),
        Some(&json!({ "token_name": name })),
        true,
        &[],
        false,
    )
    .await?
    .json()
}

/// When the sign-in acts in workspace `id`: a fresh token (and its
/// workspace's handle) for another workspace of the user's, the personal one
/// first; `None` when it acts elsewhere or there is no other.
/// Makes `call`, which may revoke this sign-in's token (leaving or deleting
/// the workspace it acts in), with `spare` (from [`spare_token`]) minted
/// beforehand: kept if the call went through, revoked if it did not.
async fn with_spare(
    ctx: &Ctx,
    spare: Option<(String, String)>,
    call: impl std::future::Future<Output = Result<client::Answer, CliError>>,
) -> Result<client::Answer, CliError> {
    match call.await {
        Ok(a) => {
            keep_spare(ctx, spare)?;
            Ok(a)
        }
        Err(e) => {
            if let Some((token, _)) = spare {
                retire(&ctx.global.server, Some(token), None).await;
            }
            Err(e)
        }
    }
}

/// After the sign-in's own workspace is gone (deleted, or left), the spare
/// token minted beforehand becomes the sign-in's (unless CRMKIT_TOKEN rules).
fn keep_spare(ctx: &Ctx, spare: Option<(String, String)>) -> Result<(), CliError> {
    if let Some((token, ws)) = spare
        && std::env::var("CRMKIT_TOKEN").is_err()
    {
        credentials::store()?
            .set(&ctx.global.signin().key(), &token)
            .map_err(|e| CliError::new(1, e))?;
        eprintln!("# now working in {ws}");
    }
    Ok(())
}

async fn spare_token(c: &Client, id: &str) -> Result<Option<(String, String)>, CliError> {
    let bare = |w: &str| w.strip_prefix("workspace/").unwrap_or(w).to_string();
    let who = c.get("/whoami?format=json", true).await?.json()?;
    let current = who["data"]["workspace"].as_str().map(bare);
    if current.as_deref() != Some(bare(id).as_str()) {
        return Ok(None);
    }
    let list = c.get("/workspaces?format=json", true).await?.json()?;
    let mut others: Vec<&Value> = list["data"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    others.retain(|w| w["status"] == "member" && w["id"].as_str() != Some(bare(id).as_str()));
    others.sort_by_key(|w| w["personal"] != true);
    let Some(other) = others.first().and_then(|w| w["id"].as_str()) else {
        return Ok(None);
    };
    let name = who["data"]["token_name"].as_str().unwrap_or("crmkit-cli");
    let v = mint_in(c, other, name).await?;
    Ok(v["data"]["token"]
        .as_str()
        .map(|t| (t.to_string(), format!("workspace/{other}"))))
}

async fn records(ctx: &Ctx, kind: &'static str, r: RecordCmd) -> Result<(), CliError> {
    let json_fmt = ctx.json();
    let plain = if ctx.format == Format::Table {
        Format::Text
    } else {
        ctx.format
    };
    match r {
        RecordCmd::List(a) => {
            let pairs = list_query(kind, &a)?;
            let c = ctx.client()?;
            ctx.list(&c, &with_query(&format!("/{kind}"), &pairs), &a.page)
                .await?;
        }
        RecordCmd::Summary {
            by,
            search,
            filters,
        } => {
            let a = ListArgs {
                search,
                filters,
                ..ListArgs::default()
            };
            let mut pairs = list_query(kind, &a)?;
            pairs.extend(by.map(|b| ("by".to_string(), b)));
            let c = ctx.client()?;
            let path = with_query(&format!("/{kind}/summary"), &pairs);
            show(ctx.format, &c.get(&path, json_fmt).await?.text);
        }
        RecordCmd::Get { id } => {
            let c = ctx.client()?;
            show(
                ctx.format,
                &c.get(&format!("/{kind}/{}", id_path(&id)), json_fmt)
                    .await?
                    .text,
            );
        }
        RecordCmd::Create(w) => {
            let body = body_of(&w, kind, "create")?;
            let c = ctx.client()?;
            show(
                plain,
                &c.send(
                    Method::POST,
                    &format!("/{kind}"),
                    Some(&body),
                    json_fmt,
                    &[],
                    false,
                )
                .await?
                .text,
            );
        }
        RecordCmd::Import { file } => {
            let c = ctx.client()?;
            import(&c, kind, &file, json_fmt, plain).await?;
        }
        RecordCmd::Update { id, fields } => {
            let body = body_of(&fields, kind, "update")?;
            let c = ctx.client()?;
            show(
                plain,
                &c.send(
                    Method::PATCH,
                    &format!("/{kind}/{}", id_path(&id)),
                    Some(&body),
                    json_fmt,
                    &[],
                    false,
                )
                .await?
                .text,
            );
        }
        RecordCmd::Delete { id, yes } => {
            let c = ctx.client()?;
            let path = format!("/{kind}/{}", id_path(&id));
            let first = c
                .send(
                    Method::DELETE,
                    &format!("{path}?format=json"),
                    None,
                    true,
                    &[],
                    true,
                )
                .await?;
            if first.status != 409 {
                // Not found, forbidden, …: report as any other error.
                c.send(Method::DELETE, &path, None, json_fmt, &[], false)
                    .await?;
                return Ok(());
            }
            let v = first.json()?;
            let message = v["message"].as_str().unwrap_or("this cannot be undone");
            let confirm = v["confirm"]
                .as_str()
                .ok_or_else(|| CliError::new(1, "the server sent no confirmation token"))?
                .to_string();
            if !yes
                && !agreed(
                    &format!("{message}\nadd --yes to delete without asking"),
                    &format!("{message}\nDelete? [y/N] "),
                    "# not deleted",
                )
                .await?
            {
                return Ok(());
            }
            let a = c
                .send(
                    Method::DELETE,
                    &format!("{path}?confirm={}", enc(&confirm)),
                    None,
                    json_fmt,
                    &[],
                    false,
                )
                .await?;
            show(plain, &a.text);
        }
        RecordCmd::Activities { id, filter, page } => {
            let mut pairs = filter.pairs()?;
            pairs.extend(page.limit.map(|l| ("limit".to_string(), l.to_string())));
            // A contact's log, or a deal's (the activities that name it);
            // a company has none.
            let path = match kind {
                "contacts" | "deals" => format!("/{kind}/{}/activities", id_path(&id)),
                _ => {
                    return Err(CliError::usage(
                        "companies have no activity log: activities belong to a contact (`crmkit contacts activities CONTACT`) and may name a deal (`crmkit deals activities DEAL`)",
                    ));
                }
            };
            let c = ctx.client()?;
            ctx.list(&c, &with_query(&path, &pairs), &page).await?;
        }
        RecordCmd::Log {
            id,
            kind: activity,
            body,
            deal,
            at,
        } => {
            if kind != "contacts" {
                return Err(CliError::usage(format!(
                    "activities are logged on a contact: `crmkit contacts log CONTACT --kind call{}`",
                    if kind == "deals" {
                        format!(" --deal {id}")
                    } else {
                        String::new()
                    }
                )));
            }
            let mut m = Map::new();
            m.insert("kind".into(), json!(activity.to_ascii_lowercase()));
            if let Some(b) = body {
                m.insert("body".into(), json!(b));
            }
            if let Some(d) = deal {
                m.insert("deal_id".into(), json!(d));
            }
            if let Some(t) = at {
                m.insert("occurred_at".into(), json!(t));
            }
            let c = ctx.client()?;
            let a = c
                .send(
                    Method::POST,
                    &format!("/contacts/{}/activities", id_path(&id)),
                    Some(&Value::Object(m)),
                    json_fmt,
                    &[],
                    false,
                )
                .await?;
            show(plain, &a.text);
        }
    }
    Ok(())
}

async fn api(
    ctx: &Ctx,
    method: String,
    path: String,
    data: Option<String>,
    header: Vec<String>,
) -> Result<(), CliError> {
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PATCH" => Method::PATCH,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        other => {
            return Err(CliError::usage(format!(
                "method {other:?}: use GET, POST, PATCH or DELETE"
            )));
        }
    };
    if !path.starts_with('/') {
        return Err(CliError::usage(
            "the path starts with /, e.g. /contacts?stage=lead",
        ));
    }
    let body = data.as_deref().map(read_data).transpose()?;
    let mut headers = Vec::new();
    for h in header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| CliError::usage(format!("--header {h:?}: expected Key: value")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    // Signed out, the request goes without a token: GET /help, /healthz
    // and the sign-in endpoints need none, and the rest answer
    // auth_required (exit 4) themselves.
    let c = match ctx.client() {
        Ok(c) => c,
        Err(e) if e.code == 4 => {
            let mut c = Client::new(&ctx.global.server, None)?;
            c.login = ctx.global.signin().login_hint();
            c
        }
        Err(e) => return Err(e),
    };
    let a = c
        .send(method, &path, body.as_ref(), ctx.json(), &headers, true)
        .await?;
    emit(&a.text);
    if a.status >= 400 {
        let code = a
            .text
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .map(str::to_string)
            .or_else(|| {
                serde_json::from_str::<Value>(&a.text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
            });
        return Err(CliError::new(
            exit::for_api(a.status, code.as_deref().unwrap_or("")),
            String::new(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::custom_value;
    use serde_json::json;

    #[test]
    fn custom_values_keep_what_was_typed() {
        assert_eq!(custom_value("42"), json!(42));
        assert_eq!(custom_value("-1.5"), json!(-1.5));
        assert_eq!(custom_value("true"), json!(true));
        assert_eq!(custom_value("null"), json!(null));
        assert_eq!(custom_value("[1,2]"), json!([1, 2]));
        assert_eq!(custom_value("{\"a\":1}"), json!({"a": 1}));
        for text in [
            "1.10",
            "007",
            "12345678901234567890123",
            "1e3",
            "gold",
            "",
            " 5",
        ] {
            assert_eq!(custom_value(text), json!(text), "{text}");
        }
    }
}
