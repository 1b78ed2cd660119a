//! Record values: parsing a JSON body into checked changes, merging them into a
//! record, and rendering a record as a text line or JSON.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::kinds::{FType, FieldDef, KindDef};
use crate::db::Ts;
use crate::error::AppError;
use crate::wire::handle::{handle, parse_ref};
use crate::wire::line::LineBuilder;

/// Limits on user data.
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_LEN: usize = 100;
pub const MAX_CUSTOM_BYTES: usize = 64 * 1024;
pub const MAX_CUSTOM_DEPTH: usize = 8;
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Text(String),
    Int(i64),
    Time(Ts),
    Tags(Vec<String>),
    Json(Map<String, Value>),
}

impl Val {
    pub fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Text(s) => Value::String(s.clone()),
            Val::Int(i) => json!(i),
            Val::Time(t) => Value::String(t.render()),
            Val::Tags(t) => json!(t),
            Val::Json(m) => Value::Object(m.clone()),
        }
    }
}

/// A stored record.
#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub fields: BTreeMap<&'static str, Val>,
    pub created_at: Ts,
    pub updated_at: Ts,
}

impl Record {
    pub fn get(&self, name: &str) -> &Val {
        self.fields.get(name).unwrap_or(&Val::Null)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
}

fn bad(field: &str, why: impl std::fmt::Display, hint: impl Into<String>) -> AppError {
    AppError::invalid(format!("{field} {why}"), hint)
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Lowercase host from a domain or URL: `https://www.Acme.com/about` -> `acme.com`.
pub fn normalize_domain(raw: &str) -> Option<String> {
    let mut s = raw.trim().to_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            s = rest.to_string();
        }
    }
    let host = s.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("").trim_end_matches('.');
    let host = host.strip_prefix("www.").unwrap_or(host);
    let ok = host.contains('.')
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then(|| host.to_string())
}

/// Decimal places of a currency's minor unit (ISO 4217).
fn minor_units(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// `129900` + `USD` -> `1299.00 USD`.
pub fn money(cents: i64, currency: &str) -> String {
    let units = minor_units(currency);
    if units == 0 {
        return format!("{cents} {currency}");
    }
    let div = 10i64.pow(units);
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!(
        "{sign}{}.{:0w$} {currency}",
        abs / div as u64,
        abs % div as u64,
        w = units as usize
    )
}

/// Checks one body value against its field type.
pub fn parse_value(f: &FieldDef, v: &Value) -> Result<Val, AppError> {
    let name = f.name;
    if v.is_null() {
        return Ok(Val::Null);
    }
    let string = |v: &Value| -> Result<String, AppError> {
        v.as_str().map(str::to_string).ok_or_else(|| {
            bad(
                name,
                format!("must be a string, not {}", type_name(v)),
                format!("send \"{name}\": \"…\" or null"),
            )
        })
    };
    Ok(match f.ty {
        FType::Text { max, multiline } => {
            let s = string(v)?;
            let s = s.trim();
            if s.chars().count() > max {
                return Err(bad(
                    name,
                    format!("is longer than {max} characters"),
                    format!("shorten {name}"),
                ));
            }
            let ctrl =
                |c: char| c.is_control() && !(multiline && (c == '\n' || c == '\t' || c == '\r'));
            if s.chars().any(ctrl) {
                return Err(bad(
                    name,
                    "contains control characters",
                    if multiline {
                        "remove control characters other than newlines and tabs"
                    } else {
                        "send one line of text: no newlines or tabs"
                    },
                ));
            }
            if s.is_empty() {
                Val::Null
            } else {
                Val::Text(s.to_string())
            }
        }
        FType::Email => {
            let s = string(v)?;
            let s = s.trim();
            if s.is_empty() {
                return Ok(Val::Null);
            }
            let parts: Vec<&str> = s.split('@').collect();
            let ok = s.len() <= 254
                && parts.len() == 2
                && !parts[0].is_empty()
                && parts[1].contains('.')
                && !parts[1].starts_with('.')
                && !parts[1].ends_with('.')
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>(),;:\"[]\\".contains(c));
            if !ok {
                return Err(bad(
                    name,
                    format!("{:?} is not an email address", truncate(s)),
                    "send a bare address like jane@acme.com",
                ));
            }
            Val::Text(s.to_string())
        }
        FType::Domain => {
            let s = string(v)?;
            if s.trim().is_empty() {
                return Ok(Val::Null);
            }
            let d = normalize_domain(&s).ok_or_else(|| {
                bad(
                    name,
                    format!("{:?} is not a domain", truncate(&s)),
                    "send a host like acme.com (a URL is fine too)",
                )
            })?;
            Val::Text(d)
        }
        FType::Int => {
            let i = v
                .as_i64()
                .filter(|_| v.is_i64() || v.is_u64())
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("must be a whole number, not {}", type_name(v)),
                        format!(
                            "send {name} as an integer number of cents, e.g. 129900 for 1299.00"
                        ),
                    )
                })?;
            if !(0..=MAX_AMOUNT).contains(&i) {
                return Err(bad(
                    name,
                    format!("must be between 0 and {MAX_AMOUNT}"),
                    format!("send {name} in cents, e.g. 129900"),
                ));
            }
            Val::Int(i)
        }
        FType::Currency => {
            let s = string(v)?;
            if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(bad(
                    name,
                    format!(
                        "{:?} is not a currency code of three upper-case letters",
                        truncate(&s)
                    ),
                    "send three uppercase letters, e.g. USD or EUR",
                ));
            }
            Val::Text(s)
        }
        FType::Enum(allowed) => {
            let s = string(v)?;
            if !allowed.contains(&s.as_str()) {
                return Err(bad(
                    name,
                    format!("{:?} is not one of {}", truncate(&s), allowed.join(", ")),
                    format!("send one of: {}", allowed.join(", ")),
                )
                .allowed(allowed));
            }
            Val::Text(s)
        }
        FType::Ref(kind) => {
            let s = string(v)?;
            // An id pasted with spaces around it is still that id.
            let id = parse_ref(kind, s.trim()).map_err(|e| {
                bad(
                    name,
                    format!("is not a {} reference: {e}", kind.name()),
                    format!(
                        "send the id or handle of a {}, e.g. {}/{}_…",
                        kind.name(),
                        kind.name(),
                        kind.prefix()
                    ),
                )
            })?;
            Val::Text(id)
        }
        FType::Tags => {
            let arr = v.as_array().ok_or_else(|| {
                bad(
                    name,
                    format!("must be an array of strings, not {}", type_name(v)),
                    "send \"tags\": [\"vip\", \"renewal\"]",
                )
            })?;
            if arr.len() > MAX_TAGS {
                return Err(bad(
                    name,
                    format!("has more than {MAX_TAGS} tags"),
                    format!("send at most {MAX_TAGS} tags"),
                ));
            }
            let mut tags: Vec<String> = Vec::with_capacity(arr.len());
            for t in arr {
                let s = t.as_str().ok_or_else(|| {
                    bad(
                        name,
                        format!("must contain only strings, found {}", type_name(t)),
                        "send \"tags\": [\"vip\", \"renewal\"]",
                    )
                })?;
                let s = s.trim();
                if s.is_empty() || s.chars().count() > MAX_TAG_LEN {
                    return Err(bad(
                        name,
                        format!("has an empty tag or one longer than {MAX_TAG_LEN} characters"),
                        "send short non-empty tags",
                    ));
                }
                if s.contains(',') || s.chars().any(char::is_control) {
                    return Err(bad(
                        name,
                        format!(
                            "tag {:?} contains a comma or control character",
                            truncate(s)
                        ),
                        "tags are joined by commas in text output: use - or _ instead",
                    ));
                }
                // Tags match without regard to case, so they are kept so:
                // the first spelling stays.
                if !tags
                    .iter()
                    .any(|x: &String| x.to_lowercase() == s.to_lowercase())
                {
                    tags.push(s.to_string());
                }
            }
            if tags.is_empty() {
                Val::Null
            } else {
                Val::Tags(tags)
            }
        }
        FType::Custom => {
            let m = v.as_object().ok_or_else(|| {
                bad(
                    name,
                    format!("must be a JSON object, not {}", type_name(v)),
                    "send \"custom\": {\"key\": value}; a null value removes that key",
                )
            })?;
            if depth(v) > MAX_CUSTOM_DEPTH {
                return Err(bad(
                    name,
                    format!("is nested deeper than {MAX_CUSTOM_DEPTH} levels"),
                    "flatten the custom object",
                ));
            }
            if serde_json::to_string(v)
                .map(|s| s.len())
                .unwrap_or(usize::MAX)
                > MAX_CUSTOM_BYTES
            {
                return Err(bad(
                    name,
                    "is larger than 64 KiB",
                    "store large data elsewhere and keep a link in custom",
                ));
            }
            if let Some(k) = m.keys().find(|k| {
                k.is_empty() || k.chars().count() > 100 || k.chars().any(char::is_control)
            }) {
                return Err(bad(
                    name,
                    format!(
                        "key {:?} is empty, over 100 characters or has control characters",
                        truncate(k)
                    ),
                    "use short printable keys",
                ));
            }
            Val::Json(m.clone())
        }
        FType::Time => {
            let s = string(v)?;
            let t = crate::wire::time_fmt::parse(&s).map_err(|e| {
                bad(
                    name,
                    e,
                    format!("send {name} as RFC3339, e.g. 2026-06-10T09:00:00Z, or null to clear"),
                )
            })?;
            // Year 0001 is a typo, not a plan: every list sorted by the
            // field would start with it.
            if t.year() < 1900 {
                return Err(bad(
                    name,
                    format!("{} is before 1900", Ts::new(t).render()),
                    format!("send {name} as RFC3339, e.g. 2026-06-10T09:00:00Z, or null to clear"),
                ));
            }
            Val::Time(Ts::new(t))
        }
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a body into (field, value) changes in the kind's field order.
pub fn parse_changes(
    def: &KindDef,
    body: &Map<String, Value>,
) -> Result<Vec<(&'static FieldDef, Val)>, AppError> {
    let mut out = Vec::new();
    for f in def.fields {
        if let Some(v) = body.get(f.name) {
            // A field that always has a value (a deal's status) is not
            // cleared by null: that would quietly put its default back.
            if let (Value::Null, Some((_, default))) =
                (v, def.defaults.iter().find(|(n, _)| *n == f.name))
            {
                return Err(bad(
                    f.name,
                    "cannot be cleared: it always has a value",
                    format!(
                        "send \"{}\": \"{default}\" to set it back, or leave it out",
                        f.name
                    ),
                ));
            }
            out.push((f, parse_value(f, v)?));
        }
    }
    // Clearing a reminder clears its note too, unless the body sets one: a
    // stale note would come back with the next follow_up_at.
    if body.get("follow_up_at").is_some_and(Value::is_null)
        && !body.contains_key("follow_up_note")
        && let Some(note) = def.field("follow_up_note")
    {
        out.push((note, Val::Null));
    }
    Ok(out)
}

/// Applies changes to a copy of `before` (or to an empty record): `custom`
/// merges key by key (null removes a key), everything else replaces.
/// The merged `custom` is held to the same 64 KiB as one body's, so that
/// repeated merges cannot grow a record without bound.
pub fn apply(
    before: Option<&Record>,
    changes: &[(&'static FieldDef, Val)],
) -> Result<BTreeMap<&'static str, Val>, AppError> {
    let mut fields = before.map(|r| r.fields.clone()).unwrap_or_default();
    for (f, v) in changes {
        match (f.ty, v) {
            (FType::Custom, Val::Json(patch)) => {
                let mut merged = match fields.get(f.name) {
                    Some(Val::Json(m)) => m.clone(),
                    _ => Map::new(),
                };
                for (k, val) in patch {
                    if val.is_null() {
                        merged.remove(k);
                    } else {
                        merged.insert(k.clone(), val.clone());
                    }
                }
                let size = serde_json::to_string(&merged).map_or(usize::MAX, |s| s.len());
                if size > MAX_CUSTOM_BYTES {
                    return Err(bad(
                        f.name,
                        format!(
                            "would be {} KiB once merged with the keys the record already has, over the 64 KiB limit",
                            size.div_ceil(1024)
                        ),
                        "remove keys you no longer need (send \"KEY\": null), or store large data elsewhere and keep a link in custom",
                    ));
                }
                if merged.is_empty() {
                    fields.remove(f.name);
                } else {
                    fields.insert(f.name, Val::Json(merged));
                }
            }
            (_, Val::Null) => {
                fields.remove(f.name);
            }
            (_, v) => {
                fields.insert(f.name, v.clone());
            }
        }
    }
    Ok(fields)
}

/// Fills fields that may never be empty with their defaults.
pub fn with_defaults(
    def: &KindDef,
    mut fields: BTreeMap<&'static str, Val>,
) -> BTreeMap<&'static str, Val> {
    for (name, value) in def.defaults {
        if let Some(f) = def.field(name) {
            fields
                .entry(f.name)
                .or_insert_with(|| Val::Text(value.to_string()));
        }
    }
    fields
}

/// Field-level differences as `{"field": [before, after]}`.
pub fn diff(
    def: &KindDef,
    before: Option<&BTreeMap<&'static str, Val>>,
    after: &BTreeMap<&'static str, Val>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for f in def.fields {
        let b = before.and_then(|m| m.get(f.name)).unwrap_or(&Val::Null);
        let a = after.get(f.name).unwrap_or(&Val::Null);
        if a != b {
            out.insert(f.name.to_string(), json!([b.to_json(), a.to_json()]));
        }
    }
    out
}

/// The display name of a ref field: `company_id` -> `company`.
fn ref_key(name: &str) -> &str {
    name.strip_suffix("_id").unwrap_or(name)
}

/// One grepable line.
pub fn line(def: &KindDef, r: &Record) -> String {
    let mut l = LineBuilder::new(&handle(def.kind, &r.id));
    for f in def.fields {
        let v = r.get(f.name);
        match (f.ty, v) {
            (_, Val::Null) => {}
            (FType::Ref(kind), Val::Text(id)) => {
                l.field(ref_key(f.name), &handle(kind, id));
            }
            (FType::Int, Val::Int(i)) => {
                if f.name == "amount_cents"
                    && let Some(cur) = r.text("currency")
                {
                    l.field("amount", &money(*i, cur));
                }
                l.field(f.name, &i.to_string());
            }
            (_, Val::Text(s)) => {
                l.field(f.name, s);
            }
            (_, Val::Time(t)) => {
                l.field(f.name, &t.render());
            }
            (_, Val::Tags(t)) => {
                l.field(f.name, &t.join(","));
            }
            (_, Val::Json(m)) => {
                for (k, v) in m {
                    let key = format!("custom.{k}");
                    match v {
                        // A string that would read as a number, boolean or
                        // null bare is quoted, so the text keeps its type
                        // (numeric filters match only JSON numbers): JSON's
                        // and any other spelling of a number (010, +5, .5).
                        Value::String(s)
                            if s.parse::<f64>().is_ok()
                                || serde_json::from_str::<Value>(s).is_ok_and(|p| {
                                    !p.is_string() && !p.is_object() && !p.is_array()
                                }) =>
                        {
                            l.field_quoted(&key, s);
                        }
                        Value::String(s) => {
                            l.field(&key, s);
                        }
                        other => {
                            l.field(&key, &other.to_string());
                        }
                    }
                }
            }
            (_, Val::Int(i)) => {
                l.field(f.name, &i.to_string());
            }
        }
    }
    l.field("created_at", &r.created_at.render())
        .field("updated_at", &r.updated_at.render());
    l.finish()
}

/// The JSON object: `handle`, `id`, every field (null when empty), timestamps.
pub fn to_json(def: &KindDef, r: &Record) -> Value {
    serde_json::to_value(JsonRecord(def, r)).unwrap_or(Value::Null)
}

/// A record as JSON, serialized straight into the response (a page of 200
/// records no longer builds 200 maps first). Keys come out sorted, as in a
/// `serde_json` map: `handle`, `id`, every field (tags `[]` and custom `{}`
/// when empty), `amount` with a currency, `created_at`, `updated_at`.
pub struct JsonRecord<'a>(pub &'a KindDef, pub &'a Record);

enum JsonVal<'a> {
    Null,
    Str(&'a str),
    Owned(String),
    Int(i64),
    Tags(&'a [String]),
    Obj(&'a Map<String, Value>),
    EmptyList,
    EmptyObj,
}

impl serde::Serialize for JsonVal<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            JsonVal::Null => s.serialize_unit(),
            JsonVal::Str(v) => s.serialize_str(v),
            JsonVal::Owned(v) => s.serialize_str(v),
            JsonVal::Int(i) => s.serialize_i64(*i),
            JsonVal::Tags(t) => t.serialize(s),
            JsonVal::Obj(m) => m.serialize(s),
            JsonVal::EmptyList => s.serialize_seq(Some(0))?.end(),
            JsonVal::EmptyObj => s.serialize_map(Some(0))?.end(),
        }
    }
}

impl serde::Serialize for JsonRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let JsonRecord(def, r) = *self;
        let mut entries: Vec<(&str, JsonVal)> = Vec::with_capacity(def.fields.len() + 5);
        entries.push(("handle", JsonVal::Owned(handle(def.kind, &r.id))));
        entries.push(("id", JsonVal::Str(&r.id)));
        for f in def.fields {
            let v = match (f.ty, r.get(f.name)) {
                (FType::Tags, Val::Null) => JsonVal::EmptyList,
                (FType::Custom, Val::Null) => JsonVal::EmptyObj,
                (_, Val::Null) => JsonVal::Null,
                (_, Val::Text(t)) => JsonVal::Str(t),
                (_, Val::Int(i)) => JsonVal::Int(*i),
                (_, Val::Time(t)) => JsonVal::Owned(t.render()),
                (_, Val::Tags(t)) => JsonVal::Tags(t),
                (_, Val::Json(m)) => JsonVal::Obj(m),
            };
            entries.push((f.name, v));
        }
        // Every deal has the key, null without an amount and a currency.
        if def.field("amount_cents").is_some() {
            let amount = match (r.get("amount_cents"), r.text("currency")) {
                (Val::Int(c), Some(cur)) => JsonVal::Owned(money(*c, cur)),
                _ => JsonVal::Null,
            };
            entries.push(("amount", amount));
        }
        entries.push(("created_at", JsonVal::Owned(r.created_at.render())));
        entries.push(("updated_at", JsonVal::Owned(r.updated_at.render())));
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut m = s.serialize_map(Some(entries.len()))?;
        for (k, v) in &entries {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a record: sorted keys, `[]` and `{}` for empty tags and
    /// custom fields, `null` for other empty fields, and the formatted amount.
    #[test]
    fn records_serialize_with_sorted_keys_and_defaults() {
        let t = Ts::new(time::macros::datetime!(2026-11-29 10:00:00 UTC));
        let mut fields = BTreeMap::new();
        fields.insert("title", Val::Text("Renewal \"Q1\"".into()));
        fields.insert("amount_cents", Val::Int(123456));
        fields.insert("currency", Val::Text("USD".into()));
        let r = Record {
            id: "d1".into(),
            fields,
            created_at: t,
            updated_at: t,
        };
        let def = &crate::records::kinds::DEAL;
        let text = serde_json::to_string(&JsonRecord(def, &r)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(v["amount"], json!(money(123456, "USD")));
        assert_eq!(v["amount_cents"], json!(123456));
        assert_eq!(v["title"], json!("Renewal \"Q1\""));
        assert_eq!(v["tags"], json!([]));
        assert_eq!(v["custom"], json!({}));
        assert_eq!(v["contact_id"], Value::Null);
        assert_eq!(v["handle"], json!(handle(def.kind, "d1")));
        assert_eq!(v["created_at"], json!(t.render()));
        // The object's text keeps serde_json's order too (no duplicate keys).
        let first = text.find("\"amount\"").unwrap();
        assert!(first < text.find("\"amount_cents\"").unwrap());
        assert_eq!(keys.len(), def.fields.len() + 5);
        // Without an amount the key is still there, null.
        let r = Record {
            fields: BTreeMap::new(),
            ..r
        };
        let v = to_json(def, &r);
        assert!(v.as_object().unwrap().contains_key("amount"), "{v}");
        assert_eq!(v["amount"], Value::Null);
    }

    #[test]
    fn domains_normalise_to_a_lowercase_host() {
        assert_eq!(
            normalize_domain("https://www.Acme.com/about?x=1").as_deref(),
            Some("acme.com")
        );
        assert_eq!(normalize_domain("ACME.io.").as_deref(), Some("acme.io"));
        assert_eq!(normalize_domain("not a domain"), None);
        assert_eq!(normalize_domain("localhost"), None);
    }

    #[test]
    fn money_uses_minor_units() {
        assert_eq!(money(129900, "USD"), "1299.00 USD");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(1500, "JPY"), "1500 JPY");
        assert_eq!(money(1234, "KWD"), "1.234 KWD");
    }

    #[test]
    fn custom_merges_key_by_key() {
        let f = &super::super::CONTACT.fields[7];
        let before = Record {
            id: "c_x".into(),
            fields: [(
                "custom",
                Val::Json(json!({"a": 1, "b": 2}).as_object().unwrap().clone()),
            )]
            .into_iter()
            .collect(),
            created_at: Ts::now(),
            updated_at: Ts::now(),
        };
        let patch = parse_value(f, &json!({"b": null, "c": 3})).unwrap();
        let after = apply(Some(&before), &[(f, patch)]).unwrap();
        assert_eq!(
            after["custom"],
            Val::Json(json!({"a": 1, "c": 3}).as_object().unwrap().clone())
        );
    }
}
