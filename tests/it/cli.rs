//! The CLI (`crmkit login`, records, workspaces, api, …) run as the real binary
//! against the real server (SPEC §8).

use std::process::{Command, Output, Stdio};

use crate::harness::{Server, bin};

/// A CLI environment: its own config dir, no keyring unless asked, the server URL.
struct Cli {
    dir: tempfile::TempDir,
    server: String,
    keyring: bool,
}

impl Cli {
    fn new(s: &Server) -> Cli {
        Cli {
            dir: tempfile::tempdir().unwrap(),
            server: s.base.clone(),
            keyring: false,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("CRMKIT_URL", &self.server)
            .env("CRMKIT_CONFIG_DIR", self.dir.path())
            .env("NO_COLOR", "1");
        c.env_remove("CRMKIT_TOKEN");
        if !self.keyring {
            c.env("CRMKIT_KEYRING", "off");
        }
        c.stdin(Stdio::null());
        c
    }

    /// `python3 -c SCRIPT SCRIPT_ARGS… crmkit ARGS…` in this environment: the
    /// script runs the CLI on a pseudo-terminal (Python's `pty`).
    fn on_a_terminal(&self, script: &str, script_args: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new("python3");
        c.args(["-c", script])
            .args(script_args)
            .arg(bin())
            .args(args)
            .env("CRMKIT_URL", &self.server)
            .env("CRMKIT_CONFIG_DIR", self.dir.path())
            .env("CRMKIT_KEYRING", "off")
            .env_remove("CRMKIT_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn login(&self, s: &Server, email: &str) {
        let n = s.smtp().mails_to(email).len();
        let out = self.run(&["login", "--email", email]);
        assert_eq!(
            out.status.code(),
            Some(6),
            "non-interactive login without --code asks for it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let code = s.nth_code(email, n + 1).await;
        self.ok(&["login", "--email", email, "--code", &code]);
    }
}

/// Python for the pseudo-terminal tests, or a clear skip line.
fn python_here() -> bool {
    let python = Command::new("python3").arg("--version").output().is_ok();
    crate::require("python3 (for a pseudo-terminal)", python)
}

/// The start of a pseudo-terminal script: runs the CLI (argv[2:]) on a
/// pty, with argv[1] a file the test writes the emailed code to, and
/// `wait_for(text)` reading its output into `seen`.
const PTY_PRELUDE: &str = r#"import os, pty, select, sys, time
code_file = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
seen = b""
def wait_for(text, secs=20):
    global seen
    deadline = time.time() + secs
    while text not in seen and time.time() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 1024)
            except OSError:
                break
    return text in seen
def type_emailed_code():
    deadline = time.time() + 20
    while not os.path.exists(code_file) and time.time() < deadline:
        time.sleep(0.1)
    os.write(fd, open(code_file).read().strip().encode() + b"\r")
"#;

fn code_of(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The id of the workspace a `workspaces create` printed.
fn created_workspace(out: &str) -> String {
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no workspace line: {out:?}"))
        .trim_start_matches("workspace/")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_records_and_pipes() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "cli@example.com").await;
    // The file chosen with CRMKIT_KEYRING=off: no warning.
    let err = String::from_utf8_lossy(&cli.run(&["whoami"]).stderr).to_string();
    assert!(!err.contains("no OS keyring"), "{err}");
    // A keyring that cannot be reached: the file, with a warning.
    let out = cli
        .cmd(&["whoami"])
        .env_remove("CRMKIT_KEYRING")
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/crmkit-test-bus",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("no OS keyring"),
        "the file fallback warns: {err}"
    );
    let who = cli.ok(&["whoami"]);
    assert!(who.contains("email=cli@example.com"), "{who}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cli.dir.path().join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let co = cli.ok(&[
        "companies",
        "create",
        "--name",
        "Acme",
        "--domain",
        "acme.com",
    ]);
    assert!(co.starts_with("company/co_"), "{co}");
    let co_id = co.split_whitespace().next().unwrap().to_string();
    let c = cli.ok(&[
        "contacts",
        "create",
        "--name",
        "Jane Doe",
        "--email",
        "jane@acme.com",
        "--company",
        &co_id,
        "--tag",
        "vip",
        "--custom",
        "seats=12",
        "--stage",
        "lead",
    ]);
    assert!(c.contains("# created"), "{c}");
    let cid = c.split_whitespace().next().unwrap().to_string();
    cli.ok(&["contacts", "update", &cid, "--title", "CTO"]);
    // Numbers JSON would change stay as typed; a plain number is a number.
    let v: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "--json",
        "contacts",
        "update",
        &cid,
        "--custom",
        "acct=12345678901234567890123",
        "--custom",
        "version=1.10",
    ]))
    .unwrap();
    let custom = &v["data"]["custom"];
    assert_eq!(custom["acct"], "12345678901234567890123", "{v}");
    assert_eq!(custom["version"], "1.10", "{v}");
    assert_eq!(custom["seats"], 12, "{v}");
    cli.ok(&["contacts", "log", &cid, "--kind", "call", "--body", "hello"]);
    cli.ok(&[
        "deals",
        "create",
        "--title",
        "Renewal",
        "--amount-cents",
        "129900",
        "--currency",
        "USD",
        "--contact",
        &cid,
    ]);
    // A deal's activities are those that name it; a company has none.
    let deal = cli.ok(&["deals", "list"]);
    let did = deal.split_whitespace().next().unwrap().to_string();
    cli.ok(&[
        "contacts",
        "log",
        &cid,
        "--kind",
        "meeting",
        "--body",
        "on the deal",
        "--deal",
        &did,
    ]);
    let on_deal = cli.ok(&["deals", "activities", &did]);
    assert!(on_deal.contains("body=\"on the deal\""), "{on_deal}");
    assert!(!on_deal.contains("body=hello"), "{on_deal}");
    // A deal that does not exist is not found, as a contact's log is.
    let out = cli.run(&["deals", "activities", "d_000000000000"]);
    assert_eq!(code_of(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli.run(&["companies", "activities", &co_id]);
    assert_eq!(code_of(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crmkit contacts activities"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Piped output is the server's lines, unchanged.
    let piped = cli.ok(&["contacts", "list", "--stage", "lead", "--tag", "vip"]);
    let direct = s
        .get("/contacts?stage=lead&tags=vip", &crate::cli_token(&cli.dir))
        .await
        .text;
    assert_eq!(piped, direct);
    assert!(piped.contains("title=CTO"));
    let searched = cli.ok(&[
        "contacts",
        "list",
        "--search",
        "jane",
        "--where",
        "custom.seats=gte:10",
    ]);
    assert!(searched.contains(&cid));
    // JSON parses.
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--json", "deals", "list"])).unwrap();
    assert_eq!(json["data"][0]["amount"], "1299.00 USD");
    // A table with columns.
    let table = cli.ok(&["--format", "table", "contacts", "list"]);
    assert!(
        table.contains("handle") && table.contains("name") && table.contains("Jane Doe"),
        "{table}"
    );
    // Activities, reminders, audit, api.
    assert!(
        cli.ok(&["contacts", "activities", &cid])
            .contains("kind=call")
    );
    assert!(cli.ok(&["activities"]).contains("body=hello"));
    assert!(
        cli.ok(&["activities", "--kind", "call"])
            .contains("body=hello")
    );
    assert!(
        !cli.ok(&["activities", "--kind", "note,task"])
            .contains("body=hello")
    );
    // By when they happened: the offset's + reaches the server intact.
    assert!(
        cli.ok(&["activities", "--since", "2020-01-01T00:00:00+02:00"])
            .contains("body=hello")
    );
    assert!(
        !cli.ok(&["activities", "--until", "2020-01-01T00:00:00Z"])
            .contains("body=hello")
    );
    let in_future = cli.ok(&[
        "deals",
        "activities",
        &did,
        "--since",
        "2099-01-01T00:00:00Z",
    ]);
    assert!(!in_future.contains("on the deal"), "{in_future}");
    // A bad time is refused before sending, naming the flag.
    let out = cli.run(&["activities", "--since", "yesterday"]);
    assert_eq!(code_of(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--since \"yesterday\" is not a time"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Oldest first, and by author.
    let oldest = cli.ok(&["activities", "--oldest-first"]);
    let (hello, deal) = (oldest.find("body=hello"), oldest.find("on the deal"));
    assert!(hello.is_some() && hello < deal, "{oldest}");
    assert!(
        !cli.ok(&["activities", "--author", "u_000000000000"])
            .contains("body=hello")
    );
    // A contact's log filters by kind too; --kind repeats.
    let calls = cli.ok(&["contacts", "activities", &cid, "--kind", "call"]);
    assert!(
        calls.contains("body=hello") && !calls.contains("on the deal"),
        "{calls}"
    );
    let both = cli.ok(&["activities", "--kind", "call", "--kind", "meeting"]);
    assert!(
        both.contains("body=hello") && both.contains("on the deal"),
        "{both}"
    );
    cli.ok(&["reminders", "--days", "7"]);
    assert!(
        cli.ok(&["audit", "--all"])
            .contains("action=contact.create")
    );
    // A summary: counts (and for deals amounts) per group.
    let summary = cli.ok(&[
        "deals",
        "summary",
        "--by",
        "stage",
        "--where",
        "status=open",
    ]);
    assert!(
        summary.contains("count=1") && summary.contains("amount=\"1299.00 USD\""),
        "{summary}"
    );
    assert_eq!(code_of(&cli.run(&["deals", "summary", "--by", "title"])), 2);
    // A record's history; a kind's actions; a time window.
    let history = cli.ok(&["audit", "--target", &cid]);
    assert!(
        history.contains("action=contact.create") && history.contains("action=contact.update"),
        "{history}"
    );
    assert!(!history.contains("action=deal.create"), "{history}");
    let deals = cli.ok(&[
        "audit",
        "--action",
        "deal",
        "--since",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(
        deals.contains("action=deal.create") && !deals.contains("action=contact."),
        "{deals}"
    );
    assert_eq!(code_of(&cli.run(&["audit", "--until", "soon"])), 2);
    assert!(
        cli.ok(&["api", "GET", "/contacts?limit=1"])
            .starts_with("contact/")
    );
    let out = cli.run(&["api", "GET", "/contacts/c_000000000000"]);
    assert_eq!(code_of(&out), 3);
    // A closed pipe is success.
    let mut child = cli
        .cmd(&["contacts", "list"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_ask_and_scripts_say_yes() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "del@example.com").await;
    let c = cli.ok(&["contacts", "create", "--name", "Gone"]);
    let cid = c.split_whitespace().next().unwrap().to_string();
    let out = cli.run(&["contacts", "delete", &cid]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(
        cli.ok(&["contacts", "delete", &cid, "--yes"])
            .contains("# deleted")
    );
    assert_eq!(code_of(&cli.run(&["contacts", "get", &cid])), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_contract() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    // No token stored: 4, and it says how to sign in.
    let out = cli.run(&["whoami"]);
    assert_eq!(code_of(&out), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("crmkit login"));
    cli.login(&s, "codes@example.com").await;
    // Usage errors: 2.
    assert_eq!(
        code_of(&cli.run(&["contacts", "list", "--limit", "abc"])),
        2
    );
    assert_eq!(
        code_of(&cli.run(&["contacts", "create", "--data", "{not json"])),
        2
    );
    assert_eq!(
        code_of(&cli.run(&["contacts", "create", "--data", "@/no/such/file.json"])),
        2
    );
    assert_eq!(
        code_of(&cli.run(&["contacts", "list", "--where", "nope=1"])),
        2
    );
    assert_eq!(
        code_of(&cli.run(&["contacts", "create", "--email", "not-an-email"])),
        2
    );
    let out = cli.run(&["contatcs", "list"]);
    assert_eq!(code_of(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("contacts"),
        "clap suggests the right word"
    );
    // Not found: 3.
    assert_eq!(code_of(&cli.run(&["contacts", "get", "c_000000000000"])), 3);
    // Revoked token: 4.
    let token = crate::cli_token(&cli.dir);
    let me = s.get("/whoami?format=json", &token).await.json()["data"]["token"]
        .as_str()
        .unwrap()
        .trim_start_matches("token/")
        .to_string();
    s.delete(&format!("/tokens/{me}"), &token).await;
    let out = cli.run(&["contacts", "list"]);
    assert_eq!(code_of(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hint:"));
    // Unreachable server: 1, naming the URL.
    let out = cli
        .cmd(&["contacts", "list"])
        .env("CRMKIT_URL", "http://127.0.0.1:1")
        .env("CRMKIT_TOKEN", "ck_x")
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

/// What scripts and agents read: errors as JSON under --json, write
/// failures and foreign servers as errors, not successes or "not found",
/// conflicting flags refused, and hints in the CLI's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_get_errors_they_can_act_on() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "scripts@example.com").await;
    // --json: the server's error object on stderr, nothing on stdout.
    let out = cli.run(&["--json", "contacts", "get", "c_000000000000"]);
    assert_eq!(code_of(&out), 3);
    assert!(out.stdout.is_empty());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON on stderr");
    assert_eq!(err["error"], "not_found", "{err}");
    assert!(err["hint"].as_str().is_some(), "{err}");
    // A client-side refusal is JSON too.
    let out = cli.run(&["--json", "activities", "--since", "soon"]);
    assert_eq!(code_of(&out), 2);
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON on stderr");
    assert_eq!(err["error"], "usage", "{err}");
    // A filter refused before it is sent reads as the server's refusal.
    let out = cli.run(&["--json", "contacts", "list", "--where", "colour=red"]);
    assert_eq!(code_of(&out), 2);
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON on stderr");
    assert_eq!(err["error"], "unknown_field", "{err}");
    assert!(err["hint"].as_str().is_some(), "{err}");
    assert!(
        err["allowed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == "email")),
        "{err}"
    );
    // Without --json the hint names the CLI's command.
    let out = cli.run(&["deals", "get", "d_000000000000"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("crmkit deals list shows what exists"),
        "{text}"
    );
    // An empty id is a usage error, not "no route".
    assert_eq!(code_of(&cli.run(&["contacts", "get", ""])), 2);
    // A value and --clear for the same field: refused, nothing changed.
    let made = cli.ok(&["contacts", "create", "--name", "Clear", "--title", "CEO"]);
    let id = made.split_whitespace().next().unwrap().to_string();
    let out = cli.run(&[
        "contacts", "update", &id, "--clear", "title", "--title", "VP",
    ]);
    assert_eq!(code_of(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--title sets title and --clear title"));
    assert!(cli.ok(&["contacts", "get", &id]).contains("title=CEO"));
    // A failed write of the output is an error; a closed pipe is not.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = cli
        .cmd(&["contacts", "list"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the output"));
    // Creating a workspace says how to work in it with the CLI.
    let made = cli.ok(&["workspaces", "create", "Scripts"]);
    let ws = created_workspace(&made);
    assert!(
        made.contains(&format!("# to work in it: crmkit workspaces use {ws}")),
        "{made}"
    );
    // `use --json` prints JSON on stdout.
    let used: serde_json::Value =
        serde_json::from_str(&cli.ok(&["--json", "workspaces", "use", &ws])).expect("JSON");
    assert_eq!(used["data"]["workspace"], format!("workspace/{ws}"));
    // A role change names members only; an invitee is told to re-invite.
    cli.ok(&["workspaces", "invite", &ws, "later@example.com"]);
    let out = cli.run(&["workspaces", "role", &ws, "later@example.com", "admin"]);
    assert_eq!(code_of(&out), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crmkit workspaces invite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A server URL with a path: said, exit 1.
    let token = crate::cli_token(&cli.dir);
    let out = cli
        .cmd(&["contacts", "list"])
        .env("CRMKIT_URL", format!("{}/api", s.base))
        .env("CRMKIT_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("server's root"));
    // Something that is not crmkit: said, exit 1, not "not found".
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in other.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let page = "<!DOCTYPE html><html>nothing here</html>";
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let out = cli
        .cmd(&["contacts", "list"])
        .env("CRMKIT_URL", &other_url)
        .env("CRMKIT_TOKEN", &token)
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a crmkit server"));
    // Signing out twice: the second has nothing to do, and says so.
    cli.ok(&["logout"]);
    let out = cli.run(&["logout"]);
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed in"));
}

/// Each record kind's help shows only its own flags and commands, with a
/// --where example that applies to it; a hidden flag is still refused
/// with the kind's list.
#[test]
fn help_is_shaped_per_kind() {
    let help = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let companies = help(&["companies", "create", "--help"]);
    assert!(
        companies.contains("--domain") && companies.contains("--industry"),
        "{companies}"
    );
    for flag in [
        "--email",
        "--phone",
        "--stage",
        "--amount-cents",
        "--follow-up",
        "--contact",
    ] {
        assert!(!companies.contains(flag), "{flag} in {companies}");
    }
    let contacts = help(&["contacts", "update", "--help"]);
    assert!(
        contacts.contains("--email") && contacts.contains("--follow-up"),
        "{contacts}"
    );
    assert!(
        !contacts.contains("--domain") && !contacts.contains("--amount-cents"),
        "{contacts}"
    );
    let deals = help(&["deals", "list", "--help"]);
    assert!(
        deals.contains("amount_cents=gte:100000") && deals.contains("--status"),
        "{deals}"
    );
    assert!(!deals.contains("--email"), "{deals}");
    let list = help(&["contacts", "list", "--help"]);
    assert!(
        !list.contains("amount_cents") && list.contains("stage=in:lead,customer"),
        "{list}"
    );
    let kinds = help(&["companies", "--help"]);
    assert!(
        !kinds.contains("\n  log ") && !kinds.contains("\n  activities "),
        "{kinds}"
    );
    assert!(help(&["deals", "--help"]).contains("\n  activities "));
    assert!(help(&["contacts", "--help"]).contains("\n  log "));
    // Hidden, still refused with this kind's flags.
    let out = Command::new(bin())
        .args(["companies", "create", "--email", "x@example.com"])
        .env("CRMKIT_TOKEN", "ck_x")
        .env("CRMKIT_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--email is not a field of companies"));
}

/// Workspace commands take a workspace's name as well as its id, and a
/// member's email as well as their handle; a name that is no one's, or
/// that two workspaces share, is refused with what to give instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_by_name_and_members_by_email() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "names@example.com").await;
    let made = cli.ok(&["workspaces", "create", "Team Blue"]);
    let ws = created_workspace(&made);
    // Exact name, then any case.
    assert!(cli.ok(&["workspaces", "use", "team blue"]).contains(&ws));
    let who = cli.ok(&["whoami"]);
    assert!(who.contains(&format!("workspace=workspace/{ws}")), "{who}");
    // A member joins; another is invited.
    let admin = crate::cli_token(&cli.dir);
    s.join_as_member(&admin, "mate@example.com", "mate").await;
    cli.ok(&["workspaces", "invite", "Team Blue", "later@example.com"]);
    let members = cli.ok(&["workspaces", "members", "Team Blue"]);
    assert!(members.contains("mate@example.com"), "{members}");
    assert!(members.contains("later@example.com"), "{members}");
    // One workspace by name: role, plan and usage (the pending invite holds a seat).
    let shown = cli.ok(&["workspaces", "show", "team blue"]);
    assert!(shown.starts_with(&format!("workspace/{ws} ")), "{shown}");
    assert!(shown.contains("role=admin"), "{shown}");
    assert!(shown.contains("# members: 3 / "), "{shown}");
    // Removing a member is confirmed like a delete: a script without
    // --yes gets 6 and the member stays.
    let out = cli.run(&["workspaces", "remove", "Team Blue", "mate@example.com"]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cli.ok(&["workspaces", "members", &ws])
            .contains("mate@example.com")
    );
    // By email: the member is removed, the invite withdrawn (no --yes needed).
    cli.ok(&[
        "workspaces",
        "remove",
        "Team Blue",
        "MATE@example.com",
        "--yes",
    ]);
    cli.ok(&["workspaces", "remove", "Team Blue", "later@example.com"]);
    let members = cli.ok(&["workspaces", "members", &ws]);
    assert!(!members.contains("mate@example.com"), "{members}");
    assert!(!members.contains("later@example.com"), "{members}");
    let out = cli.run(&["workspaces", "remove", "Team Blue", "nobody@example.com"]);
    assert_eq!(code_of(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crmkit workspaces members"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No such name: 3, naming the workspaces there are.
    let out = cli.run(&["workspaces", "use", "Team Red"]);
    assert_eq!(code_of(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("\"Team Blue\"") && err.contains(&ws), "{err}");
    // Two of that name: 2, naming both ids; the id still works.
    let other = cli.ok(&["workspaces", "create", "team blue"]);
    let other = created_workspace(&other);
    let out = cli.run(&["workspaces", "use", "TEAM BLUE"]);
    assert_eq!(code_of(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains(&ws) && err.contains(&other), "{err}");
    // An exact match wins over a match that ignores case.
    assert!(cli.ok(&["workspaces", "use", "team blue"]).contains(&other));
    assert!(cli.ok(&["workspaces", "use", &ws]).contains(&ws));
    // An invite to someone signed in can be declined by name.
    let admin = crate::cli_token(&cli.dir);
    let r = s
        .post(
            "/workspaces?format=json",
            Some(&admin),
            r#"{"name":"Elsewhere Co"}"#,
        )
        .await;
    let elsewhere = r.json()["data"]["id"].as_str().unwrap().to_string();
    let outsider = Cli::new(&s);
    outsider.login(&s, "outsider@example.com").await;
    let r = s
        .post(
            &format!("/workspaces/{elsewhere}/invites"),
            Some(&admin),
            r#"{"email":"outsider@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        outsider
            .ok(&["workspaces", "list"])
            .contains("status=invited")
    );
    assert!(
        outsider
            .ok(&["workspaces", "decline", "Elsewhere Co"])
            .contains("# declined invite/")
    );
    assert!(!outsider.ok(&["workspaces", "list"]).contains(&elsewhere));
    assert_eq!(
        code_of(&outsider.run(&["workspaces", "decline", &elsewhere])),
        3
    );
    // Renamed, the name is unique again.
    let renamed = cli.ok(&["workspaces", "rename", &other, "Team Green"]);
    assert!(renamed.contains("name=\"Team Green\""), "{renamed}");
    assert!(
        cli.ok(&["workspaces", "use", "team green"])
            .contains(&other)
    );
    assert!(cli.ok(&["workspaces", "use", "Team Blue"]).contains(&ws));
}

/// Leaving the workspace the CLI works in moves it to another, like a
/// delete; without --yes a script is told to add it (exit 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_workspace_moves_the_cli_elsewhere() {
    let s = Server::start().await;
    let admin = s.login("lead@example.com").await;
    let r = s
        .post(
            "/workspaces?format=json",
            Some(&admin),
            r#"{"name":"Crew"}"#,
        )
        .await;
    let crew = r.json()["data"]["id"].as_str().unwrap().to_string();
    let r = s
        .post(
            &format!("/workspaces/{crew}/invites"),
            Some(&admin),
            r#"{"email":"hand@example.com","role":"member"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cli = Cli::new(&s);
    cli.login(&s, "hand@example.com").await;
    assert!(cli.ok(&["workspaces", "use", "Crew"]).contains(&crew));
    let out = cli.run(&["workspaces", "leave", "Crew"]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli.run(&["workspaces", "leave", "Crew", "--yes"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("# you left workspace/{crew}")));
    assert!(err.contains("# now working in workspace/"), "{err}");
    let who = cli.ok(&["whoami"]);
    assert!(
        !who.contains(&crew) && who.contains("email=hand@example.com"),
        "{who}"
    );
    let members = s
        .get(&format!("/workspaces/{crew}/members"), &admin)
        .await
        .text;
    assert!(!members.contains("hand@example.com"), "{members}");
    // The personal workspace cannot be left: said at once, before --yes.
    let personal = cli.ok(&["whoami"]);
    let personal = personal
        .split_whitespace()
        .find_map(|f| f.strip_prefix("workspace=workspace/"))
        .unwrap()
        .to_string();
    let out = cli.run(&["workspaces", "leave", &personal]);
    assert_eq!(code_of(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("personal workspace"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_switch_and_logout() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "ws@example.com").await;
    let made = cli.ok(&["workspaces", "create", "Team"]);
    let ws = created_workspace(&made);
    assert!(cli.ok(&["workspaces", "use", &ws]).contains(&ws));
    assert!(
        cli.ok(&["whoami"])
            .contains(&format!("workspace=workspace/{ws}"))
    );
    let invited = cli.ok(&["workspaces", "invite", &ws, "mate@example.com"]);
    let invite = invited.split_whitespace().next().unwrap().to_string();
    assert!(invite.starts_with("invite/i_"), "{invited}");
    assert!(
        cli.ok(&["workspaces", "members", &ws])
            .contains("status=invited")
    );
    // An invite as admin takes the emailed code, like a promotion.
    let n = s.smtp().mails_to("ws@example.com").len();
    let out = cli.run(&[
        "workspaces",
        "invite",
        &ws,
        "boss@example.com",
        "--role",
        "admin",
    ]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    // The hint names the command's own flag, not the HTTP spelling.
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("run the same command again with --code CODE"),
        "{err}"
    );
    assert!(!err.contains("X-Escalation-Code"), "{err}");
    let code = s.nth_code("ws@example.com", n + 1).await;
    let out = cli.ok(&[
        "workspaces",
        "invite",
        &ws,
        "boss@example.com",
        "--role",
        "admin",
        "--code",
        &code,
    ]);
    assert!(out.contains("role=admin"), "{out}");
    // `remove` withdraws a pending invite by its handle.
    cli.ok(&["workspaces", "remove", &ws, &invite]);
    let members = cli.ok(&["workspaces", "members", &ws]);
    assert!(!members.contains("mate@example.com"), "{members}");
    assert!(members.contains("boss@example.com"), "{members}");
    // Deleting needs the emailed code: a script gets 6 and a code is mailed.
    let n = s.smtp().mails_to("ws@example.com").len();
    let out = cli.run(&["workspaces", "delete", &ws, "--yes"]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    let code = s.nth_code("ws@example.com", n + 1).await;
    // It was the workspace this sign-in acted in: the CLI moves to another
    // (the personal one) and keeps working.
    let out = cli.run(&["workspaces", "delete", &ws, "--yes", "--code", &code]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("# now working in workspace/"), "{err}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("# deleted workspace/{ws}")),
        "{said}"
    );
    assert!(
        !said.contains("POST /workspaces"),
        "API advice in CLI output: {said}"
    );
    let who = cli.ok(&["whoami"]);
    assert!(!who.contains(&ws), "{who}");
    assert!(who.contains("email=ws@example.com"), "{who}");
    // Logout revokes on the server and forgets locally.
    cli.login(&s, "ws@example.com").await;
    let token = crate::cli_token(&cli.dir);
    cli.ok(&["logout"]);
    assert_eq!(s.get("/whoami", &token).await.status, 401);
    assert_eq!(code_of(&cli.run(&["whoami"])), 4);
    // --with-token reads a token from stdin; `auth token` prints it.
    let t = s.login("ws@example.com").await;
    let mut child = cli
        .cmd(&["login", "--with-token"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{t}\n").as_bytes(),
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(cli.ok(&["auth", "token"]).trim(), t);
}

/// `--version` alone takes a fast path; it must print what clap prints
/// when the flag comes with others.
#[test]
fn the_version_is_the_same_on_both_paths() {
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let expected = format!("crmkit {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(run(&["--version"]), expected);
    assert_eq!(run(&["-V"]), expected);
    assert_eq!(run(&["--json", "--version"]), expected);
}

/// Two sign-ins to one server, kept apart by `--profile` (or
/// `CRMKIT_PROFILE`); the default profile keeps the token it had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_keep_sign_ins_to_one_server_apart() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "me@example.com").await;
    let n = s.smtp().mails_to("work@example.com").len();
    let out = cli.run(&["--profile", "work", "login", "--email", "work@example.com"]);
    assert_eq!(code_of(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
    let code = s.nth_code("work@example.com", n + 1).await;
    let out = cli.run(&[
        "login",
        "--profile",
        "work",
        "--email",
        "work@example.com",
        "--code",
        &code,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(profile work)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cli.ok(&["whoami"]).contains("email=me@example.com"));
    assert!(
        cli.ok(&["--profile", "default", "whoami"])
            .contains("email=me@example.com")
    );
    assert!(
        cli.ok(&["whoami", "--profile", "work"])
            .contains("email=work@example.com")
    );
    let by_env = cli
        .cmd(&["whoami"])
        .env("CRMKIT_PROFILE", "work")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&by_env.stdout).contains("email=work@example.com"));
    // Each profile's token is its own; logging one out leaves the other.
    let tokens = std::fs::read_to_string(cli.dir.path().join("tokens.json")).unwrap();
    assert!(tokens.contains(&format!("\"work@{}\"", s.base)), "{tokens}");
    assert_ne!(
        cli.ok(&["auth", "token"]),
        cli.ok(&["auth", "token", "--profile", "work"])
    );
    cli.ok(&["--profile", "work", "logout"]);
    let out = cli.run(&["--profile", "work", "whoami"]);
    assert_eq!(code_of(&out), 4);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crmkit login --profile work"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cli.ok(&["whoami"]).contains("email=me@example.com"));
    // A profile name is a plain word.
    let out = cli.run(&["--profile", "../x", "whoami"]);
    assert_eq!(code_of(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn completions_and_man_page_are_fresh() {
    for (shell, file) in [
        ("bash", "crmkit.bash"),
        ("zsh", "_crmkit"),
        ("fish", "crmkit.fish"),
        ("powershell", "_crmkit.ps1"),
        ("elvish", "crmkit.elv"),
        ("man", "crmkit.1"),
    ] {
        let args: &[&str] = match shell {
            "man" => &["man"],
            _ => &["completions", shell],
        };
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success());
        let committed = std::fs::read(format!("{}/completions/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_default();
        assert!(
            committed == out.stdout,
            "completions/{file} is stale: regenerate with `crmkit {} > completions/{file}`",
            args.join(" ")
        );
    }
}

/// A Secret Service is usable here (D-Bus session with an unlocked keyring).
fn secret_service() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        && Command::new("secret-tool")
            .args(["store", "--label=crmkit-probe", "crmkit-probe", "1"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(&mut c.stdin.take().unwrap(), b"probe")?;
                c.wait()
            })
            .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_lives_in_the_os_keyring() {
    if !crate::require(
        "a Secret Service (gnome-keyring unlocked under dbus-run-session)",
        secret_service(),
    ) {
        return;
    }
    let s = Server::start().await;
    let mut cli = Cli::new(&s);
    cli.keyring = true;
    cli.login(&s, "keyring@example.com").await;
    assert!(
        !cli.dir.path().join("tokens.json").exists(),
        "the token went to the file, not the keyring"
    );
    let stored = Command::new("secret-tool")
        .args(["lookup", "service", "crmkit", "username", &s.base])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&stored.stdout).trim().to_string();
    assert!(
        token.starts_with("ck_"),
        "not in the Secret Service: {:?}",
        String::from_utf8_lossy(&stored.stderr)
    );
    assert!(cli.ok(&["whoami"]).contains("email=keyring@example.com"));
    cli.ok(&["logout"]);
    let after = Command::new("secret-tool")
        .args(["lookup", "service", "crmkit", "username", &s.base])
        .output()
        .unwrap();
    assert!(
        after.stdout.is_empty(),
        "logout left the token in the keyring"
    );
}

/// Ctrl-C at a prompt ends the CLI at once with exit 130 (SPEC §8), on a
/// real terminal: a pseudo-terminal driven by Python's `pty` module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_at_a_prompt_exits_130() {
    const DRIVE: &str = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
deadline = time.time() + 20
while b"Email: " not in seen and time.time() < deadline:
    if select.select([fd], [], [], 0.5)[0]:
        try:
            seen += os.read(fd, 1024)
        except OSError:
            break
if b"Email: " not in seen:
    print("NO PROMPT", seen)
    sys.exit(3)
time.sleep(0.3)
os.write(fd, b"\x03")
for _ in range(100):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        while select.select([fd], [], [], 0.2)[0]:
            try:
                more = os.read(fd, 1024)
            except OSError:
                break
            if not more:
                break
            seen += more
        print("EXIT", os.waitstatus_to_exitcode(status), seen.decode(errors="replace").replace("\n", " | "))
        sys.exit(0)
    time.sleep(0.1)
print("HUNG")
os.kill(pid, 9)
"#;
    if !python_here() {
        return;
    }
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let out = cli.on_a_terminal(DRIVE, &[], &["login"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("EXIT 130"), "{said}");
    // Nothing was on its way: no warning about a change that may be made.
    assert!(said.contains("interrupted"), "{said}");
    assert!(!said.contains("may have been made"), "{said}");
}

/// Token precedence (SPEC §8): `CRMKIT_TOKEN` beats the stored sign-in,
/// which comes back once the variable is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_env_var_beats_the_stored_token() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "stored@example.com").await;
    let stored = crate::cli_token(&cli.dir);
    let other = s.login("other@example.com").await;
    assert_ne!(stored, other);
    let out = cli
        .cmd(&["whoami"])
        .env("CRMKIT_TOKEN", &other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(who.contains("email=other@example.com"), "{who}");
    assert!(!who.contains("stored@example.com"), "{who}");
    // The variable does not overwrite what is stored.
    assert_eq!(crate::cli_token(&cli.dir), stored);
    // A dead token in the variable: exit 4, and the error says where it came from.
    let out = cli
        .cmd(&["whoami"])
        .env(
            "CRMKIT_TOKEN",
            "ck_notatokenatallnotatokenatallnotatokenatall",
        )
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("came from CRMKIT_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who = cli.ok(&["whoami"]);
    assert!(who.contains("email=stored@example.com"), "{who}");
    assert!(!who.contains("other@example.com"), "{who}");
}

/// A member doing admin work gets exit 5 naming `admin_required` (SPEC §8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_work_by_a_member_exits_5() {
    let s = Server::start().await;
    let a = s.login("boss@example.com").await;
    let (ws, m, _) = s
        .join_as_member(&a, "mate@example.com", "mate-in-boss")
        .await;
    let cli = Cli::new(&s);
    let out = cli
        .cmd(&["workspaces", "invite", &ws, "someone@example.com"])
        .env("CRMKIT_TOKEN", &m)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(code_of(&out), 5, "{err}");
    assert!(err.contains("admin_required"), "{err}");
    // Nothing was invited.
    let members = s.get(&format!("/workspaces/{ws}/members"), &a).await;
    assert!(
        !members.text.contains("someone@example.com"),
        "{}",
        members.text
    );
}

/// A create past a plan cap gets exit 5 naming `plan_limit_reached` (SPEC §8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_past_the_plan_cap_exits_5() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "1")
        .start()
        .await;
    let cli = Cli::new(&s);
    cli.login(&s, "capped@example.com").await;
    let first = cli.ok(&["contacts", "create", "--name", "Only One"]);
    assert!(first.contains("# created"), "{first}");
    let out = cli.run(&["contacts", "create", "--name", "One Too Many"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(code_of(&out), 5, "{err}");
    assert!(err.contains("plan_limit_reached"), "{err}");
    let list = cli.ok(&["contacts", "list"]);
    assert!(!list.contains("One Too Many"), "{list}");
}

/// A reader that stops early is success for the generated outputs too.
#[test]
fn completions_and_man_page_survive_a_closed_pipe() {
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the output is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Replacing a kept sign-in leaves no live token behind: signing in again,
/// as another user, or switching workspaces revokes the token replaced, and
/// revoking the session's own token forgets it here. The sign-in hints keep
/// the profile, errors show what is allowed, and a server URL's trailing /
/// names the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_tokens_are_revoked_and_hints_keep_the_profile() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "first@example.com").await;
    let first = crate::cli_token(&cli.dir);
    // The same profile, another user: the old token dies, with a note.
    let n = s.smtp().mails_to("second@example.com").len();
    cli.run(&["login", "--email", "second@example.com"]);
    let code = s.nth_code("second@example.com", n + 1).await;
    let out = cli.run(&["login", "--email", "second@example.com", "--code", &code]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replaced the sign-in of first@example.com"),
        "{err}"
    );
    assert_eq!(s.get("/whoami", &first).await.status, 401);
    // Switching workspaces revokes the token it replaces.
    let made = cli.ok(&["workspaces", "create", "Elsewhere"]);
    let ws = created_workspace(&made);
    let before = crate::cli_token(&cli.dir);
    cli.ok(&["workspaces", "use", &ws]);
    assert_eq!(s.get("/whoami", &before).await.status, 401);
    let tokens = cli.ok(&["tokens", "list"]);
    assert_eq!(
        tokens.lines().filter(|l| l.starts_with("token/")).count(),
        1,
        "{tokens}"
    );
    // Revoking the session's own token forgets it here.
    let now = crate::cli_token(&cli.dir);
    let id = s.get("/whoami?format=json", &now).await.json()["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cli.run(&["tokens", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli.run(&["whoami"]);
    assert_eq!(code_of(&out), 4);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The finish-with line keeps the profile.
    let n = s.smtp().mails_to("third@example.com").len();
    let out = cli.run(&[
        "--profile",
        "work",
        "login",
        "--email",
        "third@example.com",
        "--request-only",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("crmkit login --profile work --email third@example.com --code CODE"),
        "{err}"
    );
    let code = s.nth_code("third@example.com", n + 1).await;
    // A trailing / is the same server.
    cli.cmd(&[
        "--profile",
        "work",
        "login",
        "--email",
        "third@example.com",
        "--code",
        &code,
    ])
    .env("CRMKIT_URL", format!("{}/", s.base))
    .output()
    .unwrap();
    let who = cli.ok(&["--profile", "work", "whoami"]);
    assert!(who.contains("email=third@example.com"), "{who}");
    // A flag of another kind is refused before sending, naming this kind's.
    let out = cli.run(&[
        "--profile",
        "work",
        "contacts",
        "create",
        "--name",
        "X",
        "--domain",
        "x.com",
    ]);
    assert_eq!(code_of(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--domain is not a field of contacts"), "{err}");
    assert!(
        err.contains("--email") && !err.contains("--industry"),
        "{err}"
    );
    // The server's refusal of an unknown field shows what is allowed.
    let out = cli.run(&[
        "--profile",
        "work",
        "contacts",
        "create",
        "--data",
        r#"{"nmae":"X"}"#,
    ]);
    assert_eq!(code_of(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allowed: name, email"), "{err}");
    // A server URL without its scheme is a usage error.
    let out = cli
        .cmd(&["whoami"])
        .env("CRMKIT_URL", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--clear FIELD` clears a field on update; `--with-token` with nothing on
/// stdin is a usage error, not a server round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_clear_and_an_empty_token_is_refused() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "clear@example.com").await;
    let made = cli.ok(&[
        "contacts",
        "create",
        "--name",
        "Clear Me",
        "--tag",
        "vip",
        "--follow-up",
        "2030-01-01T00:00:00Z",
        "--note",
        "call",
    ]);
    let id = made.split_whitespace().next().unwrap().to_string();
    assert!(made.contains("tags=vip"), "{made}");
    cli.ok(&[
        "contacts",
        "update",
        &id,
        "--clear",
        "follow_up_at",
        "--clear",
        "tags",
        "--clear",
        "follow_up_note",
    ]);
    let now = cli.ok(&["contacts", "get", &id]);
    assert!(now.contains("name=\"Clear Me\""), "{now}");
    for gone in ["tags=", "follow_up_at=", "follow_up_note="] {
        assert!(!now.contains(gone), "{gone}: {now}");
    }
    let out = cli.run(&["login", "--with-token"]);
    assert_eq!(code_of(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stdin was empty"));
}

/// On a terminal, a mistyped sign-in code is asked for again (driven on a
/// pseudo-terminal with Python's `pty`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_code_is_asked_again_on_a_terminal() {
    const DRIVE: &str = r#"
if not wait_for(b"Code emailed"):
    print("NO PROMPT", seen); sys.exit(3)
# Not 6 digits: asked again without a try spent.
os.write(fd, b"123\r")
if not wait_for(b"the code is the 6 digits"):
    print("NOT TOLD", seen); sys.exit(5)
deadline = time.time() + 20
while seen.count(b"Code emailed") < 2 and time.time() < deadline:
    wait_for(b"\x00", 0.2)
if seen.count(b"Code emailed") < 2:
    print("NO SECOND PROMPT", seen); sys.exit(6)
os.write(fd, b"000000\r")
if not wait_for(b"try 2 of 3"):
    print("NOT ASKED AGAIN", seen); sys.exit(4)
type_emailed_code()
wait_for(b"signed in to")
_, status = os.waitpid(pid, 0)
print("EXIT", os.waitstatus_to_exitcode(status), seen.decode(errors="replace").replace("\n", " | "))
"#;
    if !python_here() {
        return;
    }
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let code_file = cli.dir.path().join("code.txt");
    let code_arg = code_file.to_string_lossy().to_string();
    let child = cli
        .on_a_terminal(
            &format!("{PTY_PRELUDE}{DRIVE}"),
            &[&code_arg],
            &["login", "--email", "typo@example.com"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let code = s.nth_code("typo@example.com", 1).await;
    std::fs::write(&code_file, &code).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("EXIT 0"), "{said}");
    assert!(said.contains("that code did not work"), "{said}");
    assert!(cli.ok(&["whoami"]).contains("email=typo@example.com"));
}

/// `--json` covers sign-in too: a script or agent reads what happened from
/// stdout instead of the `#` lines on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_speaks_json_when_asked() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let out = cli.ok(&[
        "--json",
        "login",
        "--email",
        "json@example.com",
        "--request-only",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "code_sent", "{v}");
    assert_eq!(
        v["finish_with"],
        "crmkit login --email json@example.com --code CODE"
    );
    let code = s.nth_code("json@example.com", 1).await;
    let out = cli.ok(&[
        "--json",
        "login",
        "--email",
        "json@example.com",
        "--code",
        &code,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "signed_in", "{v}");
    assert_eq!(v["email"], "json@example.com");
    assert!(
        v["workspace"]
            .as_str()
            .is_some_and(|w| w.starts_with("workspace/w_")),
        "{v}"
    );
}

/// On a terminal, the step-up code of a promotion is asked for like a
/// sign-in code: not 6 digits is asked again without a try spent, a wrong
/// code is asked again, the right one goes through (a pseudo-terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_step_up_code_is_asked_again_on_a_terminal() {
    const DRIVE: &str = r#"
if not wait_for(b"emailed to you. Code: "):
    print("NO PROMPT", seen); sys.exit(3)
os.write(fd, b"12\r")
if not wait_for(b"(try 1 of 3): "):
    print("NOT ASKED AGAIN", seen); sys.exit(4)
os.write(fd, b"000000\r")
if not wait_for(b"(try 2 of 3): "):
    print("WRONG CODE NOT ASKED AGAIN", seen); sys.exit(5)
type_emailed_code()
wait_for(b"role=admin")
_, status = os.waitpid(pid, 0)
print("EXIT", os.waitstatus_to_exitcode(status), seen.decode(errors="replace").replace("\n", " | "))
"#;
    if !python_here() {
        return;
    }
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "boss@example.com").await;
    let admin = crate::cli_token(&cli.dir);
    let (ws, _, _) = s.join_as_member(&admin, "mate@example.com", "mate").await;
    let mailed = s.smtp().mails_to("boss@example.com").len();
    let code_file = cli.dir.path().join("code.txt");
    let code_arg = code_file.to_string_lossy().to_string();
    let child = cli
        .on_a_terminal(
            &format!("{PTY_PRELUDE}{DRIVE}"),
            &[&code_arg],
            &["workspaces", "role", &ws, "mate@example.com", "admin"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let code = s.nth_code("boss@example.com", mailed + 1).await;
    std::fs::write(&code_file, &code).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("EXIT 0"), "{said}");
    assert!(said.contains("the code is the 6 digits"), "{said}");
    assert!(said.contains("that code did not work"), "{said}");
    let members = cli.ok(&["workspaces", "members", &ws]);
    let mate = members
        .lines()
        .find(|l| l.contains("mate@example.com"))
        .unwrap_or_default();
    assert!(mate.contains("role=admin"), "{members}");
}

/// Signed out, `crmkit api` still reaches what needs no sign-in (the
/// manual the CLI's help points to); the rest is exit 4 with the way in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_command_works_signed_out_where_the_server_allows() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let manual = cli.ok(&["api", "GET", "/help"]);
    assert!(manual.contains("## Workspaces, members, plans"), "{manual}");
    assert_eq!(cli.ok(&["api", "GET", "/healthz"]).trim(), "ok");
    let out = cli.run(&["api", "GET", "/contacts"]);
    assert_eq!(code_of(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("auth_required"), "{said}");
}

/// `login --workspace NAME` signs in straight into that workspace (sign-in
/// alone picks the personal one), leaving only that token alive; a name
/// that is none of the user's is exit 3, signed in where sign-in put them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_can_go_straight_to_a_workspace() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "back@example.com").await;
    let ws = created_workspace(&cli.ok(&["workspaces", "create", "Team Blue"]));
    cli.ok(&["logout"]);
    let code = |n| {
        let s = &s;
        async move { s.nth_code("back@example.com", n).await }
    };
    let before = s.smtp().mails_to("back@example.com").len();
    cli.ok(&["login", "--email", "back@example.com", "--request-only"]);
    let c = code(before + 1).await;
    let out = cli.run(&[
        "login",
        "--email",
        "back@example.com",
        "--code",
        &c,
        "--workspace",
        "team blue",
    ]);
    assert_eq!(code_of(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("in workspace/{ws}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cli.ok(&["whoami"])
            .contains(&format!("workspace=workspace/{ws}"))
    );
    // One live CLI token: the one sign-in gave first was revoked.
    let tokens = cli.ok(&["tokens", "list"]);
    assert_eq!(
        tokens.lines().filter(|l| l.starts_with("token/")).count(),
        1,
        "{tokens}"
    );
    // A workspace that is not the user's: exit 3, and the sign-in (whose
    // code is spent) stands in the default workspace, as the error says.
    cli.ok(&["logout"]);
    let before = s.smtp().mails_to("back@example.com").len();
    cli.ok(&["login", "--email", "back@example.com", "--request-only"]);
    let c = code(before + 1).await;
    let out = cli.run(&[
        "login",
        "--email",
        "back@example.com",
        "--code",
        &c,
        "--workspace",
        "Team Red",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(code_of(&out), 3, "{err}");
    assert!(err.contains("you are signed in, in workspace/"), "{err}");
    let who = cli.ok(&["whoami"]);
    assert!(who.contains("email=back@example.com"), "{who}");
    assert!(!who.contains(&ws), "{who}");
    let tokens = cli.ok(&["tokens", "list"]);
    assert_eq!(
        tokens.lines().filter(|l| l.starts_with("token/")).count(),
        1,
        "{tokens}"
    );
}

/// What people type loosely the CLI sends as the API spells it: a
/// currency in capitals, a status and an activity kind in lower case, and
/// an id without the spaces pasted around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_are_sent_as_the_api_spells_them() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "loose@example.com").await;
    let c = cli.ok(&["contacts", "create", "--name", "Loose"]);
    let cid = c.split_whitespace().next().unwrap().to_string();
    let d = cli.ok(&[
        "deals",
        "create",
        "--title",
        "Euro",
        "--amount-cents",
        "500",
        "--currency",
        "eur",
        "--status",
        "Won",
    ]);
    assert!(d.contains("amount=\"5.00 EUR\""), "{d}");
    assert!(d.contains("status=won"), "{d}");
    assert!(
        cli.ok(&["deals", "list", "--status", "WON"])
            .contains("title=Euro")
    );
    let logged = cli.ok(&["contacts", "log", &cid, "--kind", "Call"]);
    assert!(logged.contains("kind=call"), "{logged}");
    assert!(
        cli.ok(&["activities", "--kind", "CALL"])
            .contains("kind=call")
    );
    let padded = format!(" {cid} ");
    assert!(cli.ok(&["contacts", "get", &padded]).contains("name=Loose"));
    // A reference in a body, too (the server drops the spaces).
    let linked = cli.ok(&["deals", "create", "--title", "Linked", "--contact", &padded]);
    assert!(
        linked.contains(&format!("contact={cid}"))
            || linked.contains(&format!("contact=contact/{cid}")),
        "{linked}"
    );
    // --custom text that reads as a number keeps its spaces and its quotes.
    let v = cli.ok(&[
        "contacts", "update", &cid, "--custom", "acct=010", "--custom", "pad= 5",
    ]);
    assert!(v.contains("custom.acct=\"010\""), "{v}");
    assert!(v.contains("custom.pad=\" 5\""), "{v}");
}

/// `crmkit KIND import FILE` creates from a JSON array or JSON lines (or
/// stdin); an email already there updates; a refused record is reported
/// with its place, the rest go in, and the exit code says not all did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_json_arrays_and_lines() {
    use std::io::Write;
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "importer@example.com").await;
    let dir = cli.dir.path().to_path_buf();
    let people = dir.join("people.json");
    std::fs::write(
        &people,
        r#"[{"name":"Ann","email":"ann@x.example"},{"name":"Bob","email":"bob@x.example","stage":"lead"}]"#,
    )
    .unwrap();
    let out = cli.ok(&["contacts", "import", people.to_str().unwrap()]);
    assert!(
        out.contains("name=Ann") && out.contains("name=Bob"),
        "{out}"
    );
    assert!(
        out.contains("# imported 2: 2 created, 0 updated, 0 refused"),
        "{out}"
    );
    let more = dir.join("more.jsonl");
    std::fs::write(
        &more,
        "{\"email\":\"ANN@x.example\",\"title\":\"CEO\"}\n\n{\"name\":\"Cy\",\"colour\":\"red\"}\n{\"name\":\"Di\"}\n",
    )
    .unwrap();
    let out = cli.run(&["contacts", "import", more.to_str().unwrap()]);
    let (said, err) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(code_of(&out), 2, "{err}");
    assert!(err.contains("# record 3: unknown_field"), "{err}");
    assert!(
        said.contains("# imported 2: 1 created, 1 updated, 1 refused"),
        "{said}"
    );
    let all = cli.ok(&["contacts", "list", "--all"]);
    assert!(
        all.contains("name=Di") && all.contains("title=CEO"),
        "{all}"
    );
    assert!(!all.contains("name=Cy"), "{all}");
    assert_eq!(
        all.lines().filter(|l| l.starts_with("contact/")).count(),
        3,
        "{all}"
    );
    // From stdin, as JSON lines of the server's objects.
    let mut child = cli
        .cmd(&["--json", "companies", "import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            br#"[{"name":"Co","domain":"co.example"},{"name":"Co2","domain":"co2.example"}]"#,
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["data"]["domain"], "co2.example");
    assert_eq!(lines[2]["created"], 2, "{:?}", lines[2]);
    // Not JSON: nothing sent, exit 2 naming the line.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"name\":\"Ok\"}\nnot json\n").unwrap();
    let out = cli.run(&["contacts", "import", bad.to_str().unwrap()]);
    assert_eq!(code_of(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2 is not JSON"));
    assert!(!cli.ok(&["contacts", "list", "--all"]).contains("name=Ok"));
    // Nothing in the file: said, exit 2.
    let empty = dir.join("empty.json");
    std::fs::write(&empty, "\n").unwrap();
    let out = cli.run(&["contacts", "import", empty.to_str().unwrap()]);
    assert_eq!(code_of(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no records"));
}

/// An import stops at the first refusal every record would share (a full
/// plan), says how many were not sent, and under --json reports refusals
/// and the counts as JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_stops_at_a_full_plan() {
    let s = Server::builder()
        .env("CRMKIT_LIMIT_CONTACTS", "2")
        .start()
        .await;
    let cli = Cli::new(&s);
    cli.login(&s, "full@example.com").await;
    let file = cli.dir.path().join("five.jsonl");
    let lines: String = (1..=5)
        .map(|i| format!("{{\"name\":\"P{i}\"}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let out = cli.run(&["--json", "contacts", "import", file.to_str().unwrap()]);
    assert_eq!(code_of(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    let said: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(said.len(), 4, "{said:?}");
    assert_eq!(said[2]["record"], 3, "{said:?}");
    assert_eq!(said[2]["error"]["error"], "plan_limit_reached", "{said:?}");
    let last = &said[3];
    assert_eq!(
        (&last["created"], &last["refused"], &last["not_sent"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(2)
        ),
        "{last}"
    );
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON on stderr");
    assert_eq!(err["error"], "import_incomplete", "{err}");
    assert_eq!(err["not_sent"], 2, "{err}");
}

/// `crmkit reminders --all` follows the cursors: every due follow-up,
/// contacts and deals together, soonest first, whatever the page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_page_with_cursors() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    cli.login(&s, "due@example.com").await;
    for (i, kind) in ["contacts", "deals", "contacts"].iter().enumerate() {
        let at = format!("2020-01-0{}T09:00:00Z", i + 1);
        let (field, value) = if *kind == "deals" {
            ("--title", "D")
        } else {
            ("--name", "C")
        };
        cli.ok(&[kind, "create", field, value, "--follow-up", &at]);
    }
    let all = cli.ok(&["reminders", "--limit", "1", "--all"]);
    let lines: Vec<&str> = all.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 3, "{all}");
    assert!(lines[1].starts_with("deal/"), "{all}");
    let one = cli.ok(&["reminders", "--limit", "1"]);
    assert!(one.contains("# next: "), "{one}");
}
