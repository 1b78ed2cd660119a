//! The `crmkit` executable: argument parsing and dispatch only.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: list pages allocate per row and per
/// field, and glibc's arenas spent a fifth of a list request's CPU in
/// malloc/free and their locks (measured with perf on the 100k benchmark).
/// Only Rust's allocations: mimalloc's `override` feature (which would also
/// serve SQLite's mallocs, ~10% of a search request) crashes the process when
/// a library preloaded with LD_PRELOAD allocates before mimalloc is ready
/// (libfaketime, which the test suite uses, does).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "crmkit",
    version,
    about = "An agent-first CRM: `crmkit serve` runs the API; every other command is its client",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage or invalid request, 3 not found, 4 authentication needed, \
                  5 forbidden, 6 needs a human (confirmation or step-up code), 130 interrupted.\n\n\
                  Environment: CRMKIT_TOKEN (a token to use instead of the stored one), CRMKIT_KEYRING=off \
                  (keep the token in a file, mode 0600, not the OS keyring), CRMKIT_CONFIG_DIR (where that \
                  file lives), NO_COLOR."
)]
struct Cli {
    #[command(flatten)]
    global: crmkit_cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Client(crmkit_cli::Command),
    /// Print shell completions (bash, zsh, fish, powershell, elvish)
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff; `crmkit man | man -l -`)
    Man,
    /// Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)
    #[cfg(feature = "server")]
    Serve(crmkit_server::config::ServeArgs),
    /// Apply pending database migrations (serve also does this at start)
    #[cfg(feature = "server")]
    Migrate {
        /// Only print the migrations that would run
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: crmkit_server::config::ServeArgs,
    },
    /// Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)
    #[cfg(feature = "server")]
    MigrateData {
        /// Source database URL
        #[arg(long, value_name = "URL")]
        from: String,
        /// Target database URL (must be empty)
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Operator commands that act on the database directly
    #[cfg(feature = "server")]
    #[command(subcommand)]
    Admin(Admin),
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
enum Admin {
    /// Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan
    SetPlan {
        /// Workspace id or handle, or a user's email
        target: String,
        /// Plan name from the config file ([plans.NAME]) or `default`
        plan: String,
        #[command(flatten)]
        db: crmkit_server::config::ServeArgs,
    },
}

/// The command tree, with the record commands shaped per kind.
fn command() -> clap::Command {
    crmkit_cli::per_kind(Cli::command())
}

fn main() -> ExitCode {
    // `crmkit --version` alone is answered before clap builds the whole
    // command tree (every subcommand and argument), with the same line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(3).collect();
    if let [_, flag] = args.as_slice()
        && (flag == "--version" || flag == "-V")
    {
        println!("crmkit {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command(), "crmkit", &mut out);
            print_all(&out)
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(command()).render(&mut out) {
                Ok(()) => print_all(&out),
                Err(e) => fail(1, &e),
            }
        }
        Command::Client(cmd) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            let json_errors = cli.global.json;
            let run = async {
                tokio::select! {
                    r = crmkit_cli::run(cli.global, cmd) => r,
                    _ = tokio::signal::ctrl_c() => Err(crmkit_cli::CliError::new(
                        130,
                        if crmkit_cli::client::write_in_flight() {
                            "interrupted while a change was on its way: it may have been made; check (e.g. list or get) before running it again"
                        } else {
                            "interrupted"
                        },
                    )),
                }
            };
            let result = rt.block_on(run);
            // A prompt's read may still be blocked on the terminal: exit
            // without waiting for it.
            rt.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.message.is_empty() => ExitCode::from(e.code),
                Err(e) => {
                    if e.code == 130 {
                        // Off the prompt's line.
                        eprintln!();
                    }
                    if json_errors {
                        // One JSON object on stderr, as the server sent it.
                        eprintln!("{}", e.to_json());
                        return ExitCode::from(e.code);
                    }
                    fail(e.code, &e)
                }
            }
        }
        #[cfg(feature = "server")]
        Command::Serve(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            match rt.block_on(crmkit_server::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.exit_code(), &e),
            }
        }
        #[cfg(feature = "server")]
        Command::Migrate { dry_run, db } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            match rt.block_on(crmkit_server::migrate(db, dry_run)) {
                Ok(pending) => {
                    if pending.is_empty() {
                        println!("# no pending migrations");
                    }
                    for name in &pending {
                        println!("{} {name}", if dry_run { "would apply" } else { "applied" });
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.exit_code(), &e),
            }
        }
        #[cfg(feature = "server")]
        Command::MigrateData { from, to } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            match rt.block_on(crmkit_server::migrate_data(&from, &to)) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    println!("# copied and verified");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.exit_code(), &e),
            }
        }
        #[cfg(feature = "server")]
        Command::Admin(Admin::SetPlan { target, plan, db }) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(1, &e),
            };
            match rt.block_on(crmkit_server::set_plan(db, target, plan)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.exit_code(), &e),
            }
        }
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`)
/// is success, as for every other command.
fn print_all(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
}

fn fail(code: u8, err: &dyn std::fmt::Display) -> ExitCode {
    let text = err.to_string();
    if text.starts_with("error: ") {
        eprintln!("crmkit: {text}");
    } else {
        eprintln!("crmkit: error: {text}");
    }
    ExitCode::from(code)
}
