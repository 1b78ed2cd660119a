//! Self-contained writes on SQLite, run by one thread of their own with a
//! connection of its own (see [`submit`]).
//!
//! A create is four statements plus its search entry. Sent through the
//! pool's driver, every call was a round trip to the driver's thread and
//! every statement and row a message back, and between calls the writer's
//! connection sat idle while the request's task took the results and sent the
//! next call: with sustained creates the driver's thread was busy two thirds
//! of the time although writes were always queued (measured). Here one thread
//! takes every queued write, runs them with cached prepared statements in one
//! transaction and commits, and takes the next queue at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::Value as Lite;
use sea_orm::sqlx::error::{DatabaseError, ErrorKind};
use sea_orm::{DbErr, RuntimeErr, Value};
use tokio::sync::oneshot;

use super::{BATCH_FAILED, Db, Deferred, Queued, WRITER_CACHE, Writer, finish_batch, send_order};

/// A write waiting for the writer thread.
pub(super) struct Job {
    parts: Vec<(String, Vec<Value>)>,
    deferred: Vec<Deferred>,
    reply: oneshot::Sender<Result<Vec<Row>, DbErr>>,
}

/// What the writer thread takes its work from.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) jobs: Vec<Job>,
    /// Started by the first submitted write.
    thread: Option<std::thread::JoinHandle<()>>,
    /// The database is closing: the thread ends once the queue is empty.
    closing: bool,
    /// The checkpoint thread, started with the writer thread.
    checkpointer: Option<std::thread::JoinHandle<()>>,
    /// A batch committed since the last checkpoint pass.
    checkpoint_due: bool,
}

/// What the checkpoint thread tells the writer thread.
#[derive(Default)]
pub(super) struct Checkpoints {
    /// The WAL is long and all but its last frames are copied: the writer
    /// copies the rest, so that its next transaction starts the WAL over.
    restart_due: std::sync::atomic::AtomicBool,
}

/// A row a submitted statement returned: its columns by name.
#[derive(Debug, Clone)]
pub struct Row(Vec<(String, Lite)>);

impl Row {
    /// The column's value if it is text.
    pub fn text(&self, column: &str) -> Option<&str> {
        self.0.iter().find_map(|(name, v)| match v {
            Lite::Text(s) if name == column => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Runs a self-contained write (each part exactly one statement) and returns
/// the rows its statements RETURN, once the transaction holding it is
/// committed.
///
/// A write whose statements need no decision between them, and which undoes
/// nothing after they ran (each statement guards itself, like
/// `store::create`'s script), is queued here. The writer thread takes every
/// queued write at once and runs them in one transaction (`BEGIN
/// IMMEDIATE`), each as if in a savepoint of its own (see `run_batch`): a
/// write whose statement fails on a constraint is undone alone and gets the
/// error; any other error fails the whole transaction and every write in it. The
/// others are answered after the one COMMIT (one fsync) that makes them all
/// durable, never before. `deferred` statements run just before that COMMIT
/// if the write's statements all ran (see [`super::WriteTx::defer`]).
///
/// The thread holds the writer slot while it runs, so writes through
/// [`super::write_tx`] and submitted ones take turns in the order they
/// queued; one left open by a [`super::WriteTx`] is committed first.
///
/// SQLite files only: on PostgreSQL writes run concurrently and a
/// self-guarding script is not enough (see `store::create_script`), and an
/// in-memory database cannot be opened by a second connection; those take a
/// [`super::write_tx`] (see [`Db::submits`]).
pub async fn submit(
    db: &Db,
    parts: Vec<(String, Vec<Value>)>,
    deferred: Vec<Deferred>,
) -> Result<Vec<Row>, DbErr> {
    let Some(path) = db.submits() else {
        return Err(DbErr::Custom(
            "submitted writes are for SQLite files; use a write transaction".into(),
        ));
    };
    let writer = &db.writer;
    let (reply, answer) = oneshot::channel();
    {
        let mut q = writer.queue.lock().expect("never poisoned");
        if q.closing {
            return Err(DbErr::Conn(RuntimeErr::Internal(
                "the database is closing".into(),
            )));
        }
        q.jobs.push(Job {
            parts,
            deferred,
            reply,
        });
        // Started by the first write, and again should it ever have ended
        // (a panic): the writes it held learn they were lost.
        if q.thread.as_ref().is_none_or(|t| t.is_finished()) {
            let (w, path) = (writer.clone(), path.to_path_buf());
            let rt = tokio::runtime::Handle::current();
            let thread = std::thread::Builder::new()
                .name("crmkit-writer".into())
                .spawn(move || run(w, path, rt))
                .map_err(|e| DbErr::Custom(format!("cannot start the writer: {e}")))?;
            q.thread = Some(thread);
        }
        if q.checkpointer.as_ref().is_none_or(|t| t.is_finished()) {
            let (w, path) = (writer.clone(), path.to_path_buf());
            let thread = std::thread::Builder::new()
                .name("crmkit-checkpoint".into())
                .spawn(move || checkpoint(w, path))
                .map_err(|e| DbErr::Custom(format!("cannot start the checkpointer: {e}")))?;
            q.checkpointer = Some(thread);
        }
    }
    writer.ready.notify_one();
    answer
        .await
        .map_err(|_| DbErr::Custom("the write batch was lost".into()))?
}

/// Stops the writer thread once it has run every queued write.
pub(super) fn stop(writer: &Writer) {
    let threads = {
        let mut q = writer.queue.lock().expect("never poisoned");
        q.closing = true;
        [q.thread.take(), q.checkpointer.take()]
    };
    writer.ready.notify_all();
    writer.checkpoint_wake.notify_all();
    for t in threads.into_iter().flatten() {
        t.join().ok();
    }
}

/// The writer thread: waits for writes, takes the writer slot, and runs the
/// queue batch after batch until it is empty or a [`super::WriteTx`] waits.
fn run(writer: Arc<Writer>, path: PathBuf, rt: tokio::runtime::Handle) {
    let mut conn: Option<Connection> = None;
    loop {
        {
            let mut q = writer.queue.lock().expect("never poisoned");
            while q.jobs.is_empty() && !q.closing {
                q = writer.ready.wait(q).expect("never poisoned");
            }
            if q.jobs.is_empty() {
                return;
            }
        }
        let mut slot = {
            let _queued = Queued::new(&writer.waiting);
            writer.slot.clone().blocking_lock_owned()
        };
        if slot.batch.is_some() {
            // A write transaction's batch waits for its committer.
            rt.block_on(finish_batch(&mut slot));
        }
        loop {
            let jobs = std::mem::take(&mut writer.queue.lock().expect("never poisoned").jobs);
            if jobs.is_empty() {
                break;
            }
            let c = match conn.take() {
                Some(c) => c,
                None => match open(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        fail_jobs(jobs, &e);
                        continue;
                    }
                },
            };
            if writer.checkpoints.restart_due.swap(false, Ordering::SeqCst) {
                // The frames written since the checkpoint thread's pass: a
                // few batches' worth, where a whole checkpoint here copied
                // every page of the last ~1,000 frames and synced them.
                match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
                    // The checkpoint thread is mid-pass: next batch.
                    Ok(1) => writer.checkpoints.restart_due.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("checkpoint on the writer failed: {e}"),
                }
            }
            writer.next_id.fetch_add(1, Ordering::SeqCst);
            // A connection whose batch failed is not trusted again.
            if run_batch(&c, &writer, jobs) {
                conn = Some(c);
            }
            writer.queue.lock().expect("never poisoned").checkpoint_due = true;
            writer.checkpoint_wake.notify_one();
            if writer.waiting.load(Ordering::SeqCst) > 0 {
                break;
            }
        }
    }
}

fn open(path: &Path) -> Result<Connection, DbErr> {
    // The durability promise (`synchronous` is per connection), and the
    // pool's other settings a write relies on.
    crate::reader::open_file(
        path,
        Duration::from_secs(10),
        &format!(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = memory; {WRITER_CACHE}; PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT};"
        ),
    )
    .map_err(write_err)
}

/// WAL frames past which the writer thread's connection checkpoints on its
/// own, as SQLite does after a COMMIT (at 1,000 frames by default): only a
/// safety net, should the checkpoint thread be gone or readers keep the WAL
/// from starting over ([`checkpoint`]).
const WRITER_AUTOCHECKPOINT: u32 = 4000;

/// How often the checkpoint thread copies the WAL into the database file
/// while batches commit.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// WAL frames past which the writer is asked to start the WAL over (SQLite's
/// own automatic checkpoint runs at 1,000).
const RESTART_FRAMES: i64 = 1000;

/// The checkpoint thread: copies the WAL's frames into the database file
/// (a PASSIVE checkpoint, which never blocks the writer or readers) at most
/// every [`CHECKPOINT_EVERY`] while batches commit.
///
/// SQLite's automatic checkpoint ran on the writer thread after a COMMIT,
/// every ~16 batches, copying ~600 pages and syncing the database file while
/// every queued write waited; the writer's connection now leaves that to
/// this thread (see [`WRITER_AUTOCHECKPOINT`]). A checkpoint copies only frames
/// that no reader still needs, and the WAL starts over only when a writer
/// finds all of it copied as its transaction begins, which a pass running
/// beside a writer that commits every millisecond never achieves. So once
/// the WAL is [`RESTART_FRAMES`] long, the writer copies the few frames
/// written since the pass before its next batch, and that batch starts the
/// WAL over: the file stays a few MiB.
fn checkpoint(writer: Arc<Writer>, path: PathBuf) {
    let conn = match crate::reader::open_file(
        &path,
        Duration::from_secs(10),
        "PRAGMA synchronous = FULL;",
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("checkpoint thread: cannot open the database: {e}");
            return;
        }
    };
    loop {
        {
            let mut q = writer.queue.lock().expect("never poisoned");
            while !q.checkpoint_due && !q.closing {
                q = writer.checkpoint_wake.wait(q).expect("never poisoned");
            }
            if q.closing {
                return;
            }
            q.checkpoint_due = false;
        }
        // The pragma's row: busy, frames in the WAL, frames copied.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            Ok(frames) if frames >= RESTART_FRAMES => {
                writer.checkpoints.restart_due.store(true, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("checkpoint failed: {e}"),
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

fn fail_jobs(jobs: Vec<Job>, why: &dyn std::fmt::Display) {
    for job in jobs {
        job.reply.send(Err(DbErr::Custom(why.to_string()))).ok();
    }
}

/// Writes one transaction takes at most: their answers wait for its COMMIT.
const BATCH_MAX: usize = 256;

/// Runs `jobs`, and the writes queued while they ran, in one transaction and
/// answers each; false when the transaction failed as a whole.
///
/// The transaction first runs without a savepoint per write: a savepoint
/// makes SQLite copy every page a write touches into the sub-journal, ~5% of
/// a create (measured). Should a write then fail on a constraint, which
/// only its savepoint could undo alone, the transaction is rolled back and
/// runs again with a savepoint per write, so the outcomes are the same.
fn run_batch(conn: &Connection, writer: &Writer, mut jobs: Vec<Job>) -> bool {
    let (ran, end) = match attempt(conn, writer, &mut jobs, false) {
        Attempt::Constraint => attempt(conn, writer, &mut jobs, true),
        done => done,
    }
    .ended();
    if let Err(e) = &end {
        tracing::warn!("write batch rolled back: {e}");
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK").ok();
        }
    }
    let mut ran = ran.into_iter();
    for job in jobs {
        let outcome = ran.next().unwrap_or(Err(Failed::Skipped));
        let answer = match (outcome, &end) {
            (Err(Failed::Alone(e)), _) => Err(e),
            (Err(Failed::Batch(e)), _) => Err(DbErr::Custom(e.to_string())),
            (Ok(rows), Ok(())) => Ok(rows),
            (Ok(_), Err(e)) => Err(DbErr::Custom(format!(
                "commit failed: {BATCH_FAILED} ({e})"
            ))),
            (Err(Failed::Skipped), Err(e)) => Err(DbErr::Custom(format!("{BATCH_FAILED} ({e})"))),
            (Err(Failed::Skipped), Ok(())) => Err(DbErr::Custom(BATCH_FAILED.into())),
        };
        job.reply.send(answer).ok();
    }
    end.is_ok()
}

/// Each write's outcome in a run of the transaction, in the order of `jobs`.
type Outcomes = Vec<Result<Vec<Row>, Failed>>;

/// How one run of a batch's transaction went.
enum Attempt {
    /// Ran to its COMMIT, or failed as a whole: each write's outcome (in the
    /// order of `jobs`), and the transaction's.
    Ended(Outcomes, Result<(), DbErr>),
    /// A write failed on a constraint without a savepoint of its own; the
    /// transaction was rolled back.
    Constraint,
}

impl Attempt {
    fn ended(self) -> (Outcomes, Result<(), DbErr>) {
        match self {
            Attempt::Ended(ran, end) => (ran, end),
            // Only a run without savepoints stops on a constraint.
            Attempt::Constraint => (Vec::new(), Err(DbErr::Custom(BATCH_FAILED.into()))),
        }
    }
}

/// One run of the transaction over `jobs`, taking in the writes queued while
/// it runs (they join before the COMMIT, which costs the same for one write
/// or many).
fn attempt(conn: &Connection, writer: &Writer, jobs: &mut Vec<Job>, savepoints: bool) -> Attempt {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE", &[]) {
        return Attempt::Ended(Vec::new(), Err(e));
    }
    // The writes after one that failed the transaction are left out of
    // `ran`; `run_batch` answers them as skipped.
    let mut ran: Outcomes = Vec::with_capacity(jobs.len());
    let mut broken: Option<DbErr> = None;
    while broken.is_none() {
        if ran.len() == jobs.len() && jobs.len() < BATCH_MAX {
            let mut q = writer.queue.lock().expect("never poisoned");
            let n = q.jobs.len().min(BATCH_MAX - jobs.len());
            jobs.extend(q.jobs.drain(..n));
        }
        let Some(job) = jobs.get(ran.len()) else {
            break;
        };
        match run_job(conn, &job.parts, savepoints) {
            Err(Failed::Alone(_)) if !savepoints => {
                if !conn.is_autocommit() {
                    conn.execute_batch("ROLLBACK").ok();
                }
                return Attempt::Constraint;
            }
            Err(Failed::Batch(e)) => {
                broken = Some(DbErr::Custom(e.to_string()));
                ran.push(Err(Failed::Batch(e)));
            }
            outcome => ran.push(outcome),
        }
    }
    if broken.is_none() {
        let mut deferred = Vec::new();
        for (job, outcome) in jobs.iter_mut().zip(&ran) {
            if outcome.is_ok() {
                deferred.append(&mut job.deferred);
            }
        }
        for (sql, values) in send_order(deferred) {
            if let Err(e) = exec(conn, &sql, &values) {
                broken = Some(e);
                break;
            }
        }
    }
    if broken.is_none()
        && let Err(e) = exec(conn, "COMMIT", &[])
    {
        broken = Some(e);
    }
    Attempt::Ended(ran, broken.map_or(Ok(()), Err))
}

/// How a write failed: alone (a constraint; its savepoint is rolled back and
/// the transaction goes on), with its whole transaction, or not run because
/// an earlier write failed the transaction.
enum Failed {
    Alone(DbErr),
    Batch(DbErr),
    Skipped,
}

/// Runs one write's statements, in a savepoint of its own if `savepoint`.
/// Without one, a constraint failure is still `Alone`, but the write's
/// earlier statements stand: the caller must roll the transaction back.
fn run_job(
    conn: &Connection,
    parts: &[(String, Vec<Value>)],
    savepoint: bool,
) -> Result<Vec<Row>, Failed> {
    if savepoint {
        exec(conn, "SAVEPOINT crmkit_j", &[]).map_err(Failed::Batch)?;
    }
    let mut rows = Vec::new();
    for (sql, values) in parts {
        if let Err(e) = query(conn, sql, values, &mut rows) {
            let constraint =
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation);
            let alone = constraint
                && !conn.is_autocommit()
                && (!savepoint
                    || conn
                        .execute_batch("ROLLBACK TO crmkit_j; RELEASE crmkit_j")
                        .is_ok());
            let e = write_err(e);
            return Err(if alone {
                Failed::Alone(e)
            } else {
                Failed::Batch(e)
            });
        }
    }
    if savepoint {
        exec(conn, "RELEASE crmkit_j", &[]).map_err(Failed::Batch)?;
    }
    Ok(rows)
}

/// Runs one statement (exactly one: an empty part or two statements in one
/// are refused) and appends the rows it returns.
fn query(
    conn: &Connection,
    sql: &str,
    values: &[Value],
    rows: &mut Vec<Row>,
) -> Result<(), rusqlite::Error> {
    if sql.trim().is_empty() {
        return Err(rusqlite::Error::InvalidQuery);
    }
    let mut st = conn.prepare_cached(sql)?;
    let params = bind(values)?;
    let names: Vec<String> = st.column_names().iter().map(|n| n.to_string()).collect();
    let mut out = st.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = out.next()? {
        let mut cols = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            cols.push((name.clone(), row.get::<_, Lite>(i)?));
        }
        rows.push(Row(cols));
    }
    Ok(())
}

fn exec(conn: &Connection, sql: &str, values: &[Value]) -> Result<(), DbErr> {
    query(conn, sql, values, &mut Vec::new()).map_err(write_err)
}

fn bind(values: &[Value]) -> Result<Vec<Lite>, rusqlite::Error> {
    values
        .iter()
        .map(|v| {
            crate::reader::lite(v).map_err(|e| {
                rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(
                    e.to_string(),
                )))
            })
        })
        .collect()
}

/// SQLite's error as the pool's driver reports it: a database error with
/// SQLite's extended code, so that `db::is_unique_violation` and the
/// constraint checks read it the same; a busy database is unavailable (503
/// with Retry-After), as for the pool.
fn write_err(e: rusqlite::Error) -> DbErr {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked};
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            if matches!(f.code, DatabaseBusy | DatabaseLocked | CannotOpen) {
                return DbErr::Conn(RuntimeErr::Internal(format!("sqlite write: {e}")));
            }
            let err = WriteError {
                code: f.extended_code,
                message: msg.clone().unwrap_or_else(|| f.to_string()),
            };
            DbErr::Exec(RuntimeErr::SqlxError(Arc::new(
                sea_orm::sqlx::Error::Database(Box::new(err)),
            )))
        }
        _ => DbErr::Custom(format!("sqlite write: {e}")),
    }
}

/// A SQLite error from the writer thread: its extended result code and
/// message.
#[derive(Debug)]
struct WriteError {
    code: i32,
    message: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WriteError {}

impl DatabaseError for WriteError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> ErrorKind {
        match self.code {
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
