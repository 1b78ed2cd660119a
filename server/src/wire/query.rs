//! The list query language of SPEC §6 (`field=[op:]value`, `search`, `sort`,
//! `limit`, `cursor`): which fields each record kind exposes, how a query
//! string's pairs parse into a validated `ListQuery`, and the instructive
//! errors for everything else. Compiling a `ListQuery` to SQL, and checking a
//! cursor, happen elsewhere; everything here is pure so the CLI can validate
//! the same grammar before sending.

use std::fmt;

use time::OffsetDateTime;

use super::handle::{self, Kind};
use super::time_fmt;

/// What a field holds, which decides its operators and how operands parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Int,
    Time,
    Enum(&'static [&'static str]),
    /// A link to another record; operands are that kind's ids or handles.
    Ref(Kind),
    Tags,
    /// `custom.KEY`: user-defined, compared as text.
    Custom,
    /// The record's own id.
    Id(Kind),
}

impl FieldType {
    /// The operators that make sense for this type, in `Op::ALL` order.
    pub fn ops(self) -> &'static [Op] {
        use Op::*;
        match self {
            FieldType::Text | FieldType::Custom => &Op::ALL,
            FieldType::Int | FieldType::Time => &[Eq, Ne, Gt, Gte, Lt, Lte, In, IsNull, NotNull],
            FieldType::Enum(_) | FieldType::Ref(_) | FieldType::Tags => {
                &[Eq, Ne, In, IsNull, NotNull]
            }
            // An id is never null, so only comparisons with ids are offered.
            FieldType::Id(_) => &[Eq, Ne, In],
        }
    }

    fn op_names(self) -> Vec<String> {
        self.ops().iter().map(|op| op.name().to_owned()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    pub sortable: bool,
}

/// The filterable and sortable fields of one record kind.
#[derive(Debug, PartialEq, Eq)]
pub struct Schema {
    pub kind: Kind,
    pub fields: &'static [FieldSpec],
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn for_kind(kind: Kind) -> Option<&'static Schema> {
        [&CONTACT, &COMPANY, &DEAL]
            .into_iter()
            .find(|s| s.kind == kind)
    }

    pub fn sortable_names(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.sortable)
            .map(|f| f.name.to_owned())
            .collect()
    }

    /// Every parameter name a list query on this kind accepts, for `allowed`.
    pub fn param_names(&self) -> Vec<String> {
        self.fields
            .iter()
            .map(|f| f.name.to_owned())
            .chain(
                ["custom.KEY", "search", "sort", "limit", "cursor"]
                    .into_iter()
                    .map(str::to_owned),
            )
            .collect()
    }

    /// The sort used when none is asked for: newest first.
    pub fn default_sort(&'static self) -> Sort {
        let field = self
            .field("created_at")
            .or_else(|| self.fields.iter().find(|f| f.sortable))
            .or(self.fields.first())
            .expect("a schema has at least one field");
        Sort { field, desc: true }
    }
}

const fn f(name: &'static str, ty: FieldType, sortable: bool) -> FieldSpec {
    FieldSpec { name, ty, sortable }
}

pub const DEAL_STATUSES: &[&str] = &["open", "won", "lost"];

pub static CONTACT: Schema = Schema {
    kind: Kind::Contact,
    fields: &[
        f("id", FieldType::Id(Kind::Contact), true),
        f("name", FieldType::Text, true),
        f("email", FieldType::Text, true),
        f("phone", FieldType::Text, false),
        f("title", FieldType::Text, true),
        f("company_id", FieldType::Ref(Kind::Company), false),
        f("stage", FieldType::Text, true),
        f("tags", FieldType::Tags, false),
        f("follow_up_at", FieldType::Time, true),
        f("follow_up_note", FieldType::Text, false),
        f("created_at", FieldType::Time, true),
        f("updated_at", FieldType::Time, true),
    ],
};

pub static COMPANY: Schema = Schema {
    kind: Kind::Company,
    fields: &[
        f("id", FieldType::Id(Kind::Company), true),
        f("name", FieldType::Text, true),
        f("domain", FieldType::Text, true),
        f("industry", FieldType::Text, true),
        f("tags", FieldType::Tags, false),
        f("created_at", FieldType::Time, true),
        f("updated_at", FieldType::Time, true),
    ],
};

pub static DEAL: Schema = Schema {
    kind: Kind::Deal,
    fields: &[
        f("id", FieldType::Id(Kind::Deal), true),
        f("title", FieldType::Text, true),
        f("amount_cents", FieldType::Int, true),
        f("currency", FieldType::Text, true),
        f("stage", FieldType::Text, true),
        f("status", FieldType::Enum(DEAL_STATUSES), true),
        f("contact_id", FieldType::Ref(Kind::Contact), false),
        f("company_id", FieldType::Ref(Kind::Company), false),
        f("tags", FieldType::Tags, false),
        f("follow_up_at", FieldType::Time, true),
        f("follow_up_note", FieldType::Text, false),
        f("created_at", FieldType::Time, true),
        f("updated_at", FieldType::Time, true),
    ],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    In,
    IsNull,
    NotNull,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Eq,
        Op::Ne,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::Like,
        Op::In,
        Op::IsNull,
        Op::NotNull,
    ];
    pub const ALL_NAMES: [&'static str; 10] = [
        "eq", "ne", "gt", "gte", "lt", "lte", "like", "in", "is:null", "not:null",
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Like => "like",
            Op::In => "in",
            Op::IsNull => "is:null",
            Op::NotNull => "not:null",
        }
    }

    /// The operators written `op:operand`; the null tests are whole values.
    fn from_prefix(s: &str) -> Option<Op> {
        Op::ALL[..8].iter().copied().find(|op| op.name() == s)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the text before a value's first `:` reads as an attempted
/// operator: a lower-case word (letters and `_`, 2 to 12 long), unless what
/// follows is `//` (a URL's scheme). Such a prefix that is no operator is
/// refused rather than taken as part of an `eq` value, which would match
/// nothing and look like an empty result; text that really starts with
/// `word:` is matched with `eq:word:…`.
fn looks_like_op(prefix: &str, rest: &str) -> bool {
    (2..=12).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && !rest.starts_with("//")
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Text(String),
    Int(i64),
    /// UTC, truncated to microseconds.
    Time(OffsetDateTime),
}

impl Scalar {
    /// The wire spelling, which parses back to the same scalar.
    pub fn to_wire(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Time(t) => time_fmt::format(*t),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// `is:null` / `not:null`.
    None,
    One(Scalar),
    /// `in:`; never empty.
    Many(Vec<Scalar>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Field(&'static FieldSpec),
    /// The KEY of `custom.KEY`.
    Custom(String),
}

impl Target {
    pub fn ty(&self) -> FieldType {
        match self {
            Target::Field(spec) => spec.ty,
            Target::Custom(_) => FieldType::Custom,
        }
    }

    /// The parameter name: `stage`, `custom.KEY`.
    pub fn param_name(&self) -> String {
        match self {
            Target::Field(spec) => spec.name.to_owned(),
            Target::Custom(key) => format!("custom.{key}"),
        }
    }
}

/// One validated `field=[op:]value` condition. Operand types always match the
/// target: Int fields hold `Scalar::Int`, Time fields `Scalar::Time`, and every
/// other type `Scalar::Text` (for Ref and Id, the bare id).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub target: Target,
    pub op: Op,
    pub operand: Operand,
}

impl Filter {
    /// The query parameter that parses back to this filter. The operator is
    /// always spelled out, so values that look like operators stay values.
    pub fn to_param(&self) -> (String, String) {
        let value = match &self.operand {
            Operand::None => self.op.name().to_owned(),
            Operand::One(s) => format!("{}:{}", self.op.name(), s.to_wire()),
            Operand::Many(items) => {
                let items: Vec<String> = items.iter().map(Scalar::to_wire).collect();
                format!("{}:{}", self.op.name(), items.join(","))
            }
        };
        (self.target.param_name(), value)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub field: &'static FieldSpec,
    pub desc: bool,
}

impl Sort {
    /// `field` or `-field`.
    pub fn to_param(&self) -> String {
        format!("{}{}", if self.desc { "-" } else { "" }, self.field.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListQuery {
    pub filters: Vec<Filter>,
    /// Trimmed, 1..=200 characters.
    pub search: Option<String>,
    pub sort: Sort,
    pub limit: u32,
    /// As sent; verifying it is the caller's job.
    pub cursor: Option<String>,
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;
/// Longest filter value, in characters.
pub const MAX_VALUE_CHARS: usize = 1000;
/// Most items in one `in:` list.
pub const MAX_IN_ITEMS: usize = 100;
/// Most filter parameters in one query; beyond this the SQL gets silly and no
/// agent needs it.
pub const MAX_FILTERS: usize = 50;
pub const MAX_SEARCH_CHARS: usize = 200;
pub const MAX_CURSOR_CHARS: usize = 2000;

/// A refused query, shaped like the API's error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    /// `unknown_field`, `unknown_operator` or `invalid_request`.
    pub code: &'static str,
    pub message: String,
    pub hint: String,
    pub allowed: Vec<String>,
}

impl QueryError {
    fn new(code: &'static str, message: String, hint: impl Into<String>) -> Self {
        QueryError {
            code,
            message,
            hint: hint.into(),
            allowed: Vec::new(),
        }
    }

    fn invalid(message: String, hint: impl Into<String>) -> Self {
        QueryError::new("invalid_request", message, hint)
    }

    fn allowing(mut self, allowed: Vec<String>) -> Self {
        self.allowed = allowed;
        self
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for QueryError {}

/// User text quoted for an error message: shortened, and with anything
/// unprintable escaped so the message stays one line.
fn show(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Parses a query string's decoded pairs, in order, into a validated query.
/// `format` is accepted and ignored: it picks the response format elsewhere.
pub fn parse_list_query(
    schema: &'static Schema,
    pairs: &[(String, String)],
) -> Result<ListQuery, QueryError> {
    let mut filters = Vec::new();
    let mut search = None;
    let mut sort = None;
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in pairs {
        match key.as_str() {
            "format" => {}
            "search" => set_once(&mut search, "search", parse_search(value)?)?,
            "sort" => set_once(&mut sort, "sort", parse_sort(schema, value)?)?,
            "limit" => set_once(&mut limit, "limit", parse_limit(value)?)?,
            "cursor" => set_once(&mut cursor, "cursor", parse_cursor(value)?)?,
            _ => {
                let target = parse_target(schema, key)?;
                if filters.len() == MAX_FILTERS {
                    return Err(QueryError::invalid(
                        format!("too many filters: at most {MAX_FILTERS} per query"),
                        "combine conditions with in: lists, or narrow with search",
                    ));
                }
                filters.push(parse_filter(target, value)?);
            }
        }
    }
    Ok(ListQuery {
        filters,
        search,
        sort: sort.unwrap_or_else(|| schema.default_sort()),
        limit: limit.unwrap_or(DEFAULT_LIMIT),
        cursor,
    })
}

fn set_once<T>(slot: &mut Option<T>, param: &str, value: T) -> Result<(), QueryError> {
    if slot.is_some() {
        return Err(QueryError::invalid(
            format!("{param} is given more than once"),
            format!("send {param} at most once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_search(raw: &str) -> Result<String, QueryError> {
    let text = raw.trim();
    let hint =
        format!("send search=TEXT with 1 to {MAX_SEARCH_CHARS} characters, or leave search out");
    if text.is_empty() {
        return Err(QueryError::invalid("search is empty".to_owned(), hint));
    }
    if text.contains('\0') {
        return Err(QueryError::invalid(
            "search contains a NUL character".to_owned(),
            hint,
        ));
    }
    if text.chars().count() > MAX_SEARCH_CHARS {
        return Err(QueryError::invalid(
            format!("search is longer than {MAX_SEARCH_CHARS} characters"),
            hint,
        ));
    }
    Ok(text.to_owned())
}

fn parse_sort(schema: &'static Schema, raw: &str) -> Result<Sort, QueryError> {
    let (name, desc) = match raw.strip_prefix('-') {
        Some(name) => (name, true),
        None => (raw, false),
    };
    match schema.field(name) {
        Some(field) if field.sortable => Ok(Sort { field, desc }),
        _ => {
            let hint = "send sort=FIELD (ascending) or sort=-FIELD (descending) with one of the allowed fields";
            let message = if raw.is_empty() {
                "sort is empty".to_owned()
            } else {
                format!("cannot sort {} by {}", schema.kind.name(), show(name))
            };
            Err(QueryError::new("unknown_field", message, hint).allowing(schema.sortable_names()))
        }
    }
}

/// Parses one `limit` value: a decimal integer from 1 to `MAX_LIMIT`.
pub fn parse_limit(raw: &str) -> Result<u32, QueryError> {
    let range_hint =
        format!("send limit=N with N from 1 to {MAX_LIMIT}, or leave it out for {DEFAULT_LIMIT}");
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QueryError::invalid(
            format!("limit must be a whole number, got {}", show(raw)),
            range_hint,
        )
        .allowing(vec![format!("1..{MAX_LIMIT}")]));
    }
    // All digits, so the only parse failure left is overflow, which is just a
    // very large number.
    let n: u64 = raw.parse().unwrap_or(u64::MAX);
    if n == 0 {
        return Err(
            QueryError::invalid("limit must be at least 1".to_owned(), range_hint)
                .allowing(vec![format!("1..{MAX_LIMIT}")]),
        );
    }
    if n > u64::from(MAX_LIMIT) {
        return Err(QueryError::invalid(
            format!("limit {} is over the maximum of {MAX_LIMIT}", show(raw)),
            format!(
                "send limit={MAX_LIMIT} or less and fetch further pages with cursor=… from the `# next:` line (JSON: next_cursor)"
            ),
        )
        .allowing(vec![format!("1..{MAX_LIMIT}")]));
    }
    // n is at most MAX_LIMIT here.
    Ok(u32::try_from(n).unwrap_or(MAX_LIMIT))
}

fn parse_cursor(raw: &str) -> Result<String, QueryError> {
    let hint = "send the cursor exactly as the previous page gave it (`# next:` line or next_cursor), with the other parameters unchanged; leave it out for the first page";
    if raw.is_empty() {
        return Err(QueryError::invalid("cursor is empty".to_owned(), hint));
    }
    if raw.chars().count() > MAX_CURSOR_CHARS {
        return Err(QueryError::invalid(
            format!("cursor is longer than {MAX_CURSOR_CHARS} characters"),
            hint,
        ));
    }
    Ok(raw.to_owned())
}

fn is_custom_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_target(schema: &'static Schema, key: &str) -> Result<Target, QueryError> {
    if let Some(custom) = key.strip_prefix("custom.") {
        if is_custom_key(custom) {
            return Ok(Target::Custom(custom.to_owned()));
        }
        return Err(QueryError::new(
            "unknown_field",
            format!("cannot filter on custom key {}", show(custom)),
            "custom keys used in filters are 1 to 64 characters of A-Z a-z 0-9 _ -, as in custom.plan=pro",
        )
        .allowing(schema.param_names()));
    }
    match schema.field(key) {
        Some(spec) => Ok(Target::Field(spec)),
        None => Err(QueryError::new(
            "unknown_field",
            format!("{} has no field {}", schema.kind.name(), show(key)),
            {
                let names = schema.param_names();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                match super::suggest::did_you_mean(key, &names) {
                    Some(m) => format!("did you mean {m:?}? Filter with one of the allowed fields (or custom.KEY) as FIELD=[op:]value; see GET /help"),
                    None => "filter with one of the allowed fields (or custom.KEY) as FIELD=[op:]value; see GET /help".to_owned(),
                }
            },
        )
        .allowing(schema.param_names())),
    }
}

fn parse_filter(target: Target, value: &str) -> Result<Filter, QueryError> {
    let name = target.param_name();
    let ty = target.ty();
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(QueryError::invalid(
            format!("the value of {name} is longer than {MAX_VALUE_CHARS} characters"),
            "send a shorter value, or use like: with part of it",
        ));
    }
    if value.contains('\0') {
        return Err(QueryError::invalid(
            format!("the value of {name} contains a NUL character"),
            "remove the NUL (%00) from the value",
        ));
    }
    let (op, operand) = split_op(&name, ty, value)?;
    if !ty.ops().contains(&op) {
        return Err(QueryError::new(
            "unknown_operator",
            format!("{name} does not support the {op} operator"),
            format!("use one of the allowed operators for {name}, as {name}=op:value"),
        )
        .allowing(ty.op_names()));
    }
    let operand = match op {
        Op::IsNull | Op::NotNull => Operand::None,
        Op::In => {
            let items: Vec<&str> = operand.split(',').map(str::trim).collect();
            if items.iter().any(|i| i.is_empty()) {
                let allowed = match ty {
                    FieldType::Enum(values) => values.iter().map(|v| (*v).to_owned()).collect(),
                    _ => vec![format!("{name}=in:A,B,C")],
                };
                return Err(QueryError::invalid(
                    format!("{name}=in: needs a comma-separated list without empty items"),
                    format!("send {name}=in:A,B,C"),
                )
                .allowing(allowed));
            }
            if items.len() > MAX_IN_ITEMS {
                return Err(QueryError::invalid(
                    format!(
                        "{name}=in: has {} items; at most {MAX_IN_ITEMS} are allowed",
                        items.len()
                    ),
                    "split the list over several requests",
                )
                .allowing(vec![format!("1..{MAX_IN_ITEMS} items")]));
            }
            Operand::Many(
                items
                    .into_iter()
                    .map(|i| parse_scalar(&name, ty, i))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => {
            if operand.is_empty() {
                return Err(QueryError::invalid(
                    format!("{name}={} has no value", value),
                    format!(
                        "to match a missing or empty {name} send {name}=is:null; otherwise put the value after the operator"
                    ),
                ));
            }
            // A custom number compares numerically only when it is finite:
            // 1e400 would quietly fall back to comparing text.
            if ty == FieldType::Custom
                && matches!(op, Op::Gt | Op::Gte | Op::Lt | Op::Lte)
                && operand.bytes().any(|b| b.is_ascii_digit())
                && operand.parse::<f64>().is_ok_and(|n| !n.is_finite())
            {
                return Err(QueryError::invalid(
                    format!("{name}={} is a number too large to compare", show(value)),
                    format!("send a number within ±1.7e308, e.g. {name}=gte:100000"),
                ));
            }
            Operand::One(parse_scalar(&name, ty, operand)?)
        }
    };
    Ok(Filter {
        target,
        op,
        operand,
    })
}

/// The operators a time condition outside a record list takes (an
/// activity's `occurred_at`, which is never missing).
pub const TIME_CONDITION_OPS: [Op; 6] = [Op::Eq, Op::Ne, Op::Gt, Op::Gte, Op::Lt, Op::Lte];

/// One `NAME=[op:]time` condition on a time that is not a record field
/// (`occurred_at=gte:2026-06-01T00:00:00Z` on activities): the operator and
/// the time, with the same errors and hints as a record's time filter.
pub fn parse_time_condition(name: &str, value: &str) -> Result<(Op, OffsetDateTime), QueryError> {
    if value.chars().count() > MAX_VALUE_CHARS || value.contains('\0') {
        return Err(QueryError::invalid(
            format!("the value of {name} is not a time"),
            format!("send {name}=gte:2026-06-10T00:00:00Z (RFC 3339)"),
        ));
    }
    let (op, operand) = split_op(name, FieldType::Time, value)?;
    if !TIME_CONDITION_OPS.contains(&op) {
        return Err(QueryError::new(
            "unknown_operator",
            format!("{name} does not support the {op} operator"),
            format!(
                "use one of the allowed operators as {name}=op:TIME; for a range send {name} twice, e.g. {name}=gte:2026-06-01T00:00:00Z&{name}=lt:2026-07-01T00:00:00Z"
            ),
        )
        .allowing(TIME_CONDITION_OPS.iter().map(|o| o.name().to_owned()).collect()));
    }
    if operand.is_empty() {
        return Err(QueryError::invalid(
            format!("{name}={} has no time", show(value)),
            format!("put the time after the operator, e.g. {name}=gte:2026-06-10T00:00:00Z"),
        ));
    }
    Ok((op, parse_time(name, operand)?))
}

/// Splits `[op:]value`. A known operator name before the first `:` is an
/// operator; a lower-case word there that is not one is refused (see
/// [`looks_like_op`]), so a typo never silently becomes an equality test
/// that matches nothing; anything else is part of an `eq` value.
fn split_op<'v>(name: &str, ty: FieldType, value: &'v str) -> Result<(Op, &'v str), QueryError> {
    match value {
        "is:null" => return Ok((Op::IsNull, "")),
        "not:null" => return Ok((Op::NotNull, "")),
        _ => {}
    }
    let Some((prefix, rest)) = value.split_once(':') else {
        return Ok((Op::Eq, value));
    };
    if let Some(op) = Op::from_prefix(prefix) {
        return Ok((op, rest));
    }
    if looks_like_op(prefix, rest) {
        return Err(QueryError::new(
            "unknown_operator",
            format!("{name}={} uses an unknown operator {}", show(value), show(prefix)),
            format!(
                "use one of the allowed operators as {name}=op:value ({name}=is:null and {name}=not:null test for a missing value); to match text that starts with `{prefix}:` literally, send {name}=eq:{prefix}:…"
            ),
        )
        .allowing(ty.op_names()));
    }
    Ok((Op::Eq, value))
}

fn parse_scalar(name: &str, ty: FieldType, raw: &str) -> Result<Scalar, QueryError> {
    match ty {
        FieldType::Text | FieldType::Custom | FieldType::Tags => Ok(Scalar::Text(raw.to_owned())),
        FieldType::Int => raw.parse::<i64>().map(Scalar::Int).map_err(|_| {
            QueryError::invalid(
                format!("{name} needs a whole number, got {}", show(raw)),
                format!("send digits only, e.g. {name}=gte:100000 (amounts are in cents)"),
            )
            .allowing(vec!["a whole number, e.g. 100000 or -5".to_owned()])
        }),
        FieldType::Time => parse_time(name, raw).map(Scalar::Time),
        FieldType::Enum(values) => {
            if values.contains(&raw) {
                Ok(Scalar::Text(raw.to_owned()))
            } else {
                Err(QueryError::invalid(
                    format!("{name} cannot be {}", show(raw)),
                    format!("send {name}= one of the allowed values"),
                )
                .allowing(values.iter().map(|v| (*v).to_owned()).collect()))
            }
        }
        FieldType::Ref(kind) | FieldType::Id(kind) => {
            handle::parse_ref(kind, raw).map(Scalar::Text).map_err(|e| {
                QueryError::invalid(
                    format!("{name}: {e}"),
                    format!(
                        "send {name}={} or {name}={} (the id or handle from a {} line)",
                        kind.example_id(),
                        handle::handle(kind, &kind.example_id()),
                        kind.name()
                    ),
                )
                .allowing(vec![
                    kind.example_id(),
                    handle::handle(kind, &kind.example_id()),
                ])
            })
        }
    }
}

/// A time in a filter: RFC 3339, with a hint that names `%2B` when an
/// unencoded `+` arrived as a space.
fn parse_time(name: &str, raw: &str) -> Result<OffsetDateTime, QueryError> {
    time_fmt::parse(raw).map_err(|expected| {
        // A `+01:00` offset sent unencoded arrives as a space.
        let plus = if raw.contains(' ') {
            " (a + in a URL must be sent as %2B: a +01:00 offset is %2B01:00)"
        } else {
            ""
        };
        QueryError::invalid(
            format!("{name} needs a time, got {}", show(raw)),
            format!("{expected}; e.g. {name}=gte:2026-06-10T00:00:00Z{plus}"),
        )
        .allowing(vec![
            "2026-06-10T09:00:00Z".to_owned(),
            "2026-06-10T11:00:00.5+02:00".to_owned(),
        ])
    })
}

/// A deterministic digest-ready string of what selects and orders the rows
/// (filters in sorted order, search, sort) but not `limit` or `cursor`, so a
/// cursor can be bound to its query while the page size may change. Operands
/// are normalised (bare ids, UTC times), so equivalent spellings agree.
pub fn canonical_fingerprint(q: &ListQuery) -> String {
    let mut filters: Vec<(String, String)> = q.filters.iter().map(Filter::to_param).collect();
    filters.sort();
    // JSON keeps every part unambiguous whatever characters values hold.
    serde_json::json!({
        "filters": filters,
        "search": q.search,
        "sort": q.sort.to_param(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn pairs(ps: &[(&str, &str)]) -> Vec<(String, String)> {
        ps.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(schema: &'static Schema, ps: &[(&str, &str)]) -> Result<ListQuery, QueryError> {
        parse_list_query(schema, &pairs(ps))
    }

    fn one(schema: &'static Schema, key: &str, value: &str) -> Filter {
        let q = parse(schema, &[(key, value)]).unwrap_or_else(|e| panic!("{key}={value}: {e:?}"));
        assert_eq!(q.filters.len(), 1);
        q.filters.into_iter().next().unwrap()
    }

    fn err(schema: &'static Schema, ps: &[(&str, &str)]) -> QueryError {
        let e = parse(schema, ps).expect_err("should be refused");
        assert!(!e.message.is_empty() && !e.hint.is_empty(), "{e:?}");
        e
    }

    fn text(s: &str) -> Scalar {
        Scalar::Text(s.to_owned())
    }

    const C1: &str = "c_7k2m9q4x1d3f";
    const C2: &str = "c_0000000000zz";
    const CO: &str = "co_p3v8n2w6za00";

    #[test]
    fn custom_numbers_too_large_to_compare_are_refused() {
        let e = err(&CONTACT, &[("custom.score", "gt:1e400")]);
        assert!(e.message.contains("too large"), "{e:?}");
        let f = one(&CONTACT, "custom.score", "gt:1e300");
        assert_eq!(f.operand, Operand::One(text("1e300")));
        // Text that merely parses as a float is still text.
        one(&CONTACT, "custom.mood", "gt:infinity");
    }

    #[test]
    fn time_conditions_outside_a_record_list() {
        assert_eq!(
            parse_time_condition("occurred_at", "gte:2026-06-01T02:00:00+02:00").unwrap(),
            (Op::Gte, datetime!(2026-06-01 00:00:00 UTC))
        );
        assert_eq!(
            parse_time_condition("occurred_at", "2026-06-01T00:00:00Z").unwrap(),
            (Op::Eq, datetime!(2026-06-01 00:00:00 UTC))
        );
        for (value, code) in [
            ("in:2026-06-01T00:00:00Z", "unknown_operator"),
            ("is:null", "unknown_operator"),
            ("like:2026", "unknown_operator"),
            ("after:2026-06-01T00:00:00Z", "unknown_operator"),
            ("gte:", "invalid_request"),
            ("gte:yesterday", "invalid_request"),
            ("gte:2026-06-01T00:00:00 02:00", "invalid_request"),
            ("gte:2026-06-01\0", "invalid_request"),
        ] {
            let e = parse_time_condition("occurred_at", value).expect_err(value);
            assert_eq!(e.code, code, "{value}: {e:?}");
            assert!(e.message.contains("occurred_at"), "{value}: {e:?}");
            assert!(e.hint.contains("occurred_at="), "{value}: {e:?}");
        }
        let e = parse_time_condition("occurred_at", "in:2026-06-01T00:00:00Z").unwrap_err();
        assert_eq!(e.allowed, ["eq", "ne", "gt", "gte", "lt", "lte"]);
        let e = parse_time_condition("occurred_at", "gte:2026-06-01T00:00:00 02:00").unwrap_err();
        assert!(e.hint.contains("%2B"), "{e:?}");
    }

    #[test]
    fn defaults() {
        let q = parse(&CONTACT, &[]).unwrap();
        assert_eq!(q.filters, vec![]);
        assert_eq!(q.search, None);
        assert_eq!(q.sort.field.name, "created_at");
        assert!(q.sort.desc);
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.cursor, None);
        for s in [&CONTACT, &COMPANY, &DEAL] {
            assert_eq!(s.default_sort().field.name, "created_at");
            assert_eq!(Schema::for_kind(s.kind), Some(s));
        }
        assert_eq!(Schema::for_kind(Kind::User), None);
    }

    #[test]
    fn format_is_ignored() {
        let q = parse(&DEAL, &[("format", "json"), ("format", "x")]).unwrap();
        assert_eq!(q.filters, vec![]);
    }

    #[test]
    fn text_supports_every_op() {
        let name = Target::Field(CONTACT.field("name").unwrap());
        for (value, op, operand) in [
            ("Jane", Op::Eq, Operand::One(text("Jane"))),
            ("eq:Jane", Op::Eq, Operand::One(text("Jane"))),
            ("ne:Jane", Op::Ne, Operand::One(text("Jane"))),
            ("gt:J", Op::Gt, Operand::One(text("J"))),
            ("gte:J", Op::Gte, Operand::One(text("J"))),
            ("lt:J", Op::Lt, Operand::One(text("J"))),
            ("lte:J", Op::Lte, Operand::One(text("J"))),
            ("like:ja*", Op::Like, Operand::One(text("ja*"))),
            (
                "in:Jane,Joe",
                Op::In,
                Operand::Many(vec![text("Jane"), text("Joe")]),
            ),
            (
                "in: Jane , Joe",
                Op::In,
                Operand::Many(vec![text("Jane"), text("Joe")]),
            ),
            ("is:null", Op::IsNull, Operand::None),
            ("not:null", Op::NotNull, Operand::None),
        ] {
            assert_eq!(
                one(&CONTACT, "name", value),
                Filter {
                    target: name.clone(),
                    op,
                    operand
                },
                "{value}"
            );
        }
    }

    #[test]
    fn a_word_before_a_colon_that_is_no_operator_is_refused() {
        for v in [
            "equals:lead",
            "foo:bar",
            "nin:a,b",
            "has:x",
            "regex:^a",
            "exact:lead",
            "not_in:a",
            "isnull:",
            "contains:lea",
            "re:call",
        ] {
            let e = err(&CONTACT, &[("stage", v)]);
            assert_eq!(e.code, "unknown_operator", "{v}");
            assert!(e.hint.contains("stage=eq:"), "{v}: {}", e.hint);
            assert!(!e.allowed.is_empty(), "{v}");
        }
    }

    #[test]
    fn colons_and_odd_characters_are_plain_data() {
        let v = |value: &str| one(&CONTACT, "follow_up_note", value).operand;
        assert_eq!(v("eq:foo:bar"), Operand::One(text("foo:bar")));
        assert_eq!(v("eq:re:call"), Operand::One(text("re:call")));
        assert_eq!(v("Is:null"), Operand::One(text("Is:null")));
        assert_eq!(v("Re:call"), Operand::One(text("Re:call")));
        assert_eq!(v("a:b"), Operand::One(text("a:b")));
        assert_eq!(
            v("https://acme.com/x"),
            Operand::One(text("https://acme.com/x"))
        );
        assert_eq!(v("ticket 42: call"), Operand::One(text("ticket 42: call")));
        assert_eq!(v("eq:is:null"), Operand::One(text("is:null")));
        assert_eq!(v("eq:contains:x"), Operand::One(text("contains:x")));
        assert_eq!(v("like:100%_off"), Operand::One(text("100%_off")));
        assert_eq!(
            v("O'Brien\"; DROP TABLE x;--"),
            Operand::One(text("O'Brien\"; DROP TABLE x;--"))
        );
        assert_eq!(v("😀 ünï"), Operand::One(text("😀 ünï")));
        assert_eq!(v(":x"), Operand::One(text(":x")));
        assert_eq!(v("10:30"), Operand::One(text("10:30")));
    }

    #[test]
    fn int_ops() {
        use Op::*;
        let amount = |value: &str| {
            let f = one(&DEAL, "amount_cents", value);
            (f.op, f.operand)
        };
        assert_eq!(amount("100"), (Eq, Operand::One(Scalar::Int(100))));
        assert_eq!(amount("-5"), (Eq, Operand::One(Scalar::Int(-5))));
        for (op, name) in [
            (Eq, "eq"),
            (Ne, "ne"),
            (Gt, "gt"),
            (Gte, "gte"),
            (Lt, "lt"),
            (Lte, "lte"),
        ] {
            assert_eq!(
                amount(&format!("{name}:129900")),
                (op, Operand::One(Scalar::Int(129900)))
            );
        }
        assert_eq!(
            amount("in:1,2,3"),
            (
                In,
                Operand::Many(vec![Scalar::Int(1), Scalar::Int(2), Scalar::Int(3)])
            )
        );
        assert_eq!(amount("is:null"), (IsNull, Operand::None));
        assert_eq!(amount("not:null"), (NotNull, Operand::None));
        assert_eq!(
            amount(&format!("gt:{}", i64::MAX)),
            (Gt, Operand::One(Scalar::Int(i64::MAX)))
        );
    }

    #[test]
    fn int_rejects_non_integers() {
        for v in [
            "1.5",
            "1e3",
            "abc",
            "gt:1.0",
            "9223372036854775808",
            "in:1,x",
            "0x10",
            "1 000",
        ] {
            let e = err(&DEAL, &[("amount_cents", v)]);
            assert_eq!(e.code, "invalid_request", "{v}");
            assert!(e.message.contains("amount_cents"), "{e:?}");
        }
        let e = err(&DEAL, &[("amount_cents", "like:1*")]);
        assert_eq!(e.code, "unknown_operator");
        assert!(!e.allowed.contains(&"like".to_owned()));
        assert!(e.allowed.contains(&"gte".to_owned()));
    }

    #[test]
    fn time_ops() {
        use Op::*;
        let at = |value: &str| {
            let f = one(&CONTACT, "follow_up_at", value);
            (f.op, f.operand)
        };
        let t = Scalar::Time(datetime!(2026-06-10 09:00:00 UTC));
        assert_eq!(at("2026-06-10T09:00:00Z"), (Eq, Operand::One(t.clone())));
        assert_eq!(
            at("2026-06-10T11:00:00+02:00"),
            (Eq, Operand::One(t.clone()))
        );
        for (op, name) in [
            (Eq, "eq"),
            (Ne, "ne"),
            (Gt, "gt"),
            (Gte, "gte"),
            (Lt, "lt"),
            (Lte, "lte"),
        ] {
            assert_eq!(
                at(&format!("{name}:2026-06-10T09:00:00Z")),
                (op, Operand::One(t.clone()))
            );
        }
        assert_eq!(
            at("in:2026-06-10T09:00:00Z,2026-06-10T09:00:00.5Z"),
            (
                In,
                Operand::Many(vec![
                    t.clone(),
                    Scalar::Time(datetime!(2026-06-10 09:00:00.5 UTC))
                ])
            )
        );
        assert_eq!(at("is:null"), (IsNull, Operand::None));
        assert_eq!(at("not:null"), (NotNull, Operand::None));
        for v in [
            "yesterday",
            "2026-06-10",
            "gt:2026-06-10 09:00:00",
            "lt:1781082000",
        ] {
            let e = err(&CONTACT, &[("follow_up_at", v)]);
            assert_eq!(e.code, "invalid_request", "{v}");
            assert!(e.hint.contains("RFC3339"), "{e:?}");
        }
        assert_eq!(
            err(&CONTACT, &[("created_at", "like:2026*")]).code,
            "unknown_operator"
        );
    }

    #[test]
    fn enum_ops() {
        use Op::*;
        let status = |value: &str| {
            let f = one(&DEAL, "status", value);
            (f.op, f.operand)
        };
        assert_eq!(status("won"), (Eq, Operand::One(text("won"))));
        assert_eq!(status("eq:open"), (Eq, Operand::One(text("open"))));
        assert_eq!(status("ne:lost"), (Ne, Operand::One(text("lost"))));
        assert_eq!(
            status("in:open,won"),
            (In, Operand::Many(vec![text("open"), text("won")]))
        );
        assert_eq!(status("is:null"), (IsNull, Operand::None));
        assert_eq!(status("not:null"), (NotNull, Operand::None));
        let e = err(&DEAL, &[("status", "closed")]);
        assert_eq!(e.code, "invalid_request");
        assert_eq!(e.allowed, vec!["open", "won", "lost"]);
        assert_eq!(
            err(&DEAL, &[("status", "in:open,Won")]).code,
            "invalid_request"
        );
        for v in ["gt:open", "gte:open", "lt:open", "lte:open", "like:op*"] {
            let e = err(&DEAL, &[("status", v)]);
            assert_eq!(e.code, "unknown_operator", "{v}");
            assert_eq!(e.allowed, vec!["eq", "ne", "in", "is:null", "not:null"]);
        }
    }

    #[test]
    fn ref_ops_accept_ids_and_handles() {
        use Op::*;
        let company = |value: &str| {
            let f = one(&CONTACT, "company_id", value);
            (f.op, f.operand)
        };
        assert_eq!(company(CO), (Eq, Operand::One(text(CO))));
        assert_eq!(
            company(&format!("company/{CO}")),
            (Eq, Operand::One(text(CO)))
        );
        assert_eq!(
            company(&format!("eq:company/{CO}")),
            (Eq, Operand::One(text(CO)))
        );
        assert_eq!(company(&format!("ne:{CO}")), (Ne, Operand::One(text(CO))));
        assert_eq!(
            company(&format!("in:{CO},company/co_000000000000")),
            (In, Operand::Many(vec![text(CO), text("co_000000000000")]))
        );
        assert_eq!(company("is:null"), (IsNull, Operand::None));
        assert_eq!(company("not:null"), (NotNull, Operand::None));
        let e = err(&CONTACT, &[("company_id", &format!("contact/{C1}"))]);
        assert_eq!(e.code, "invalid_request");
        assert!(
            e.message.contains("expected a company id like co_"),
            "{e:?}"
        );
        assert!(e.message.contains("got a contact handle"), "{e:?}");
        assert!(e.hint.contains("company/co_"), "{e:?}");
        assert_eq!(
            err(&CONTACT, &[("company_id", "acme")]).code,
            "invalid_request"
        );
        assert_eq!(err(&DEAL, &[("contact_id", CO)]).code, "invalid_request");
        for v in ["gt:co_p3v8n2w6za00", "lte:co_p3v8n2w6za00", "like:co_*"] {
            assert_eq!(
                err(&CONTACT, &[("company_id", v)]).code,
                "unknown_operator",
                "{v}"
            );
        }
    }

    #[test]
    fn id_ops() {
        use Op::*;
        let id = |value: &str| {
            let f = one(&CONTACT, "id", value);
            (f.op, f.operand)
        };
        assert_eq!(id(C1), (Eq, Operand::One(text(C1))));
        assert_eq!(id(&format!("contact/{C1}")), (Eq, Operand::One(text(C1))));
        assert_eq!(id(&format!("ne:{C1}")), (Ne, Operand::One(text(C1))));
        assert_eq!(
            id(&format!("in:{C1},{C2}")),
            (In, Operand::Many(vec![text(C1), text(C2)]))
        );
        for v in [
            "gt:c_7k2m9q4x1d3f",
            "gte:c_7k2m9q4x1d3f",
            "lt:c_7k2m9q4x1d3f",
            "lte:c_7k2m9q4x1d3f",
            "like:c_*",
            "is:null",
            "not:null",
        ] {
            let e = err(&CONTACT, &[("id", v)]);
            assert_eq!(e.code, "unknown_operator", "{v}");
            assert_eq!(e.allowed, vec!["eq", "ne", "in"]);
        }
        assert_eq!(err(&DEAL, &[("id", C1)]).code, "invalid_request");
    }

    #[test]
    fn tags_ops() {
        use Op::*;
        let tags = |value: &str| {
            let f = one(&COMPANY, "tags", value);
            (f.op, f.operand)
        };
        assert_eq!(tags("vip"), (Eq, Operand::One(text("vip"))));
        assert_eq!(tags("eq:vip"), (Eq, Operand::One(text("vip"))));
        assert_eq!(tags("ne:vip"), (Ne, Operand::One(text("vip"))));
        assert_eq!(
            tags("in:vip,renewal"),
            (In, Operand::Many(vec![text("vip"), text("renewal")]))
        );
        assert_eq!(tags("is:null"), (IsNull, Operand::None));
        assert_eq!(tags("not:null"), (NotNull, Operand::None));
        for v in ["gt:a", "gte:a", "lt:a", "lte:a", "like:v*"] {
            let e = err(&COMPANY, &[("tags", v)]);
            assert_eq!(e.code, "unknown_operator", "{v}");
            assert_eq!(e.allowed, vec!["eq", "ne", "in", "is:null", "not:null"]);
        }
    }

    #[test]
    fn custom_supports_every_op_as_text() {
        let target = Target::Custom("plan-tier_2".to_owned());
        for (value, op, operand) in [
            ("pro", Op::Eq, Operand::One(text("pro"))),
            ("ne:pro", Op::Ne, Operand::One(text("pro"))),
            ("gt:5", Op::Gt, Operand::One(text("5"))),
            ("gte:5", Op::Gte, Operand::One(text("5"))),
            ("lt:5", Op::Lt, Operand::One(text("5"))),
            ("lte:5", Op::Lte, Operand::One(text("5"))),
            ("like:*pro*", Op::Like, Operand::One(text("*pro*"))),
            (
                "in:pro,team",
                Op::In,
                Operand::Many(vec![text("pro"), text("team")]),
            ),
            ("is:null", Op::IsNull, Operand::None),
            ("not:null", Op::NotNull, Operand::None),
        ] {
            assert_eq!(
                one(&DEAL, "custom.plan-tier_2", value),
                Filter {
                    target: target.clone(),
                    op,
                    operand
                },
                "{value}"
            );
        }
        for key in [
            "custom.",
            "custom.my key",
            "custom.a.b",
            &format!("custom.{}", "k".repeat(65)),
        ] {
            let e = err(&CONTACT, &[(key, "x")]);
            assert_eq!(e.code, "unknown_field", "{key}");
            assert!(e.allowed.contains(&"custom.KEY".to_owned()));
        }
        one(&CONTACT, &format!("custom.{}", "k".repeat(64)), "x");
    }

    #[test]
    fn unknown_field() {
        let e = err(&CONTACT, &[("nmae", "Jane")]);
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.contains("\"nmae\""), "{e:?}");
        assert!(e.allowed.contains(&"name".to_owned()));
        assert!(e.allowed.contains(&"custom.KEY".to_owned()));
        for p in ["search", "sort", "limit", "cursor"] {
            assert!(e.allowed.contains(&p.to_owned()));
        }
        assert!(!e.allowed.contains(&"amount_cents".to_owned()));
        assert_eq!(err(&COMPANY, &[("email", "x")]).code, "unknown_field");
        assert_eq!(err(&CONTACT, &[("Name", "x")]).code, "unknown_field");
        // Newlines in the name cannot leak into the message raw.
        let e = err(&CONTACT, &[("a\nerror: forged", "x")]);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn near_miss_operators() {
        for v in [
            "is:maybe",
            "is:NULL",
            "not:empty",
            "neq:x",
            "ge:1",
            "le:1",
            "contains:x",
            "between:1,2",
            "startswith:x",
        ] {
            let e = err(&CONTACT, &[("name", v)]);
            assert_eq!(e.code, "unknown_operator", "{v}");
            assert_eq!(e.allowed, Op::ALL_NAMES.to_vec());
            assert!(e.hint.contains("eq:"), "{e:?}");
        }
        let e = err(&DEAL, &[("status", "neq:won")]);
        assert_eq!(e.code, "unknown_operator");
        assert_eq!(e.allowed, vec!["eq", "ne", "in", "is:null", "not:null"]);
    }

    #[test]
    fn bad_values() {
        let e = err(&CONTACT, &[("name", "")]);
        assert_eq!(e.code, "invalid_request");
        assert!(e.hint.contains("is:null"));
        for v in [
            "eq:", "like:", "gt:", "in:", "in:a,,b", "in:a,", "in:,", "in: , ",
        ] {
            assert_eq!(err(&CONTACT, &[("name", v)]).code, "invalid_request", "{v}");
        }
        let many = vec!["x"; 101].join(",");
        assert_eq!(
            err(&CONTACT, &[("name", &format!("in:{many}"))]).code,
            "invalid_request"
        );
        let hundred = vec!["x"; 100].join(",");
        one(&CONTACT, "name", &format!("in:{hundred}"));
        let long = "a".repeat(1001);
        let e = err(&CONTACT, &[("name", &long)]);
        assert!(e.message.contains("1000"), "{e:?}");
        one(&CONTACT, "name", &"é".repeat(1000));
        assert_eq!(err(&CONTACT, &[("name", "a\0b")]).code, "invalid_request");
        assert_eq!(err(&CONTACT, &[("custom.x", "\0")]).code, "invalid_request");
    }

    #[test]
    fn search() {
        let q = parse(&CONTACT, &[("search", "  jane doe ")]).unwrap();
        assert_eq!(q.search.as_deref(), Some("jane doe"));
        parse(&CONTACT, &[("search", &"é".repeat(200))]).unwrap();
        for v in ["", "   ", "a\0", &"a".repeat(201)] {
            assert_eq!(
                err(&CONTACT, &[("search", v)]).code,
                "invalid_request",
                "{v:?}"
            );
        }
        let e = err(&CONTACT, &[("search", "a"), ("search", "b")]);
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("search"));
    }

    #[test]
    fn sort() {
        let q = parse(&DEAL, &[("sort", "amount_cents")]).unwrap();
        assert_eq!(q.sort.field.name, "amount_cents");
        assert!(!q.sort.desc);
        let q = parse(&DEAL, &[("sort", "-status")]).unwrap();
        assert_eq!((q.sort.field.name, q.sort.desc), ("status", true));
        for v in [
            "", "-", "phone", "tags", "nope", "--name", "+name", "custom.x",
        ] {
            let e = err(&CONTACT, &[("sort", v)]);
            assert_eq!(e.code, "unknown_field", "{v}");
            assert_eq!(
                e.allowed,
                vec![
                    "id",
                    "name",
                    "email",
                    "title",
                    "stage",
                    "follow_up_at",
                    "created_at",
                    "updated_at"
                ]
            );
        }
        assert_eq!(
            err(&COMPANY, &[("sort", "tags")]).allowed,
            vec![
                "id",
                "name",
                "domain",
                "industry",
                "created_at",
                "updated_at"
            ]
        );
        assert_eq!(
            err(&DEAL, &[("sort", "contact_id")]).allowed,
            vec![
                "id",
                "title",
                "amount_cents",
                "currency",
                "stage",
                "status",
                "follow_up_at",
                "created_at",
                "updated_at"
            ]
        );
        assert_eq!(
            err(&DEAL, &[("sort", "id"), ("sort", "id")]).code,
            "invalid_request"
        );
    }

    #[test]
    fn limit() {
        assert_eq!(parse(&CONTACT, &[("limit", "1")]).unwrap().limit, 1);
        assert_eq!(parse(&CONTACT, &[("limit", "200")]).unwrap().limit, 200);
        assert_eq!(parse(&CONTACT, &[("limit", "007")]).unwrap().limit, 7);
        for v in [
            "",
            "0",
            "-1",
            "1.5",
            "ten",
            " 5",
            "+5",
            "1e2",
            "99999999999999999999999",
        ] {
            assert_eq!(
                err(&CONTACT, &[("limit", v)]).code,
                "invalid_request",
                "{v:?}"
            );
        }
        let e = parse_limit("201").unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.contains("maximum of 200"), "{e:?}");
        assert!(e.hint.contains("cursor"), "{e:?}");
        assert!(
            parse_limit("99999999999999999999999")
                .unwrap_err()
                .message
                .contains("maximum of 200")
        );
        assert_eq!(
            err(&CONTACT, &[("limit", "5"), ("limit", "5")]).code,
            "invalid_request"
        );
    }

    #[test]
    fn cursor() {
        let q = parse(&CONTACT, &[("cursor", "abc.DEF_-=")]).unwrap();
        assert_eq!(q.cursor.as_deref(), Some("abc.DEF_-="));
        parse(&CONTACT, &[("cursor", &"a".repeat(2000))]).unwrap();
        assert_eq!(err(&CONTACT, &[("cursor", "")]).code, "invalid_request");
        assert_eq!(
            err(&CONTACT, &[("cursor", &"a".repeat(2001))]).code,
            "invalid_request"
        );
        assert_eq!(
            err(&CONTACT, &[("cursor", "a"), ("cursor", "a")]).code,
            "invalid_request"
        );
    }

    #[test]
    fn repeated_filters_are_kept_in_order() {
        let q = parse(
            &DEAL,
            &[
                ("amount_cents", "gte:100"),
                ("amount_cents", "lt:200"),
                ("status", "open"),
            ],
        )
        .unwrap();
        let ops: Vec<Op> = q.filters.iter().map(|f| f.op).collect();
        assert_eq!(ops, vec![Op::Gte, Op::Lt, Op::Eq]);
        let too_many: Vec<(&str, &str)> = vec![("name", "x"); MAX_FILTERS + 1];
        assert_eq!(err(&CONTACT, &too_many).code, "invalid_request");
        parse(&CONTACT, &too_many[..MAX_FILTERS]).unwrap();
    }

    #[test]
    fn fingerprint_ignores_order_limit_cursor_and_spelling() {
        let a = parse(
            &CONTACT,
            &[
                ("stage", "lead"),
                ("company_id", CO),
                ("limit", "10"),
                ("sort", "-name"),
            ],
        )
        .unwrap();
        let b = parse(
            &CONTACT,
            &[
                ("sort", "-name"),
                ("company_id", &format!("company/{CO}")),
                ("stage", "eq:lead"),
                ("cursor", "zzz"),
            ],
        )
        .unwrap();
        assert_eq!(canonical_fingerprint(&a), canonical_fingerprint(&b));
        let c = parse(
            &CONTACT,
            &[("stage", "lead"), ("company_id", CO), ("sort", "name")],
        )
        .unwrap();
        assert_ne!(canonical_fingerprint(&a), canonical_fingerprint(&c));
        let d = parse(
            &CONTACT,
            &[
                ("stage", "lead"),
                ("company_id", CO),
                ("sort", "-name"),
                ("search", "x"),
            ],
        )
        .unwrap();
        assert_ne!(canonical_fingerprint(&a), canonical_fingerprint(&d));
        let t1 = parse(&CONTACT, &[("created_at", "gt:2026-06-10T11:00:00+02:00")]).unwrap();
        let t2 = parse(
            &CONTACT,
            &[("created_at", "gt:2026-06-10T09:00:00.000000Z")],
        )
        .unwrap();
        assert_eq!(canonical_fingerprint(&t1), canonical_fingerprint(&t2));
    }

    #[test]
    fn to_param_spells_the_operator() {
        assert_eq!(
            one(&CONTACT, "name", "is:null").to_param(),
            ("name".to_owned(), "is:null".to_owned())
        );
        assert_eq!(
            one(&CONTACT, "name", "eq:foo:bar").to_param(),
            ("name".to_owned(), "eq:foo:bar".to_owned())
        );
        assert_eq!(
            one(&CONTACT, "company_id", &format!("in:company/{CO}")).to_param(),
            ("company_id".to_owned(), format!("in:{CO}"))
        );
        assert_eq!(
            one(&DEAL, "custom.x", "like:a*").to_param(),
            ("custom.x".to_owned(), "like:a*".to_owned())
        );
    }

    // ---- property tests ----

    fn schema_strategy() -> impl Strategy<Value = &'static Schema> {
        prop_oneof![Just(&CONTACT), Just(&COMPANY), Just(&DEAL)]
    }

    fn arb_pair(schema: &'static Schema) -> impl Strategy<Value = (String, String)> {
        let names: Vec<String> = schema.fields.iter().map(|f| f.name.to_owned()).collect();
        let key = prop_oneof![
            proptest::sample::select(names),
            Just("search".to_owned()),
            Just("sort".to_owned()),
            Just("limit".to_owned()),
            Just("cursor".to_owned()),
            Just("format".to_owned()),
            "custom\\..{0,70}",
            any::<String>(),
        ];
        let value = prop_oneof![
            any::<String>(),
            "(eq|ne|gt|gte|lt|lte|like|in|is|not|neq|contains):.{0,20}",
            "in:[a-z0-9_,/ ]{0,40}",
            "-?[0-9]{1,25}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
            "(contact/|company/|deal/)?(c|co|d)_[0-9a-z]{10,14}",
            "-?[a-z_]{0,15}",
        ];
        (key, value)
    }

    fn arb_text_item() -> impl Strategy<Value = String> {
        // `in:` items cannot hold commas and are trimmed.
        "[^,\0]{1,20}".prop_filter("trimmed", |s| s.trim() == s)
    }

    fn arb_scalar(ty: FieldType) -> BoxedStrategy<Scalar> {
        match ty {
            FieldType::Text | FieldType::Custom | FieldType::Tags => {
                arb_text_item().prop_map(Scalar::Text).boxed()
            }
            FieldType::Int => any::<i64>().prop_map(Scalar::Int).boxed(),
            FieldType::Time => {
                let min = datetime!(0000-01-01 00:00:00 UTC).unix_timestamp() * 1_000_000;
                let max = datetime!(9999-12-31 23:59:59.999999 UTC).unix_timestamp() * 1_000_000;
                (min..=max)
                    .prop_map(|micros| {
                        Scalar::Time(
                            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                                .expect("in range"),
                        )
                    })
                    .boxed()
            }
            FieldType::Enum(values) => proptest::sample::select(values)
                .prop_map(|v| Scalar::Text(v.to_owned()))
                .boxed(),
            FieldType::Ref(kind) | FieldType::Id(kind) => any::<[u8; 12]>()
                .prop_map(move |r| Scalar::Text(handle::id_from_random(kind, r)))
                .boxed(),
        }
    }

    fn arb_filter() -> impl Strategy<Value = (&'static Schema, Filter)> {
        schema_strategy()
            .prop_flat_map(|schema| {
                let target = prop_oneof![
                    (0..schema.fields.len()).prop_map(move |i| Target::Field(&schema.fields[i])),
                    "[A-Za-z0-9_-]{1,64}".prop_map(Target::Custom),
                ];
                (Just(schema), target)
            })
            .prop_flat_map(|(schema, target)| {
                let ty = target.ty();
                (
                    Just(schema),
                    Just(target),
                    proptest::sample::select(ty.ops()),
                )
            })
            .prop_flat_map(|(schema, target, op)| {
                let ty = target.ty();
                let operand = match op {
                    Op::IsNull | Op::NotNull => Just(Operand::None).boxed(),
                    Op::In => proptest::collection::vec(arb_scalar(ty), 1..=30)
                        .prop_map(Operand::Many)
                        .boxed(),
                    // Single text operands may hold commas and edge spaces.
                    _ if matches!(ty, FieldType::Text | FieldType::Custom | FieldType::Tags) => {
                        "[^\0]{1,200}"
                            .prop_map(|s| Operand::One(Scalar::Text(s)))
                            .boxed()
                    }
                    _ => arb_scalar(ty).prop_map(Operand::One).boxed(),
                };
                (Just(schema), Just(target), Just(op), operand)
            })
            .prop_map(|(schema, target, op, operand)| {
                (
                    schema,
                    Filter {
                        target,
                        op,
                        operand,
                    },
                )
            })
            .prop_filter("value within the length limit", |(_, f)| {
                f.to_param().1.chars().count() <= MAX_VALUE_CHARS
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_pairs(
            raw in proptest::collection::vec((any::<String>(), any::<String>()), 0..6),
        ) {
            for schema in [&CONTACT, &COMPANY, &DEAL] {
                let _ = parse_list_query(schema, &raw);
            }
        }

        #[test]
        fn never_panics_on_plausible_pairs(
            (schema, ps) in schema_strategy()
                .prop_flat_map(|s| (Just(s), proptest::collection::vec(arb_pair(s), 0..6))),
        ) {
            match parse_list_query(schema, &ps) {
                Ok(q) => {
                    prop_assert!(q.limit >= 1 && q.limit <= MAX_LIMIT);
                    let _ = canonical_fingerprint(&q);
                }
                Err(e) => {
                    prop_assert!(["unknown_field", "unknown_operator", "invalid_request"].contains(&e.code));
                    prop_assert!(!e.message.is_empty() && !e.hint.is_empty());
                    prop_assert!(!e.message.contains(['\n', '\r']));
                }
            }
        }

        #[test]
        fn filters_round_trip_through_to_param((schema, filter) in arb_filter()) {
            let (k, v) = filter.to_param();
            let parsed = parse_list_query(schema, &[(k.clone(), v.clone())]);
            prop_assert!(parsed.is_ok(), "{}={} refused: {:?}", k, v, parsed.err());
            prop_assert_eq!(parsed.unwrap().filters, vec![filter]);
        }
    }
}
