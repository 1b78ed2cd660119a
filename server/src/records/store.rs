//! SQL for records. Statements are written once with `?` placeholders (see
//! [`crate::db::stmt`]) and run on SQLite and PostgreSQL alike; every value is
//! bound, and every column name comes from the static kind definitions.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Value};

use super::kinds::{FType, FieldDef, KindDef};
use super::model::{Record, Val};
use crate::db::{Db, Deferred, Ts, WriteTx, stmt};
use crate::error::{AppError, AppResult};
use crate::reader::Cells;
use crate::wire::handle::Kind;

/// A SQL fragment with its bound values.
#[derive(Default, Debug)]
pub struct Sql {
    pub text: String,
    pub vals: Vec<Value>,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_string(),
            vals: Vec::new(),
        }
    }
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    pub fn bind(&mut self, v: impl Into<Value>) -> &mut Self {
        self.text.push('?');
        self.vals.push(v.into());
        self
    }
    pub fn stmt(self, backend: DatabaseBackend) -> sea_orm::Statement {
        stmt(backend, &self.text, self.vals)
    }
}

/// Tags are stored as `,a,b,` so "has tag" is a LIKE on `,tag,`.
pub fn tags_to_db(tags: &[String]) -> String {
    format!(",{},", tags.join(","))
}

fn tags_from_db(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The bound value of a field, with a typed NULL (PostgreSQL checks types).
pub fn db_value(f: &FieldDef, v: &Val) -> Value {
    match (f.ty, v) {
        (FType::Int, Val::Int(i)) => Value::BigInt(Some(*i)),
        (FType::Int, _) => Value::BigInt(None),
        (FType::Time, Val::Time(t)) => (*t).into(),
        (FType::Time, _) => Option::<Ts>::None.into(),
        (FType::Tags, Val::Tags(t)) => Value::String(Some(tags_to_db(t))),
        (FType::Custom, Val::Json(m)) => {
            Value::Json(Some(Box::new(serde_json::Value::Object(m.clone()))))
        }
        (FType::Custom, _) => Value::Json(None),
        (_, Val::Text(s)) => Value::String(Some(s.clone())),
        _ => Value::String(None),
    }
}

/// The lowercase key the unique index of an upsert field uses.
pub fn unique_key(def: &KindDef, fields: &BTreeMap<&'static str, Val>) -> Option<String> {
    match (def.upsert_key, def.upsert_key.and_then(|k| fields.get(k))) {
        (Some("email"), Some(Val::Text(e))) => Some(e.to_lowercase()),
        (Some(_), Some(Val::Text(d))) => Some(d.clone()),
        _ => None,
    }
}

/// The column holding the unique key (`email_key` for contacts, `domain` for companies).
pub fn unique_column(def: &KindDef) -> Option<&'static str> {
    match def.upsert_key {
        Some("email") => Some("email_key"),
        other => other,
    }
}

/// Reads a record from a row that starts with [`columns`]: by position, not
/// by name (a name lookup per column per row showed in profiles of long pages).
pub fn from_row(def: &KindDef, row: &dyn Cells) -> AppResult<Record> {
    let mut fields = BTreeMap::new();
    for (i, f) in def.fields.iter().enumerate() {
        let at = i + 1;
        let v = match f.ty {
            FType::Int => row.int(at)?.map(Val::Int),
            FType::Time => row.ts(at)?.map(Val::Time),
            FType::Tags => row.text(at)?.map(|s| Val::Tags(tags_from_db(&s))),
            FType::Custom => match row.json(at)? {
                Some(serde_json::Value::Object(m)) if !m.is_empty() => Some(Val::Json(m)),
                _ => None,
            },
            _ => row.text(at)?.map(Val::Text),
        };
        if let Some(v) = v {
            fields.insert(f.name, v);
        }
    }
    let n = def.fields.len();
    let id = row.text(0)?;
    let created_at = row.ts(n + 1)?;
    let updated_at = row.ts(n + 2)?;
    match (id, created_at, updated_at) {
        (Some(id), Some(created_at), Some(updated_at)) => Ok(Record {
            id,
            fields,
            created_at,
            updated_at,
        }),
        _ => Err(
            sea_orm::DbErr::Type(format!("a {} row without id or times", def.kind.name())).into(),
        ),
    }
}

/// The columns every record query selects first, in this order.
pub fn columns(def: &KindDef) -> String {
    let mut cols: Vec<&str> = vec!["id"];
    cols.extend(def.fields.iter().map(|f| f.name));
    cols.extend(["created_at", "updated_at"]);
    cols.join(", ")
}

/// `SELECT` [`columns`] of one record by workspace and id.
fn by_id_sql(def: &KindDef) -> String {
    format!(
        "SELECT {} FROM {} WHERE workspace_id = ? AND id = ?",
        columns(def),
        def.plural
    )
}

/// A record by id inside a transaction; `for_update` locks its row on
/// PostgreSQL (SQLite's single writer already excludes others).
pub async fn get<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    id: &str,
    for_update: bool,
) -> AppResult<Option<Record>> {
    let backend = db.get_database_backend();
    let mut sql = by_id_sql(def);
    if for_update && backend == DatabaseBackend::Postgres {
        sql.push_str(" FOR UPDATE");
    }
    let row = db
        .query_one_raw(stmt(backend, &sql, vec![ws.into(), id.into()]))
        .await?;
    row.map(|r| from_row(def, &r)).transpose()
}

/// A record by id outside any transaction: the read path of `GET`.
pub async fn read(db: &Db, def: &'static KindDef, ws: &str, id: &str) -> AppResult<Option<Record>> {
    let mut rows = db
        .read(&by_id_sql(def), vec![ws.into(), id.into()], move |r| {
            from_row(def, r)
        })
        .await?;
    Ok(rows.pop())
}

/// The record holding an upsert key value, if any.
pub async fn find_by_key<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    key: &str,
    for_update: bool,
) -> AppResult<Option<Record>> {
    let Some(col) = unique_column(def) else {
        return Ok(None);
    };
    let backend = db.get_database_backend();
    let lock = if for_update && backend == DatabaseBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE workspace_id = ? AND {col} = ?{lock}",
        columns(def),
        def.plural
    );
    let row = db
        .query_one_raw(stmt(backend, &sql, vec![ws.into(), key.into()]))
        .await?;
    row.map(|r| from_row(def, &r)).transpose()
}

/// How a create ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// The row and everything that goes with it were written.
    Inserted,
    /// The upsert key is taken by another record: nothing was written.
    KeyTaken,
}

/// The statements that create a record and everything that goes with it:
/// its plan slot, its audit entry (`audit` makes its `INSERT … SELECT`,
/// without a WHERE, for the record as finally inserted: a search-key
/// collision changes its id) and, on SQLite, its search entry (deferred, see
/// [`WriteTx::defer`]).
///
/// Each statement guards itself:
/// - on SQLite the first returns a `full` row if the workspace's plan has no
///   room (the configured plans' caps are a CASE over `workspaces.plan`) and
///   the upsert key, if any, is free (a taken key is an update, not a
///   create), and the row's INSERT runs only with room, so on SQLite, where
///   the script runs alone, it never needs undoing;
/// - with an upsert key a taken key writes nothing (`ON CONFLICT DO
///   NOTHING`), so racing creates of one email make exactly one row; the
///   INSERT returns a `row` row if it wrote;
/// - every statement after it acts only if it made the row (`EXISTS` on its
///   fresh id), as does the search entry; the plan slot's UPDATE takes a slot
///   only with room and returns a `slot` row. On PostgreSQL, under read
///   committed, it waits for the workspace row's lock and re-checks, and a
///   `row` without a `slot` must be rolled back by the caller.
struct CreateScript {
    parts: Vec<(String, Vec<Value>)>,
    deferred: Vec<crate::db::Deferred>,
}

fn create_script(
    backend: DatabaseBackend,
    def: &KindDef,
    ws: &str,
    r: &Record,
    settings: &crate::config::Settings,
    audit: &impl Fn(&Record) -> Sql,
) -> CreateScript {
    let sqlite = backend == DatabaseBackend::Sqlite;
    let made = format!(
        "EXISTS (SELECT 1 FROM {} WHERE workspace_id = ? AND id = ?)",
        def.plural
    );
    let made_vals = || -> Vec<Value> { vec![ws.into(), r.id.clone().into()] };
    let counter = def.counter;
    // `{counter} < cap`, the cap by plan.
    let mut room = format!("{counter} < CASE plan");
    let mut room_vals: Vec<Value> = Vec::new();
    for (name, plan) in &settings.plans {
        room.push_str(" WHEN ? THEN ?");
        room_vals.push(name.clone().into());
        room_vals.push((def.cap)(plan).into());
    }
    room.push_str(" ELSE ? END");
    room_vals.push((def.cap)(&settings.plan("default")).into());

    let upsert_key = unique_key(def, &r.fields);
    let mut parts = Vec::new();
    // SQLite: the room is checked before the INSERT, which runs only with
    // room, so the script never needs undoing. Not on PostgreSQL: there
    // another create may commit between two statements, and an INSERT that
    // found no room would pass for a taken key.
    let mut room_first = String::new();
    if sqlite {
        let mut vals: Vec<Value> = vec![ws.into()];
        vals.extend(room_vals.iter().cloned());
        // A taken upsert key makes this an update, which needs no room.
        let mut key_free = String::new();
        if let Some(col) = unique_column(def) {
            key_free = format!(
                " AND NOT EXISTS (SELECT 1 FROM {} WHERE workspace_id = ? AND {col} = ?)",
                def.plural
            );
            vals.extend([ws.into(), upsert_key.clone().into()]);
        }
        parts.push((
            format!(
                "SELECT 'full' AS step FROM workspaces WHERE id = ? AND NOT ({room}){key_free}"
            ),
            vals,
        ));
        room_first = format!(" WHERE EXISTS (SELECT 1 FROM workspaces WHERE id = ? AND {room})");
    }

    let mut cols = vec!["workspace_id", "id"];
    let mut vals: Vec<Value> = vec![ws.into(), r.id.clone().into()];
    for f in def.fields {
        cols.push(f.name);
        vals.push(db_value(f, r.get(f.name)));
    }
    if def.upsert_key == Some("email") {
        cols.push("email_key");
        vals.push(upsert_key.into());
    }
    cols.extend(["created_at", "updated_at"]);
    vals.extend([r.created_at.into(), r.updated_at.into()]);
    let key = search_key(r);
    if sqlite {
        cols.push("search_key");
        vals.push(key.into());
    }
    if sqlite {
        vals.push(ws.into());
        vals.extend(room_vals.iter().cloned());
    }
    let conflict = match unique_column(def) {
        Some(col) => format!(" ON CONFLICT (workspace_id, {col}) DO NOTHING"),
        None => String::new(),
    };
    parts.push((
        format!(
            "INSERT INTO {} ({}) SELECT {}{room_first}{conflict} RETURNING 'row' AS step",
            def.plural,
            cols.join(", "),
            vec!["?"; cols.len()].join(", ")
        ),
        vals,
    ));

    // The room, on the row this UPDATE locks: on PostgreSQL concurrent
    // creates may all have inserted, and the ones that find none here are
    // rolled back by the caller.
    let mut vals: Vec<Value> = vec![ws.into()];
    vals.extend(made_vals());
    vals.extend(room_vals);
    parts.push((
        format!(
            "UPDATE workspaces SET {counter} = {counter} + 1 WHERE id = ? AND {made} AND {room} RETURNING 'slot' AS step"
        ),
        vals,
    ));

    let entry = audit(r);
    let mut vals = entry.vals;
    vals.extend(made_vals());
    parts.push((format!("{} WHERE {made}", entry.text), vals));

    // PostgreSQL needs no search entry: its trigram index is on an
    // expression of the row.
    let deferred = if sqlite {
        vec![search_set(def, key, &r.fields)]
    } else {
        Vec::new()
    };
    CreateScript { parts, deferred }
}

/// What a create script's rows say (their `step` column): `None` when the
/// plan has no room (and whatever the script wrote must be rolled back).
fn create_outcome(steps: &[String]) -> Option<Created> {
    let has = |step: &str| steps.iter().any(|s| s == step);
    if has("row") && has("slot") {
        Some(Created::Inserted)
    } else if has("row") || has("full") {
        None
    } else {
        Some(Created::KeyTaken)
    }
}

/// On SQLite the search key must be unique in the table; a collision (same
/// microsecond, same top 8 bits of the id) takes another id.
fn search_key_taken(backend: DatabaseBackend, e: &sea_orm::DbErr) -> bool {
    backend == DatabaseBackend::Sqlite && e.to_string().contains(".search_key")
}

/// The `step` column of a script's rows.
fn steps_of(rows: Result<Vec<sea_orm::QueryResult>, DbErr>) -> Result<Vec<String>, DbErr> {
    rows?
        .iter()
        .map(|row| row.try_get::<String>("", "step"))
        .collect()
}

/// Where a create's script runs ([`create`]).
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// In the caller's transaction, as one script ([`crate::db::script`]:
    /// on SQLite a single call to the database); a create refused by the
    /// cap may have written its row and is rolled back with the transaction.
    Tx(&'a WriteTx),
    /// As a write of its own on a SQLite file, answered once durable: the
    /// script needs no decision between its statements there, so the writer
    /// thread runs it with the other queued writes in one transaction
    /// ([`crate::db::submit`]). `KeyTaken` wrote nothing; the caller merges
    /// into the record holding the key in a transaction. Not on PostgreSQL
    /// (see `Tx`).
    Now(&'a Db),
}

/// Creates a record and everything that goes with it (see
/// [`create_script`]), and on a search key collision tries again with
/// another id.
pub async fn create(
    via: Via<'_>,
    def: &KindDef,
    ws: &str,
    r: &mut Record,
    settings: &crate::config::Settings,
    audit: impl Fn(&Record) -> Sql,
) -> AppResult<Created> {
    let backend = match via {
        Via::Tx(tx) => tx.get_database_backend(),
        Via::Now(db) => db.get_database_backend(),
    };
    for _ in 0..8 {
        let CreateScript { parts, deferred } = create_script(backend, def, ws, r, settings, &audit);
        // A submitted write takes its deferred statements with it; in a
        // transaction they are held back once the create is known to have
        // inserted.
        let (ran, held) = match via {
            Via::Tx(tx) => (steps_of(crate::db::script(tx, parts).await), deferred),
            Via::Now(db) => (
                crate::db::submit(db, parts, deferred).await.map(|rows| {
                    rows.iter()
                        .filter_map(|row| row.text("step").map(str::to_string))
                        .collect()
                }),
                Vec::new(),
            ),
        };
        let steps = match ran {
            Err(e) if search_key_taken(backend, &e) => {
                r.id = crate::secrets::new_id(def.kind);
                continue;
            }
            steps => steps?,
        };
        let Some(created) = create_outcome(&steps) else {
            return Err(match via {
                Via::Tx(tx) => cap_reached(tx, def, ws, settings).await,
                Via::Now(db) => cap_reached(db, def, ws, settings).await,
            });
        };
        if let Via::Tx(tx) = via
            && created == Created::Inserted
        {
            for d in held {
                tx.defer(d).await?;
            }
        }
        return Ok(created);
    }
    Err(AppError::internal("no free search key after 8 ids"))
}

/// Writes every field of `fields` (the whole new state) to the record.
pub async fn update(
    db: &WriteTx,
    def: &KindDef,
    ws: &str,
    id: &str,
    fields: &BTreeMap<&'static str, Val>,
    at: Ts,
) -> AppResult<()> {
    let mut sets = Vec::new();
    let mut vals: Vec<Value> = Vec::new();
    for f in def.fields {
        sets.push(format!("{} = ?", f.name));
        vals.push(db_value(f, fields.get(f.name).unwrap_or(&Val::Null)));
    }
    if def.upsert_key == Some("email") {
        sets.push("email_key = ?".into());
        vals.push(unique_key(def, fields).into());
    }
    sets.push("updated_at = ?".into());
    vals.push(at.into());
    vals.extend([ws.into(), id.into()]);
    let backend = db.get_database_backend();
    let mut sql = format!(
        "UPDATE {} SET {} WHERE workspace_id = ? AND id = ?",
        def.plural,
        sets.join(", ")
    );
    if backend != DatabaseBackend::Sqlite {
        db.execute_raw(stmt(backend, &sql, vals)).await?;
        return Ok(());
    }
    sql.push_str(" RETURNING search_key");
    if let Some(row) = db.query_one_raw(stmt(backend, &sql, vals)).await? {
        db.defer(search_set(def, row.try_get("", "search_key")?, fields))
            .await?;
    }
    Ok(())
}

pub async fn delete(db: &WriteTx, def: &KindDef, ws: &str, id: &str) -> AppResult<bool> {
    let backend = db.get_database_backend();
    let mut sql = format!(
        "DELETE FROM {} WHERE workspace_id = ? AND id = ?",
        def.plural
    );
    let vals = vec![ws.into(), id.into()];
    if backend != DatabaseBackend::Sqlite {
        let res = db.execute_raw(stmt(backend, &sql, vals)).await?;
        return Ok(res.rows_affected() == 1);
    }
    sql.push_str(" RETURNING search_key");
    let Some(row) = db.query_one_raw(stmt(backend, &sql, vals)).await? else {
        return Ok(false);
    };
    let key: i64 = row.try_get("", "search_key")?;
    db.defer(Deferred::Row(
        format!(
            "DELETE FROM {}_fts WHERE rowid IN (SELECT j.value FROM json_each(?) AS j)",
            def.plural
        ),
        key.into(),
    ))
    .await?;
    Ok(true)
}

/// Whether `id` names a record of `kind` in workspace `ws`.
pub async fn exists<C: ConnectionTrait>(db: &C, kind: Kind, ws: &str, id: &str) -> AppResult<bool> {
    let table = match kind {
        Kind::Contact => "contacts",
        Kind::Company => "companies",
        Kind::Deal => "deals",
        Kind::Activity => "activities",
        _ => return Ok(false),
    };
    let sql = format!("SELECT 1 AS one FROM {table} WHERE workspace_id = ? AND id = ?");
    Ok(db
        .query_one_raw(stmt(
            db.get_database_backend(),
            &sql,
            vec![ws.into(), id.into()],
        ))
        .await?
        .is_some())
}

/// The error for a create refused by its plan's cap, naming the plan.
async fn cap_reached<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    settings: &crate::config::Settings,
) -> AppError {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT plan FROM workspaces WHERE id = ?",
            vec![ws.into()],
        ))
        .await;
    let plan = match row {
        Ok(Some(row)) => match row.try_get::<String>("", "plan") {
            Ok(p) => p,
            Err(e) => return e.into(),
        },
        Ok(None) => return AppError::invalid_token(),
        Err(e) => return e.into(),
    };
    let cap = (def.cap)(&settings.plan(&plan));
    plan_limit(def.plural, cap, cap, &plan)
}

pub async fn free_slot<C: ConnectionTrait>(db: &C, counter: &str, ws: &str) -> AppResult<()> {
    let sql =
        format!("UPDATE workspaces SET {counter} = {counter} - 1 WHERE id = ? AND {counter} > 0");
    db.execute_raw(stmt(db.get_database_backend(), &sql, vec![ws.into()]))
        .await?;
    Ok(())
}

pub fn plan_limit(kind_plural: &str, used: i64, cap: i64, plan: &str) -> AppError {
    AppError::new(
        "plan_limit_reached",
        axum::http::StatusCode::FORBIDDEN,
        if kind_plural == "workspaces" {
            format!("you have {used} of {cap} workspaces (the ones you created that still exist)")
        } else {
            format!("this workspace has {used} of {cap} {kind_plural}")
        },
        match kind_plural {
            "workspaces" => format!("do not retry; tell the user the workspaces limit of their {plan:?} plan is reached: deleting a workspace they created frees a slot"),
            "members" => format!("do not retry; tell the user the members limit of the {plan:?} plan is reached (pending invites count): removing a member or withdrawing an invite frees a seat"),
            _ => format!("do not retry; tell the user the {kind_plural} limit of the {plan:?} plan is reached (GET /whoami with a token for that workspace shows usage)"),
        },
    )
    .with("limit", kind_plural)
    .with("cap", cap)
}

/// The FTS5 rowid of a record on SQLite, also stored as its `search_key`:
/// creation time and id, so keys sort like `(created_at, id)` (see migration
/// `m20261129_000006_ordered_search_keys`).
pub fn search_key(r: &Record) -> i64 {
    crmkit_migrations::m20261129_000006_ordered_search_keys::ordered_key(
        r.created_at.micros(),
        &r.id,
    )
}

/// The text `search=` matches: the kind's search fields, lowercased.
pub fn search_text(def: &KindDef, fields: &BTreeMap<&'static str, Val>) -> String {
    let mut parts = Vec::new();
    for name in def.search {
        match fields.get(name) {
            Some(Val::Text(s)) => parts.push(s.to_lowercase()),
            Some(Val::Tags(t)) => parts.push(t.join(" ").to_lowercase()),
            _ => {}
        }
    }
    parts.join(" ")
}

/// The deferred row that sets the searched text of the record whose search
/// key is `key`, in SQLite's FTS5 index (PostgreSQL's trigram index is on an
/// expression of the row and needs nothing). It is held back until the
/// batch commits ([`WriteTx::defer`]), so it names the key itself and writes
/// only if the record still exists then: a later writer of the batch may
/// have deleted it, alone or with its workspace, and removed its entry
/// meanwhile.
fn search_set(def: &KindDef, key: i64, fields: &BTreeMap<&'static str, Val>) -> Deferred {
    let sql = format!(
        "INSERT OR REPLACE INTO {t}_fts (rowid, body) \
         SELECT j.value ->> 0, j.value ->> 1 FROM json_each(?) AS j \
         WHERE EXISTS (SELECT 1 FROM {t} WHERE search_key = j.value ->> 0) ORDER BY j.key",
        t = def.plural
    );
    Deferred::Row(sql, serde_json::json!([key, search_text(def, fields)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, Database, Statement};

    /// The search key SQLite computes in the migration and in `migrate-data`
    /// is the one the server writes, for ids across the alphabet and times
    /// with and without a fraction.
    #[tokio::test]
    async fn sqlite_computes_the_same_search_key() {
        assert_eq!(
            crate::wire::handle::ID_ALPHABET.as_slice(),
            crmkit_migrations::m20261129_000005_search_keys::ID_ALPHABET.as_bytes()
        );
        let db = Database::connect("sqlite::memory:").await.unwrap();
        let base = Ts::now().micros();
        for i in 0..50i64 {
            let r = Record {
                id: crate::secrets::new_id(Kind::Contact),
                fields: BTreeMap::new(),
                created_at: Ts::from_micros(base - base % 1_000_000 + i * 37).unwrap(),
                updated_at: Ts::now(),
            };
            let sql = format!(
                "SELECT {} AS k FROM (SELECT ? AS id, ? AS created_at)",
                crmkit_migrations::m20261129_000006_ordered_search_keys::sqlite_ordered_key_sql()
            );
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    sql,
                    vec![r.id.clone().into(), r.created_at.into()],
                ))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                row.try_get::<i64>("", "k").unwrap(),
                search_key(&r),
                "{}",
                r.id
            );
        }
    }

    /// The three places that say which fields search covers agree: the text
    /// live writes index (`search_text`, from `KindDef::search`), the text
    /// SQLite's index rebuilds compute (`sqlite_body_sql`), and the columns
    /// PostgreSQL's trigram expression reads (`PG_SEARCH`).
    #[tokio::test]
    async fn search_covers_the_same_fields_everywhere() {
        use crate::records::kinds::{COMPANY, CONTACT, DEAL};
        use crmkit_migrations::m20261128_000002_search::PG_SEARCH;
        use crmkit_migrations::m20261129_000006_ordered_search_keys::sqlite_body_sql;
        let db = Database::connect("sqlite::memory:").await.unwrap();
        for def in [&CONTACT, &COMPANY, &DEAL] {
            let mut fields = BTreeMap::new();
            let (mut cols, mut vals) = (Vec::new(), Vec::<Value>::new());
            for (i, f) in def.fields.iter().enumerate() {
                let v = match f.ty {
                    FType::Tags => Val::Tags(vec![format!("Tag{i}"), format!("Other{i}")]),
                    FType::Int | FType::Custom | FType::Time => continue,
                    _ => Val::Text(format!("Word{i} X")),
                };
                cols.push(format!("? AS {}", f.name));
                vals.push(db_value(f, &v));
                fields.insert(f.name, v);
            }
            let sql = format!(
                "SELECT {} AS body FROM (SELECT {})",
                sqlite_body_sql(def.plural),
                cols.join(", ")
            );
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    sql,
                    vals,
                ))
                .await
                .unwrap()
                .unwrap();
            let body: String = row.try_get("", "body").unwrap();
            assert_eq!(body, search_text(def, &fields), "{}", def.plural);

            let (_, pg) = PG_SEARCH
                .iter()
                .find(|(t, _)| *t == def.plural)
                .expect("a PostgreSQL expression per searched table");
            let read: Vec<&str> = pg
                .split("coalesce(")
                .skip(1)
                .filter_map(|rest| rest.split(',').next())
                .collect();
            assert_eq!(read, def.search, "{}", def.plural);
        }
    }

    /// Search entries are written when the batch commits
    /// ([`WriteTx::defer`]), after all of its writers. Creates, an update, a
    /// delete, a rolled-back create and a workspace-wide delete, each made by
    /// another writer of one batch, leave the index exactly as the rows are.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn search_follows_writes_made_in_one_batch() {
        use crate::records::kinds::CONTACT;
        let path = std::env::temp_dir().join(format!(
            "crmkit-search-{}.db",
            crate::secrets::new_id(Kind::Audit)
        ));
        let settings = crate::config::Settings::resolve(&crate::config::ServeArgs {
            database_url: Some(format!("sqlite://{}?mode=rwc", path.display())),
            ..Default::default()
        })
        .unwrap();
        let settings = std::sync::Arc::new(settings);
        let db = crate::db::connect(&settings).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        for ws in ["w_one", "w_two"] {
            db.execute_raw(stmt(
                DatabaseBackend::Sqlite,
                "INSERT INTO workspaces (id, name, created_by, created_at) VALUES (?, ?, 'u_x', ?)",
                vec![ws.into(), ws.into(), Ts::now().into()],
            ))
            .await
            .unwrap();
        }
        let record = |name: &str| Record {
            id: crate::secrets::new_id(Kind::Contact),
            fields: BTreeMap::from([("name", Val::Text(name.into()))]),
            created_at: Ts::now(),
            updated_at: Ts::now(),
        };
        let audit = |r: &Record| {
            crate::routes::audit::entry("w_one", "u_x", "t", "contact.create", &r.id, None)
        };
        // Each step is one writer: (workspace, what, committed?).
        enum Step {
            Create(Record),
            Rename(String, &'static str),
            Delete(String),
            DeleteWorkspace,
        }
        async fn run(
            db: &Db,
            settings: &crate::config::Settings,
            ws: &str,
            step: Step,
            keep: bool,
            audit: impl Fn(&Record) -> Sql,
        ) {
            let tx = crate::db::write_tx(db).await.unwrap();
            match step {
                Step::Create(mut r) => {
                    let made = create(Via::Tx(&tx), &CONTACT, ws, &mut r, settings, audit)
                        .await
                        .unwrap();
                    assert_eq!(made, Created::Inserted);
                }
                Step::Rename(id, name) => {
                    let fields = BTreeMap::from([("name", Val::Text(name.into()))]);
                    update(&tx, &CONTACT, ws, &id, &fields, Ts::now())
                        .await
                        .unwrap();
                }
                Step::Delete(id) => assert!(delete(&tx, &CONTACT, ws, &id).await.unwrap()),
                Step::DeleteWorkspace => {
                    tx.execute_unprepared("DELETE FROM contacts_fts WHERE rowid IN (SELECT search_key FROM contacts WHERE workspace_id = 'w_two')")
                        .await
                        .unwrap();
                    tx.execute_unprepared("DELETE FROM contacts WHERE workspace_id = 'w_two'")
                        .await
                        .unwrap();
                }
            }
            if keep {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }

        let alpha = record("Alpha");
        let bravo = record("Bravo");
        let (a, b) = (alpha.id.clone(), bravo.id.clone());
        let first = crate::db::write_tx(&db).await.unwrap();
        let mut r = alpha;
        assert_eq!(
            create(Via::Tx(&first), &CONTACT, "w_one", &mut r, &settings, audit)
                .await
                .unwrap(),
            Created::Inserted
        );
        let steps = vec![
            ("w_one", Step::Create(bravo), true),
            ("w_one", Step::Rename(a.clone(), "Alpine"), true),
            ("w_one", Step::Create(record("Charlie")), false),
            ("w_one", Step::Delete(b), true),
            ("w_two", Step::Create(record("Delta")), true),
            ("w_two", Step::DeleteWorkspace, true),
            ("w_one", Step::Create(record("Echo")), true),
        ];
        let n = steps.len();
        let mut queued = Vec::new();
        for (i, (ws, step, keep)) in steps.into_iter().enumerate() {
            let (db, settings) = (db.clone(), settings.clone());
            queued.push(tokio::spawn(async move {
                // Queue in this order behind `first`.
                tokio::time::sleep(std::time::Duration::from_millis(20 * i as u64)).await;
                run(&db, &settings, ws, step, keep, audit).await;
            }));
        }
        while db.writer_queue().0 < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let batch = db.writer_queue().1;
        first.commit().await.unwrap();
        for q in queued {
            q.await.unwrap();
        }
        assert_eq!(db.writer_queue().1, batch, "all in one batch");

        // What the index holds for a word, with and without a row behind it.
        let hits = |word: &str| {
            let db = db.clone();
            let word = word.to_string();
            async move {
                let entries = db
                    .read(
                        "SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH ?",
                        vec![word.clone().into()],
                        |r| r.int(0),
                    )
                    .await
                    .unwrap()
                    .len();
                let names = db
                    .read(
                        "SELECT c.name FROM contacts_fts JOIN contacts c ON c.search_key = contacts_fts.rowid WHERE contacts_fts MATCH ?",
                        vec![word.into()],
                        |r| r.text(0),
                    )
                    .await
                    .unwrap();
                (entries, names.into_iter().flatten().collect::<Vec<_>>())
            }
        };
        assert_eq!(hits("alpine").await, (1, vec!["Alpine".to_string()]));
        assert_eq!(
            hits("alpha").await,
            (0, vec![]),
            "the rename replaced the entry"
        );
        assert_eq!(hits("bravo").await, (0, vec![]), "the delete removed it");
        assert_eq!(
            hits("charlie").await,
            (0, vec![]),
            "rolled back: never indexed"
        );
        assert_eq!(
            hits("delta").await,
            (0, vec![]),
            "its workspace was deleted"
        );
        assert_eq!(hits("echo").await, (1, vec!["Echo".to_string()]));
        db.close().await.unwrap();
        for ext in ["", "-wal", "-shm"] {
            std::fs::remove_file(format!("{}{ext}", path.display())).ok();
        }
    }
}
