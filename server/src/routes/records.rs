//! `/contacts`, `/companies`, `/deals`: list/query, create-or-upsert, fetch,
//! partial update and two-step delete — one implementation over [`KindDef`].

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::{PathIds, QueryPairs, RawBody, no_params, parse_object};
use crate::negotiate::Fmt;
use crate::query::{
    SearchPlan, list_sql, make_cursor, read_cursor, search_count_sql, search_key_at,
    search_ordered, search_plan, summary_sql,
};
use crate::records::kinds::FType;
use crate::records::model::{self, Record, Val};
use crate::records::{COMPANY, CONTACT, DEAL, KindDef, store};
use crate::routes::audit;
use crate::secrets;
use crate::wire::handle::{Kind, handle, parse_ref};
use crate::wire::line::{LineBuilder, comment};
use crate::wire::query::parse_list_query;
use axum::middleware::from_fn;

pub fn router() -> Router<AppState> {
    let mut r = Router::new();
    for def in [&CONTACT, &COMPANY, &DEAL] {
        let d: &'static KindDef = def;
        r = r
            .route(
                &format!("/{}", d.plural),
                post(move |s, c, f, b| create(d, s, c, f, b))
                    .layer(from_fn(no_params))
                    .get(move |s, c, f, q| list(d, s, c, f, q)),
            )
            .route(
                &format!("/{}/summary", d.plural),
                get(move |s, c, f, q| summary(d, s, c, f, q)),
            )
            .route(
                &format!("/{}/{{id}}", d.plural),
                get(move |s, c, f, p| fetch(d, s, c, f, p))
                    .patch(move |s, c, f, p, b| patch(d, s, c, f, p, b))
                    .layer(from_fn(no_params))
                    .delete(move |s, c, f, p, q| remove(d, s, c, f, p, q)),
            );
    }
    r
}

/// Path id -> bare id: a wrong-kind handle is a 400, anything unknown a 404.
pub fn path_id(kind: Kind, ids: &[String]) -> AppResult<String> {
    let raw = ids.first().map(String::as_str).unwrap_or("");
    path_ref(kind, raw, || not_found(kind, raw))
}

/// A path segment naming a `kind` -> its bare id: a handle or id of another
/// kind is a 400 with a hint; anything else that is not such an id gets
/// `unknown` (a 404: it names nothing that exists for the caller).
pub fn path_ref(kind: Kind, raw: &str, unknown: impl FnOnce() -> AppError) -> AppResult<String> {
    parse_ref(kind, raw).map_err(|e| match e {
        crate::wire::handle::RefError::WrongKind { .. } => AppError::invalid(
            e.to_string(),
            format!(
                "use a {} id like {}_… or its handle {}/{}_…",
                kind.name(),
                kind.prefix(),
                kind.name(),
                kind.prefix()
            ),
        ),
        _ => unknown(),
    })
}

pub fn not_found(kind: Kind, raw: &str) -> AppError {
    let shown: String = raw.chars().take(60).collect();
    AppError::not_found(
        format!("no {} {shown:?} in this workspace", kind.name()),
        if raw.contains('@') && kind == Kind::Contact {
            format!(
                "a path takes an id, not an email: GET /contacts?email={shown} finds a contact by email"
            )
        } else {
            let finds = match kind {
                Kind::Deal => " (search= finds by title)",
                Kind::Contact | Kind::Company => " (search= finds by name)",
                Kind::Activity => " (contact=, deal= and kind= narrow it)",
                _ => "",
            };
            format!(
                "check the id; GET /{} lists what exists{finds}",
                plural(kind)
            )
        },
    )
}

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Contact => "contacts",
        Kind::Company => "companies",
        Kind::Deal => "deals",
        Kind::Activity => "activities",
        _ => "",
    }
}

pub fn record_reply(
    fmt: Fmt,
    def: &KindDef,
    r: &Record,
    status: StatusCode,
    result: &str,
    notes: &[String],
) -> Response {
    fmt.reply(
        status,
        || {
            let mut out = model::line(def, r);
            out.push('\n');
            out.push_str(&comment(result));
            out.push('\n');
            for n in notes {
                out.push_str(&comment(n));
                out.push('\n');
            }
            out
        },
        || json!({"data": model::to_json(def, r), "result": result}),
    )
}

async fn list(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    QueryPairs(pairs): QueryPairs,
) -> AppResult<Response> {
    // `format` picks the output; a stray step-up `code` is ignored, as everywhere.
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, _)| k != "format" && k != "code")
        .collect();
    let q = parse_list_query(def.schema, &pairs).map_err(|e| {
        AppError::new(e.code, StatusCode::BAD_REQUEST, e.message, e.hint).allowed(&e.allowed)
    })?;
    let after = match &q.cursor {
        Some(c) => Some(read_cursor(
            &state.cursor_key,
            &caller.workspace_id,
            def.plural,
            &q,
            c,
        )?),
        None => None,
    };
    let limit = u64::from(q.limit);
    let db = &state.db;
    let backend = db.get_database_backend();
    let ordered = search_ordered(&q, backend);
    let hits = match search_count_sql(def, &q, backend) {
        Some(count) if !ordered => {
            let n = db.read(&count.text, count.vals, |r| r.int(0)).await?;
            Some(n.into_iter().flatten().next().unwrap_or(0))
        }
        _ => None,
    };
    let plan = if ordered {
        SearchPlan::Ordered
    } else {
        search_plan(hits)
    };
    // Each row with its search key when the page follows the search index.
    let key_at = ordered.then(|| search_key_at(def));
    let mut rows = if hits == Some(0) {
        Vec::new()
    } else {
        let sql = list_sql(
            def,
            &caller.workspace_id,
            &q,
            after.as_ref(),
            limit + 1,
            backend,
            plan,
        )?;
        db.read(&sql.text, sql.vals, move |r| -> AppResult<_> {
            let key = key_at.map(|i| r.int(i)).transpose()?.flatten();
            Ok((store::from_row(def, r)?, key))
        })
        .await?
    };
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|(last, key)| {
            make_cursor(
                &state.cursor_key,
                &caller.workspace_id,
                def.plural,
                &q,
                last,
                *key,
            )
        })
    } else {
        None
    };
    let records: Vec<_> = rows.into_iter().map(|(r, _)| r).collect();
    Ok(list_reply(
        fmt,
        def.plural,
        &records,
        next,
        |r| model::line(def, r),
        |r| model::JsonRecord(def, r),
    ))
}

/// The fields a kind's summary may group by, and its default grouping.
fn groupable(def: &KindDef) -> (&'static [&'static str], &'static str) {
    match def.kind {
        Kind::Deal => (
            &["status", "stage", "currency", "company_id", "contact_id"],
            "status,stage",
        ),
        Kind::Contact => (&["stage", "company_id"], "stage"),
        _ => (&["industry"], "industry"),
    }
}

/// At most this many groups in a summary.
const MAX_GROUPS: u64 = 500;

/// `GET /{kind}/summary?by=…&<filters>&search=…`: how many records (and,
/// for deals, how much money per currency) per value of the `by` fields,
/// over the records the filters select: "the open pipeline by stage"
/// without paging through every deal.
async fn summary(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    QueryPairs(pairs): QueryPairs,
) -> AppResult<Response> {
    let (allowed, default_by) = groupable(def);
    let mut by: Option<String> = None;
    let mut filters = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "format" | "code" => {}
            "by" if by.is_some() => {
                return Err(AppError::invalid(
                    "by is given more than once",
                    "send by=FIELD,FIELD once",
                ));
            }
            "by" => by = Some(v),
            "sort" | "limit" | "cursor" => {
                return Err(AppError::new(
                    "unknown_field",
                    StatusCode::BAD_REQUEST,
                    format!("a summary takes no {k}"),
                    format!("a summary is every group at once, in the order of its by= fields: remove {k}; filters, search= and by= apply"),
                )
                .allowed(allowed));
            }
            _ => filters.push((k, v)),
        }
    }
    let q = parse_list_query(def.schema, &filters).map_err(|e| {
        AppError::new(e.code, StatusCode::BAD_REQUEST, e.message, e.hint).allowed(&e.allowed)
    })?;
    let by = by.unwrap_or_else(|| default_by.to_owned());
    let mut groups: Vec<&'static str> = Vec::new();
    for name in by.split(',').map(str::trim) {
        let Some(field) = allowed.iter().find(|f| **f == name) else {
            let shown: String = name.chars().take(60).collect();
            return Err(AppError::invalid(
                format!("cannot group {} by {shown:?}", def.plural),
                format!("send by= one or more of the allowed fields, comma-separated, e.g. by={default_by}"),
            )
            .allowed(allowed));
        };
        if !groups.contains(field) {
            groups.push(field);
        }
    }
    // Amounts add up only within a currency.
    let sums = def.kind == Kind::Deal;
    if sums && !groups.contains(&"currency") {
        groups.push("currency");
    }
    let sql = summary_sql(
        def,
        &caller.workspace_id,
        &q,
        &groups,
        sums,
        MAX_GROUPS + 1,
        state.db.get_database_backend(),
    );
    let n = groups.len();
    let mut rows = state
        .db
        .read(&sql.text, sql.vals, |r| -> AppResult<_> {
            let values = (0..n).map(|i| r.text(i)).collect::<Result<Vec<_>, _>>()?;
            let count = r.int(n)?.unwrap_or(0);
            let total = if sums { r.int(n + 1)? } else { None };
            Ok((values, count, total))
        })
        .await?;
    let cut = rows.len() as u64 > MAX_GROUPS;
    rows.truncate(MAX_GROUPS as usize);
    let records: i64 = rows.iter().map(|(_, c, _)| c).sum();
    let amount = |values: &[Option<String>], total: Option<i64>| {
        let cur = groups
            .iter()
            .position(|g| *g == "currency")
            .and_then(|i| values[i].as_deref());
        total.zip(cur).map(|(t, c)| model::money(t, c))
    };
    let note = cut.then(|| format!("more than {MAX_GROUPS} groups: only the first are shown; narrow with filters or group by fewer fields"));
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut out = String::new();
            for (values, count, total) in &rows {
                let mut l = LineBuilder::new("summary");
                for (g, v) in groups.iter().zip(values) {
                    l.opt(g, v.as_deref());
                }
                l.field("count", &count.to_string());
                if let Some(t) = total {
                    l.field("amount_cents", &t.to_string());
                }
                l.opt("amount", amount(values, *total).as_deref());
                out.push_str(&l.finish());
                out.push('\n');
            }
            out.push_str(&comment(&format!(
                "{} groups, {records} {} in all",
                rows.len(),
                def.plural
            )));
            out.push('\n');
            if let Some(n) = &note {
                out.push_str(&comment(n));
                out.push('\n');
            }
            out
        },
        || {
            let data: Vec<Value> = rows
                .iter()
                .map(|(values, count, total)| {
                    let mut m = serde_json::Map::new();
                    for (g, v) in groups.iter().zip(values) {
                        m.insert((*g).to_owned(), json!(v));
                    }
                    m.insert("count".into(), json!(count));
                    if sums {
                        m.insert("amount_cents".into(), json!(total));
                        m.insert("amount".into(), json!(amount(values, *total)));
                    }
                    Value::Object(m)
                })
                .collect();
            let mut v = json!({"data": data, "by": groups, "count": records});
            if let Some(n) = &note {
                v["note"] = json!(n);
            }
            v
        },
    ))
}

/// A page as JSON: `{"data": [...], "next_cursor": ...}`.
#[derive(serde::Serialize)]
struct Page<'n, J> {
    data: Vec<J>,
    next_cursor: Option<&'n str>,
}

/// Lines, then `# N things` and `# next: CURSOR`; JSON `{"data","next_cursor"}`.
pub fn list_reply<'a, T, J: serde::Serialize>(
    fmt: Fmt,
    noun: &str,
    items: &'a [T],
    next: Option<String>,
    line: impl Fn(&T) -> String,
    to_json: impl Fn(&'a T) -> J,
) -> Response {
    fmt.reply(
        StatusCode::OK,
        || {
            let mut out = String::new();
            for it in items {
                out.push_str(&line(it));
                out.push('\n');
            }
            if items.is_empty() {
                out.push_str(&comment(&format!("0 {noun} match")));
            } else {
                out.push_str(&comment(&format!("{} {noun}", items.len())));
            }
            out.push('\n');
            if let Some(n) = &next {
                out.push_str(&comment(&format!("next: {n}")));
                out.push('\n');
            }
            out
        },
        || Page {
            data: items.iter().map(&to_json).collect(),
            next_cursor: next.as_deref(),
        },
    )
}

async fn fetch(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let id = path_id(def.kind, &ids)?;
    let r = store::read(&state.db, def, &caller.workspace_id, &id)
        .await?
        .ok_or_else(|| not_found(def.kind, &id))?;
    Ok(fmt.reply(
        StatusCode::OK,
        || format!("{}\n", model::line(def, &r)),
        || json!({"data": model::to_json(def, &r)}),
    ))
}

/// Every referenced record must exist in the caller's workspace; another
/// workspace's id is answered exactly like an id that never existed.
async fn check_refs(
    tx: &crate::db::WriteTx,
    ws: &str,
    changes: &[(&'static crate::records::kinds::FieldDef, Val)],
) -> AppResult<()> {
    for (f, v) in changes {
        if let (FType::Ref(kind), Val::Text(id)) = (f.ty, v)
            && !store::exists(tx, kind, ws, id).await?
        {
            return Err(AppError::not_found(
                format!("{}: no {} {id:?} in this workspace", f.name, kind.name()),
                format!(
                    "create the {} first or use an id from GET /{}",
                    kind.name(),
                    plural(kind)
                ),
            ));
        }
    }
    Ok(())
}

fn check_whole(def: &KindDef, fields: &BTreeMap<&'static str, Val>) -> AppResult<()> {
    if let Some(req) = def.required
        && !fields.contains_key(req)
    {
        return Err(AppError::invalid(
            format!("{req} is required"),
            format!("send \"{req}\": \"…\""),
        ));
    }
    if fields.contains_key("amount_cents") && !fields.contains_key("currency") {
        return Err(AppError::invalid(
            "currency is required with amount_cents",
            "send \"currency\": \"USD\" (ISO 4217) along with amount_cents",
        ));
    }
    Ok(())
}

fn changes_json(d: serde_json::Map<String, Value>) -> Option<Value> {
    if d.is_empty() {
        None
    } else {
        Some(Value::Object(d))
    }
}

async fn create(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    RawBody(body): RawBody,
) -> AppResult<Response> {
    let map = parse_object(&body, &def.body_fields())?;
    let changes = model::parse_changes(def, &map)?;
    let now = Ts::now();
    let fields = model::with_defaults(def, model::apply(None, &changes)?);
    check_whole(def, &fields)?;
    let ws = caller.workspace_id.as_str();
    let mut fresh = Record {
        id: secrets::new_id(def.kind),
        fields,
        created_at: now,
        updated_at: now,
    };

    let action = format!("{}.create", def.kind.name());
    let audit = |r: &Record| {
        audit::entry(
            ws,
            &caller.user_id,
            &caller.token_name,
            &action,
            &handle(def.kind, &r.id),
            changes_json(model::diff(def, None, &r.fields)),
        )
    };
    let refs = changes.iter().any(|(f, _)| matches!(f.ty, FType::Ref(_)));
    // On a SQLite file with nothing to check first, the create goes to the
    // writer thread as one self-contained write. Otherwise, or when the
    // upsert key is taken (the merge below needs a transaction), it runs in a
    // transaction.
    let quick = if refs || state.db.submits().is_none() {
        None
    } else {
        Some(
            store::create(
                store::Via::Now(&state.db),
                def,
                ws,
                &mut fresh,
                &state.settings,
                &audit,
            )
            .await?,
        )
    };
    let tx = if quick == Some(store::Created::Inserted) {
        None
    } else {
        let tx = write_tx(&state.db).await?;
        check_refs(&tx, ws, &changes).await?;
        match store::create(
            store::Via::Tx(&tx),
            def,
            ws,
            &mut fresh,
            &state.settings,
            &audit,
        )
        .await?
        {
            store::Created::Inserted => {
                tx.commit().await?;
                None
            }
            store::Created::KeyTaken => Some(tx),
        }
    };
    let Some(tx) = tx else {
        return Ok(record_reply(
            fmt,
            def,
            &fresh,
            StatusCode::CREATED,
            "created",
            &[],
        ));
    };

    // The upsert key is taken: merge what was sent into that record.
    let key = store::unique_key(def, &fresh.fields).unwrap_or_default();
    let before = store::find_by_key(&tx, def, ws, &key, true)
        .await?
        .ok_or_else(|| AppError::internal("upsert conflict without a matching row"))?;
    let after_fields = model::with_defaults(def, model::apply(Some(&before), &changes)?);
    check_whole(def, &after_fields)?;
    let diff = model::diff(def, Some(&before.fields), &after_fields);
    let updated = if diff.is_empty() {
        before
    } else {
        store::update(&tx, def, ws, &before.id, &after_fields, now).await?;
        audit::record(
            &tx,
            ws,
            &caller.user_id,
            &caller.token_name,
            &format!("{}.upsert", def.kind.name()),
            &handle(def.kind, &before.id),
            changes_json(diff),
        )
        .await?;
        Record {
            fields: after_fields,
            updated_at: now,
            ..before
        }
    };
    tx.commit().await?;
    let note = format!(
        "matched the existing {} by {}",
        def.kind.name(),
        def.upsert_key.unwrap_or("key")
    );
    Ok(record_reply(
        fmt,
        def,
        &updated,
        StatusCode::OK,
        "updated",
        &[note],
    ))
}

async fn patch(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    RawBody(body): RawBody,
) -> AppResult<Response> {
    let id = path_id(def.kind, &ids)?;
    let map = parse_object(&body, &def.body_fields())?;
    let changes = model::parse_changes(def, &map)?;
    let ws = caller.workspace_id.as_str();
    let tx = write_tx(&state.db).await?;
    let before = store::get(&tx, def, ws, &id, true)
        .await?
        .ok_or_else(|| not_found(def.kind, &id))?;
    check_refs(&tx, ws, &changes).await?;
    let after_fields = model::with_defaults(def, model::apply(Some(&before), &changes)?);
    check_whole(def, &after_fields)?;
    if let Some(key) = store::unique_key(def, &after_fields)
        && store::unique_key(def, &before.fields).as_deref() != Some(key.as_str())
        && let Some(other) = store::find_by_key(&tx, def, ws, &key, false).await?
        && other.id != id
    {
        let field = def.upsert_key.unwrap_or("key");
        return Err(AppError::new(
            "conflict",
            StatusCode::CONFLICT,
            format!(
                "{} {} already has this {field}",
                def.kind.name(),
                handle(def.kind, &other.id)
            ),
            format!(
                "update {} instead, or choose another {field}",
                handle(def.kind, &other.id)
            ),
        )
        .with("existing", handle(def.kind, &other.id)));
    }
    let diff = model::diff(def, Some(&before.fields), &after_fields);
    let now = Ts::now();
    let r = if diff.is_empty() {
        before
    } else {
        // A unique key taken by a racing request surfaces as `conflict` (see `error.rs`).
        store::update(&tx, def, ws, &id, &after_fields, now).await?;
        audit::record(
            &tx,
            ws,
            &caller.user_id,
            &caller.token_name,
            &format!("{}.update", def.kind.name()),
            &handle(def.kind, &id),
            changes_json(diff),
        )
        .await?;
        Record {
            fields: after_fields,
            updated_at: now,
            ..before
        }
    };
    tx.commit().await?;
    Ok(record_reply(fmt, def, &r, StatusCode::OK, "updated", &[]))
}

/// What else points at a record, as (table, column, noun).
fn links(kind: Kind) -> &'static [(&'static str, &'static str, &'static str)] {
    match kind {
        Kind::Contact => &[
            ("deals", "contact_id", "deals"),
            ("activities", "contact_id", "activities"),
        ],
        Kind::Company => &[
            ("contacts", "company_id", "contacts"),
            ("deals", "company_id", "deals"),
        ],
        Kind::Deal => &[("activities", "deal_id", "activities")],
        _ => &[],
    }
}

async fn link_counts<C: ConnectionTrait>(
    db: &C,
    kind: Kind,
    ws: &str,
    id: &str,
) -> AppResult<Vec<(i64, &'static str)>> {
    let mut out = Vec::new();
    for (table, col, noun) in links(kind) {
        let row = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                &format!("SELECT COUNT(*) AS n FROM {table} WHERE workspace_id = ? AND {col} = ?"),
                vec![ws.into(), id.into()],
            ))
            .await?;
        let n: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        out.push((n, *noun));
    }
    Ok(out)
}

fn describe_links(counts: &[(i64, &str)]) -> String {
    let linked: Vec<String> = counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, noun)| format!("{n} {noun}"))
        .collect();
    if linked.is_empty() {
        "nothing links to it".into()
    } else {
        format!(
            "{} link to it; their link will be cleared",
            linked.join(" and ")
        )
    }
}

pub const CONFIRM_TTL: std::time::Duration = std::time::Duration::from_secs(600);

async fn remove(
    def: &'static KindDef,
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    QueryPairs(q): QueryPairs,
) -> AppResult<Response> {
    let id = path_id(def.kind, &ids)?;
    q.iter().try_for_each(|(k, _)| {
        if k == "confirm" || k == "format" || k == "code" {
            Ok(())
        } else {
            Err(AppError::new(
                "unknown_field",
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter {:?}",
                    k.chars().take(60).collect::<String>()
                ),
                "DELETE takes only ?confirm=TOKEN",
            )
            .allowed(&["confirm"]))
        }
    })?;
    if q.iter().filter(|(k, _)| k == "confirm").count() > 1 {
        return Err(AppError::invalid(
            "confirm is given more than once",
            "send ?confirm=TOKEN once, with the token of the last confirmation_required answer",
        ));
    }
    let target = handle(def.kind, &id);
    let ws = caller.workspace_id.as_str();
    let db = &state.db;
    let backend = db.get_database_backend();
    let confirm = q
        .iter()
        .find(|(k, _)| k == "confirm")
        .map(|(_, v)| v.clone());

    let tx = write_tx(db).await?;
    let record = store::get(&tx, def, ws, &id, true)
        .await?
        .ok_or_else(|| not_found(def.kind, &id))?;
    // A confirm token is bound to what the user was told links to the
    // record: if a deal or activity has linked to it since, the user agreed
    // to something else, and is asked again.
    let counts = link_counts(&tx, def.kind, ws, &id).await?;
    let told = |counts: &[(i64, &str)]| {
        let n: Vec<String> = counts.iter().map(|(n, _)| n.to_string()).collect();
        format!("{target}|{}", n.join(","))
    };
    let bound = told(&counts);
    let mut changed = false;
    let consumed = match &confirm {
        Some(token) if !token.is_empty() && token.len() <= 200 => {
            let res = tx
                .execute_raw(stmt(
                    backend,
                    "DELETE FROM confirmations WHERE token_hash = ? AND workspace_id = ? AND user_id = ? AND target = ? AND expires_at > ?",
                    vec![secrets::hash(token).into(), ws.into(), caller.user_id.clone().into(), bound.clone().into(), Ts::now().into()],
                ))
                .await?;
            if res.rows_affected() == 0 {
                // Issued for this record when other things linked to it:
                // used up, and said so.
                let stale = tx
                    .execute_raw(stmt(
                        backend,
                        "DELETE FROM confirmations WHERE token_hash = ? AND workspace_id = ? AND user_id = ? AND target LIKE ? AND expires_at > ?",
                        vec![secrets::hash(token).into(), ws.into(), caller.user_id.clone().into(), format!("{target}|%").into(), Ts::now().into()],
                    ))
                    .await?;
                changed = stale.rows_affected() > 0;
            }
            res.rows_affected() == 1
        }
        _ => false,
    };

    if !consumed {
        let token = secrets::new_secret("cf_");
        tx.execute_raw(stmt(
            backend,
            "DELETE FROM confirmations WHERE expires_at <= ?",
            vec![Ts::now().into()],
        ))
        .await?;
        tx.execute_raw(stmt(
            backend,
            "INSERT INTO confirmations (token_hash, workspace_id, user_id, target, expires_at) VALUES (?, ?, ?, ?, ?)",
            vec![secrets::hash(&token).into(), ws.into(), caller.user_id.clone().into(), bound.into(), Ts::now().plus(CONFIRM_TTL).into()],
        ))
        .await?;
        tx.commit().await?;
        let label = record
            .text("name")
            .or(record.text("title"))
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let prefix = if changed {
            "what links to it has changed since that confirm token was issued, so it no longer applies; "
        } else if confirm.is_some() {
            "that confirm token is not valid for this record (used, expired, or issued for another record or user); "
        } else {
            ""
        };
        return Err(AppError::new(
            "confirmation_required",
            StatusCode::CONFLICT,
            format!(
                "{prefix}deleting {target}{label} cannot be undone; {}",
                describe_links(&counts)
            ),
            format!(
                "if the user wants this, repeat within 10 minutes: DELETE /{}/{id}?confirm={token}",
                def.plural
            ),
        )
        .with("confirm", token)
        .with("target", target));
    }

    store::delete(&tx, def, ws, &id).await?;
    let mut cleared = Vec::new();
    let mut unlinked = serde_json::Map::new();
    let now = Ts::now();
    for (table, col, noun) in links(def.kind) {
        // A contact or deal whose link is cleared has changed: its
        // updated_at moves, so a sync by updated_at=gt: sees it. Activities
        // are a log without one.
        let (touch, mut values) = if *table == "activities" {
            ("", Vec::new())
        } else {
            (", updated_at = ?", vec![now.into()])
        };
        values.extend([ws.into(), id.clone().into()]);
        let res = tx
            .execute_raw(stmt(
                backend,
                &format!(
                    "UPDATE {table} SET {col} = NULL{touch} WHERE workspace_id = ? AND {col} = ?"
                ),
                values,
            ))
            .await?;
        if res.rows_affected() > 0 {
            cleared.push(format!("{} {noun}", res.rows_affected()));
            unlinked.insert((*noun).to_owned(), json!(res.rows_affected()));
        }
    }
    store::free_slot(&tx, def.counter, ws).await?;
    let mut diff = model::diff(def, Some(&record.fields), &BTreeMap::new());
    // What linked to it, and had its link cleared by this delete.
    if !unlinked.is_empty() {
        diff.insert("links".to_owned(), json!([unlinked, null]));
    }
    audit::record(
        &tx,
        ws,
        &caller.user_id,
        &caller.token_name,
        &format!("{}.delete", def.kind.name()),
        &target,
        changes_json(diff),
    )
    .await?;
    tx.commit().await?;
    let note = if cleared.is_empty() {
        String::new()
    } else {
        format!("cleared the link on {}", cleared.join(" and "))
    };
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut out = comment(&format!("deleted {target}"));
            out.push('\n');
            if !note.is_empty() {
                out.push_str(&comment(&note));
                out.push('\n');
            }
            out
        },
        || json!({"data": {"handle": target, "id": id}, "result": "deleted", "cleared": cleared}),
    ))
}
