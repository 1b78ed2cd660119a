//! SQL for records. Statements are written once with `?` placeholders (see
//! [`crate::db::stmt`]) and run on SQLite and PostgreSQL alike; every value is
//! bound, and every column name comes from the static kind definitions.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DatabaseBackend, Value};

use super::kinds::{FType, FieldDef, KindDef};
use super::model::{Record, Val};
use crate::db::{Db, Ts, WriteTx, stmt};
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

/// Creates a record and everything that goes with it, in the caller's
/// transaction: its search-index entry (SQLite), its plan slot and its audit
/// entry (`audit` makes its `INSERT … SELECT`, without a WHERE, for the record
/// as finally inserted: a search-key collision changes its id). With an upsert key a
/// taken key writes nothing (`INSERT … ON CONFLICT DO NOTHING`), so racing
/// creates of one email make exactly one row.
///
/// The statements are one script ([`crate::db::script`]: on SQLite a single
/// call to the database). Each statement after the row's INSERT acts only if
/// that INSERT made the row (`EXISTS` on its fresh id), and RETURNING rows say
/// what happened. The plan slot is an UPDATE that matches no row when the cap
/// is reached (the configured plans' caps are a CASE over `workspaces.plan`),
/// so the caller's rollback gives nothing away.
pub async fn create(
    db: &WriteTx,
    def: &KindDef,
    ws: &str,
    r: &mut Record,
    settings: &crate::config::Settings,
    audit: impl Fn(&Record) -> Sql,
) -> AppResult<Created> {
    let sqlite = db.get_database_backend() == DatabaseBackend::Sqlite;
    let made = format!(
        "EXISTS (SELECT 1 FROM {} WHERE workspace_id = ? AND id = ?)",
        def.plural
    );
    // On SQLite the search key must be unique in the table; a collision
    // (same microsecond, same top 8 bits of the id) takes another id.
    for _ in 0..8 {
        let made_vals = || -> Vec<Value> { vec![ws.into(), r.id.clone().into()] };
        let mut parts = Vec::new();

        let mut cols = vec!["workspace_id", "id"];
        let mut vals: Vec<Value> = vec![ws.into(), r.id.clone().into()];
        for f in def.fields {
            cols.push(f.name);
            vals.push(db_value(f, r.get(f.name)));
        }
        if def.upsert_key == Some("email") {
            cols.push("email_key");
            vals.push(unique_key(def, &r.fields).into());
        }
        cols.extend(["created_at", "updated_at"]);
        vals.extend([r.created_at.into(), r.updated_at.into()]);
        let key = search_key(r);
        if sqlite {
            cols.push("search_key");
            vals.push(key.into());
        }
        let conflict = match unique_column(def) {
            Some(col) => format!(" ON CONFLICT (workspace_id, {col}) DO NOTHING"),
            None => String::new(),
        };
        parts.push((
            format!(
                "INSERT INTO {} ({}) VALUES ({}){conflict} RETURNING 'row' AS step",
                def.plural,
                cols.join(", "),
                vec!["?"; cols.len()].join(", ")
            ),
            vals,
        ));

        // PostgreSQL needs no search entry: its trigram index is on an
        // expression of the row.
        if sqlite {
            let mut vals: Vec<Value> = vec![key.into(), search_text(def, &r.fields).into()];
            vals.extend(made_vals());
            parts.push((
                format!(
                    "INSERT INTO {}_fts (rowid, body) SELECT ?, ? WHERE {made}",
                    def.plural
                ),
                vals,
            ));
        }

        let counter = def.counter;
        let mut sql = format!(
            "UPDATE workspaces SET {counter} = {counter} + 1 WHERE id = ? AND {made} AND {counter} < CASE plan"
        );
        let mut vals: Vec<Value> = vec![ws.into()];
        vals.extend(made_vals());
        for (name, plan) in &settings.plans {
            sql.push_str(" WHEN ? THEN ?");
            vals.push(name.clone().into());
            vals.push((def.cap)(plan).into());
        }
        sql.push_str(" ELSE ? END RETURNING 'slot' AS step");
        vals.push((def.cap)(&settings.plan("default")).into());
        parts.push((sql, vals));

        let entry = audit(r);
        let mut vals = entry.vals;
        vals.extend(made_vals());
        parts.push((format!("{} WHERE {made}", entry.text), vals));

        let rows = match crate::db::script(db, parts).await {
            Err(e) if sqlite && e.to_string().contains(".search_key") => {
                r.id = crate::secrets::new_id(def.kind);
                continue;
            }
            rows => rows?,
        };
        let mut steps = Vec::new();
        for row in &rows {
            steps.push(row.try_get::<String>("", "step")?);
        }
        if !steps.iter().any(|s| s == "row") {
            return Ok(Created::KeyTaken);
        }
        if !steps.iter().any(|s| s == "slot") {
            return Err(cap_reached(db, def, ws, settings).await);
        }
        return Ok(Created::Inserted);
    }
    Err(AppError::internal("no free search key after 8 ids"))
}

/// Writes every field of `fields` (the whole new state) to the record.
pub async fn update<C: ConnectionTrait>(
    db: &C,
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
    let sql = format!(
        "UPDATE {} SET {} WHERE workspace_id = ? AND id = ?",
        def.plural,
        sets.join(", ")
    );
    db.execute_raw(stmt(db.get_database_backend(), &sql, vals))
        .await?;
    search_replace(db, def, ws, id, fields).await
}

pub async fn delete<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    id: &str,
) -> AppResult<bool> {
    let backend = db.get_database_backend();
    search_remove(db, def, ws, id).await?;
    let sql = format!(
        "DELETE FROM {} WHERE workspace_id = ? AND id = ?",
        def.plural
    );
    let res = db
        .execute_raw(stmt(backend, &sql, vec![ws.into(), id.into()]))
        .await?;
    Ok(res.rows_affected() == 1)
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
        format!("this workspace has {used} of {cap} {kind_plural}"),
        format!("do not retry; tell the user the {kind_plural} limit of the {plan:?} plan is reached (GET /whoami shows usage)"),
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

/// Runs one statement on SQLite's FTS5 index, in the caller's transaction.
/// PostgreSQL needs nothing: its trigram index is on an expression of the row.
async fn search_exec<C: ConnectionTrait>(db: &C, sql: &str, vals: Vec<Value>) -> AppResult<()> {
    let backend = db.get_database_backend();
    if backend == DatabaseBackend::Sqlite {
        db.execute_raw(stmt(backend, sql, vals)).await?;
    }
    Ok(())
}

/// Replaces an existing record's searched text.
async fn search_replace<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    id: &str,
    fields: &BTreeMap<&'static str, Val>,
) -> AppResult<()> {
    let sql = format!(
        "INSERT OR REPLACE INTO {t}_fts (rowid, body) SELECT search_key, ? FROM {t} WHERE workspace_id = ? AND id = ?",
        t = def.plural
    );
    let vals = vec![search_text(def, fields).into(), ws.into(), id.into()];
    search_exec(db, &sql, vals).await
}

/// Drops a record from the search index; before the row is deleted.
async fn search_remove<C: ConnectionTrait>(
    db: &C,
    def: &KindDef,
    ws: &str,
    id: &str,
) -> AppResult<()> {
    let sql = format!(
        "DELETE FROM {t}_fts WHERE rowid = (SELECT search_key FROM {t} WHERE workspace_id = ? AND id = ?)",
        t = def.plural
    );
    search_exec(db, &sql, vec![ws.into(), id.into()]).await
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
}
