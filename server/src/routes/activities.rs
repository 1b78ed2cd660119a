//! Activities (calls, emails, meetings, notes, tasks) logged against contacts
//! and deals, and reminders: contacts and deals whose follow-up is due.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use sea_orm::{ConnectionTrait, QueryResult};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::Caller;
use crate::db::{Ts, stmt, write_tx};
use crate::error::{AppError, AppResult};
use crate::extract::{PathIds, QueryPairs, RawBody, parse_object};
use crate::negotiate::Fmt;
use crate::query::{make_time_cursor, read_time_cursor, sql_op};
use crate::records::kinds::{FType, FieldDef};
use crate::records::model::{self, Val};
use crate::records::{CONTACT, DEAL, KindDef, store};
use crate::routes::audit;
use crate::routes::records::{list_reply, not_found, path_id};
use crate::secrets;
use crate::wire::handle::{Kind, handle, parse_ref};
use crate::wire::line::{LineBuilder, comment};
use crate::wire::query::parse_limit;

pub const ACTIVITY_KINDS: &[&str] = &["call", "email", "meeting", "note", "task"];

static KIND_FIELD: FieldDef = FieldDef {
    name: "kind",
    ty: FType::Enum(ACTIVITY_KINDS),
};
static BODY_FIELD: FieldDef = FieldDef {
    name: "body",
    ty: FType::Text {
        max: 10_000,
        multiline: true,
    },
};
static OCCURRED_FIELD: FieldDef = FieldDef {
    name: "occurred_at",
    ty: FType::Time,
};
static DEAL_FIELD: FieldDef = FieldDef {
    name: "deal_id",
    ty: FType::Ref(Kind::Deal),
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/contacts/{id}/activities",
            get(|State(s), c, f, PathIds(ids), q| list_for(Kind::Contact, s, c, f, ids, q))
                .post(log),
        )
        .route(
            "/deals/{id}/activities",
            get(|State(s), c, f, PathIds(ids), q| list_for(Kind::Deal, s, c, f, ids, q)),
        )
        .route("/activities", get(list_all))
        .route(
            "/activities/{id}",
            get(show_one).layer(axum::middleware::from_fn(crate::extract::no_params)),
        )
        .route("/reminders", get(reminders))
}

pub struct Activity {
    id: String,
    kind: String,
    body: Option<String>,
    occurred_at: Ts,
    contact_id: Option<String>,
    deal_id: Option<String>,
    author_id: String,
    author_token: String,
    created_at: Ts,
}

impl Activity {
    fn from_row(r: &QueryResult) -> AppResult<Activity> {
        Ok(Activity {
            id: r.try_get("", "id")?,
            kind: r.try_get("", "kind")?,
            body: r.try_get("", "body")?,
            occurred_at: r.try_get("", "occurred_at")?,
            contact_id: r.try_get("", "contact_id")?,
            deal_id: r.try_get("", "deal_id")?,
            author_id: r.try_get("", "author_id")?,
            author_token: r.try_get("", "author_token")?,
            created_at: r.try_get("", "created_at")?,
        })
    }

    fn line(&self) -> String {
        let mut l = LineBuilder::new(&handle(Kind::Activity, &self.id));
        l.field("kind", &self.kind)
            .field("occurred_at", &self.occurred_at.render())
            .opt(
                "contact",
                self.contact_id
                    .as_ref()
                    .map(|c| handle(Kind::Contact, c))
                    .as_deref(),
            )
            .opt(
                "deal",
                self.deal_id
                    .as_ref()
                    .map(|d| handle(Kind::Deal, d))
                    .as_deref(),
            )
            .field("author", &handle(Kind::User, &self.author_id))
            .field("agent", &self.author_token)
            .opt("body", self.body.as_deref())
            .field("created_at", &self.created_at.render());
        l.finish()
    }

    fn to_json(&self) -> Value {
        json!({
            "handle": handle(Kind::Activity, &self.id), "id": self.id, "kind": self.kind, "body": self.body,
            "occurred_at": self.occurred_at.render(), "contact_id": self.contact_id, "deal_id": self.deal_id,
            "author": handle(Kind::User, &self.author_id), "agent": self.author_token,
            "created_at": self.created_at.render(),
        })
    }
}

const COLS: &str =
    "id, kind, body, occurred_at, contact_id, deal_id, author_id, author_token, created_at";

/// An activity.create audit entry's changes: every field it was logged
/// with, as `[null, value]`; one it has no value for (no deal, no body) is
/// left out, as a record's create leaves out empty fields.
fn created_changes(a: &Activity) -> Value {
    let mut c = json!({"kind": [null, a.kind], "occurred_at": [null, a.occurred_at.render()]});
    for (k, v) in [
        ("body", &a.body),
        ("contact_id", &a.contact_id),
        ("deal_id", &a.deal_id),
    ] {
        if let Some(v) = v {
            c[k] = json!([null, v]);
        }
    }
    c
}

async fn log(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
    RawBody(raw): RawBody,
) -> AppResult<Response> {
    let contact_id = path_id(Kind::Contact, &ids)?;
    let map = parse_object(&raw, &["kind", "body", "occurred_at", "deal_id"])?;
    let kind = match map.get("kind") {
        Some(v) if !v.is_null() => model::parse_value(&KIND_FIELD, v)?,
        _ => {
            return Err(AppError::invalid(
                "kind is required",
                format!("send \"kind\": one of {}", ACTIVITY_KINDS.join(", ")),
            )
            .allowed(ACTIVITY_KINDS));
        }
    };
    let body = map
        .get("body")
        .map(|v| model::parse_value(&BODY_FIELD, v))
        .transpose()?;
    let occurred = map
        .get("occurred_at")
        .map(|v| model::parse_value(&OCCURRED_FIELD, v))
        .transpose()
        .map_err(|mut e| {
            e.hint = "send occurred_at as RFC3339, e.g. 2026-06-10T09:00:00Z; leave it out (or null) for now".to_owned();
            e
        })?;
    let deal = map
        .get("deal_id")
        .map(|v| model::parse_value(&DEAL_FIELD, v))
        .transpose()?;
    let text = |v: Option<Val>| match v {
        Some(Val::Text(s)) => Some(s),
        _ => None,
    };
    let now = Ts::now();
    if let Some(Val::Time(at)) = &occurred {
        when_it_happened(*at, now)?;
    }
    let a = Activity {
        id: secrets::new_id(Kind::Activity),
        kind: text(Some(kind)).unwrap_or_default(),
        body: text(body),
        occurred_at: match occurred {
            Some(Val::Time(t)) => t,
            _ => now,
        },
        contact_id: Some(contact_id.clone()),
        deal_id: text(deal),
        author_id: caller.user_id.clone(),
        author_token: caller.token_name.clone(),
        created_at: now,
    };
    let ws = caller.workspace_id.as_str();
    let tx = write_tx(&state.db).await?;
    if !store::exists(&tx, Kind::Contact, ws, &contact_id).await? {
        return Err(not_found(Kind::Contact, &contact_id));
    }
    if let Some(d) = &a.deal_id
        && !store::exists(&tx, Kind::Deal, ws, d).await?
    {
        return Err(AppError::not_found(
            format!("deal_id: no deal {d:?} in this workspace"),
            "use an id from GET /deals",
        ));
    }
    tx.execute_raw(stmt(
        tx.get_database_backend(),
        "INSERT INTO activities (workspace_id, id, kind, body, occurred_at, contact_id, deal_id, author_id, author_token, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            ws.into(), a.id.clone().into(), a.kind.clone().into(), a.body.clone().into(), a.occurred_at.into(),
            a.contact_id.clone().into(), a.deal_id.clone().into(), a.author_id.clone().into(), a.author_token.clone().into(), a.created_at.into(),
        ],
    ))
    .await?;
    audit::record(
        &tx,
        ws,
        &caller.user_id,
        &caller.token_name,
        "activity.create",
        &handle(Kind::Activity, &a.id),
        Some(created_changes(&a)),
    )
    .await?;
    tx.commit().await?;
    Ok(fmt.reply(
        StatusCode::CREATED,
        || format!("{}\n{}\n", a.line(), comment("created")),
        || json!({"data": a.to_json(), "result": "created"}),
    ))
}

/// A contact's log, or a deal's (the activities that name it): 404 for a
/// record that is not in the workspace, where `GET /activities?deal=` lists
/// none.
async fn list_for(
    kind: Kind,
    state: AppState,
    caller: Caller,
    fmt: Fmt,
    ids: Vec<String>,
    q: QueryPairs,
) -> AppResult<Response> {
    let id = path_id(kind, &ids)?;
    if !store::exists(&state.db, kind, &caller.workspace_id, &id).await? {
        return Err(not_found(kind, &id));
    }
    q.only(&["kind", "occurred_at", "author", "sort", "limit", "cursor"])?;
    let (contact, deal) = if kind == Kind::Deal {
        (None, Some(id))
    } else {
        (Some(id), None)
    };
    list_activities(&state, &caller, fmt, contact, deal, &q).await
}

/// One activity by its id or handle (activities cannot be changed or
/// deleted: the log is append-only).
async fn show_one(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    PathIds(ids): PathIds,
) -> AppResult<Response> {
    let id = path_id(Kind::Activity, &ids)?;
    let row = state
        .db
        .query_one_raw(stmt(
            state.db.get_database_backend(),
            &format!("SELECT {COLS} FROM activities WHERE workspace_id = ? AND id = ?"),
            vec![caller.workspace_id.clone().into(), id.clone().into()],
        ))
        .await?
        .ok_or_else(|| not_found(Kind::Activity, &id))?;
    let a = Activity::from_row(&row)?;
    Ok(fmt.reply(
        StatusCode::OK,
        || {
            let mut out = a.line();
            out.push('\n');
            out
        },
        || json!({"data": a.to_json()}),
    ))
}

async fn list_all(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    q: QueryPairs,
) -> AppResult<Response> {
    q.only(&[
        "contact",
        "deal",
        "kind",
        "occurred_at",
        "author",
        "sort",
        "limit",
        "cursor",
    ])?;
    let parse = |key: &str, kind: Kind| -> AppResult<Option<String>> {
        let hint = format!("send {key}= a {} id or handle", kind.name());
        match q.nonempty(key, &hint)? {
            None => Ok(None),
            Some(v) => parse_ref(kind, v).map(Some).map_err(|e| {
                AppError::invalid(
                    format!("{key}: {e}"),
                    format!("send {key}= a {} id or handle", kind.name()),
                )
            }),
        }
    };
    let contact = parse("contact", Kind::Contact)?;
    let deal = parse("deal", Kind::Deal)?;
    list_activities(&state, &caller, fmt, contact, deal, &q).await
}

/// `kind=call` or `kind=call,email`: the kinds to list (all when absent).
fn kinds_of(q: &QueryPairs) -> AppResult<Vec<String>> {
    let Some(v) = q.nonempty(
        "kind",
        "send kind= one kind or a comma-separated list, e.g. kind=call,meeting",
    )?
    else {
        return Ok(Vec::new());
    };
    let mut kinds: Vec<String> = Vec::new();
    for k in v.split(',').map(str::trim) {
        if !ACTIVITY_KINDS.contains(&k) {
            let shown: String = k.chars().take(60).collect();
            return Err(AppError::invalid(
                format!("kind {shown:?} is not an activity kind"),
                "send kind= one kind or a comma-separated list, e.g. kind=call,meeting",
            )
            .allowed(ACTIVITY_KINDS));
        }
        if !kinds.iter().any(|x| x == k) {
            kinds.push(k.to_owned());
        }
    }
    kinds.sort();
    Ok(kinds)
}

/// An activity is something that happened: its time is at most a day
/// ahead (time zones, clocks) and not before 1900. The log cannot be edited,
/// and a year-9999 typo would head every newest-first list for good.
fn when_it_happened(at: Ts, now: Ts) -> AppResult<()> {
    let latest = now.plus(std::time::Duration::from_secs(86_400));
    if at > latest {
        return Err(AppError::invalid(
            format!("occurred_at {} is more than a day ahead", at.render()),
            "an activity logs what happened: send the time it happened (or leave occurred_at out for now); for what is planned, set follow_up_at and follow_up_note on the contact or deal",
        ));
    }
    if at.get().year() < 1900 {
        return Err(AppError::invalid(
            format!("occurred_at {} is before 1900", at.render()),
            "send the time it happened, e.g. 2026-06-10T09:00:00Z",
        ));
    }
    Ok(())
}

fn limit_of(q: &QueryPairs) -> AppResult<u32> {
    match q.get("limit") {
        None => Ok(50),
        Some(v) => parse_limit(v)
            .map_err(|e| AppError::new(e.code, StatusCode::BAD_REQUEST, e.message, e.hint)),
    }
}

async fn list_activities(
    state: &AppState,
    caller: &Caller,
    fmt: Fmt,
    contact: Option<String>,
    deal: Option<String>,
    q: &QueryPairs,
) -> AppResult<Response> {
    let limit = limit_of(q)?;
    let kinds = kinds_of(q)?;
    let occurred = q.time_conditions("occurred_at")?;
    let ws = caller.workspace_id.as_str();
    // A cursor is bound to the filters it was made with.
    let mut scope = format!(
        "activities|{}|{}",
        contact.as_deref().unwrap_or(""),
        deal.as_deref().unwrap_or("")
    );
    if !kinds.is_empty() {
        scope.push_str(&format!("|{}", kinds.join(",")));
    }
    let mut sql = format!("SELECT {COLS} FROM activities WHERE workspace_id = ?");
    let mut vals: Vec<sea_orm::Value> = vec![ws.into()];
    if let Some(c) = &contact {
        sql.push_str(" AND contact_id = ?");
        vals.push(c.clone().into());
    }
    if let Some(d) = &deal {
        sql.push_str(" AND deal_id = ?");
        vals.push(d.clone().into());
    }
    if !kinds.is_empty() {
        sql.push_str(&format!(
            " AND kind IN ({})",
            vec!["?"; kinds.len()].join(", ")
        ));
        vals.extend(kinds.iter().map(|k| k.clone().into()));
    }
    for (op, at) in &occurred {
        sql.push_str(&format!(" AND occurred_at{}?", sql_op(*op)));
        vals.push((*at).into());
        scope.push_str(&format!("|{}:{}", op.name(), at.render()));
    }
    if let Some(v) = q.nonempty(
        "author",
        "send author= a user id or handle, e.g. author=u_…",
    )? {
        let id = parse_ref(Kind::User, v).map_err(|e| {
            AppError::invalid(
                format!("author: {e}"),
                "send author= a user id or handle as activity lines print it, e.g. author=user/u_…",
            )
        })?;
        sql.push_str(" AND author_id = ?");
        scope.push_str(&format!("|author={id}"));
        vals.push(id.into());
    }
    // Newest first by default; sort=occurred_at reads a log in order.
    let oldest_first = match q.get("sort") {
        None | Some("-occurred_at") => false,
        Some("occurred_at") => true,
        Some(other) => {
            let shown: String = other.chars().take(60).collect();
            return Err(AppError::invalid(
                format!("activities cannot be sorted by {shown:?}"),
                "send sort=occurred_at (oldest first) or sort=-occurred_at (newest first, the default)",
            )
            .allowed(&["occurred_at", "-occurred_at"]));
        }
    };
    let (cmp, dir) = if oldest_first {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if oldest_first {
        scope.push_str("|oldest");
    }
    if let Some(c) = q.get("cursor") {
        let (at, id) = read_time_cursor(&state.cursor_key, ws, &scope, c)?;
        sql.push_str(&format!(
            " AND (occurred_at {cmp} ? OR (occurred_at = ? AND id {cmp} ?))"
        ));
        vals.extend([at.into(), at.into(), id.into()]);
    }
    sql.push_str(&format!(
        " ORDER BY occurred_at {dir}, id {dir} LIMIT {}",
        limit + 1
    ));
    let rows = state
        .db
        .query_all_raw(stmt(state.db.get_database_backend(), &sql, vals))
        .await?;
    let mut items = rows
        .iter()
        .map(Activity::from_row)
        .collect::<AppResult<Vec<_>>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more {
        items
            .last()
            .map(|a| make_time_cursor(&state.cursor_key, ws, &scope, a.occurred_at, &a.id))
    } else {
        None
    };
    Ok(list_reply(
        fmt,
        "activities",
        &items,
        next,
        Activity::line,
        Activity::to_json,
    ))
}

struct Due {
    def: &'static KindDef,
    record: crate::records::Record,
    at: Ts,
}

async fn reminders(
    State(state): State<AppState>,
    caller: Caller,
    fmt: Fmt,
    q: QueryPairs,
) -> AppResult<Response> {
    q.only(&["days", "limit", "cursor"])?;
    let days: i64 = match q.get("days") {
        None => 0,
        Some(v) => v
            .parse()
            .ok()
            .filter(|d| (0..=3650).contains(d))
            .ok_or_else(|| {
                AppError::invalid(
                    format!(
                        "days={:?} must be a whole number of days from 0 to 3650",
                        v.chars().take(20).collect::<String>()
                    ),
                    "send days=7 to look a week ahead; leave it out for what is due now",
                )
            })?,
    };
    let limit = limit_of(&q)?;
    let now = Ts::now();
    let until = now.plus(std::time::Duration::from_secs(days as u64 * 86_400));
    // Contacts and deals in one order, (follow_up_at, id): ids of the two
    // kinds never tie. A cursor is bound to days=.
    let ws = caller.workspace_id.as_str();
    let scope = format!("reminders|days={days}");
    let after = q
        .get("cursor")
        .map(|c| read_time_cursor(&state.cursor_key, ws, &scope, c))
        .transpose()?;
    let mut due = Vec::new();
    for def in [&CONTACT, &DEAL] {
        let mut vals: Vec<sea_orm::Value> = vec![ws.into(), until.into()];
        let mut from = String::new();
        if let Some((at, id)) = &after {
            from = " AND (follow_up_at > ? OR (follow_up_at = ? AND id > ?))".to_owned();
            vals.extend([(*at).into(), (*at).into(), id.clone().into()]);
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE workspace_id = ? AND follow_up_at IS NOT NULL AND follow_up_at <= ?{from} ORDER BY follow_up_at ASC, id ASC LIMIT {}",
            store::columns(def),
            def.plural,
            limit + 1
        );
        let rows = state
            .db
            .query_all_raw(stmt(state.db.get_database_backend(), &sql, vals))
            .await?;
        for r in &rows {
            let record = store::from_row(def, r)?;
            if let Val::Time(at) = record.get("follow_up_at").clone() {
                due.push(Due { def, record, at });
            }
        }
    }
    due.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.record.id.cmp(&b.record.id)));
    let more = due.len() > limit as usize;
    due.truncate(limit as usize);
    // The record's whole line (a deal's status, amount and contact say
    // whether and whom to call), with due= after the handle.
    let line = |d: &Due| {
        let due = if d.at <= now { "overdue" } else { "upcoming" };
        let full = model::line(d.def, &d.record);
        match full.split_once(' ') {
            Some((h, rest)) => format!("{h} due={due} {rest}"),
            None => format!("{full} due={due}"),
        }
    };
    let to_json = |d: &Due| {
        let mut v = model::to_json(d.def, &d.record);
        v["due"] = json!(if d.at <= now { "overdue" } else { "upcoming" });
        v
    };
    let next = if more {
        due.last()
            .map(|d| make_time_cursor(&state.cursor_key, ws, &scope, d.at, &d.record.id))
    } else {
        None
    };
    Ok(list_reply(fmt, "reminders", &due, next, line, to_json))
}
