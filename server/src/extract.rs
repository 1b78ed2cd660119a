//! Our own extractors, so bad input gets our error format with a hint.
//!
//! - [`JsonBody`]: JSON whatever the Content-Type says, 1 MiB cap (413), UTF-8,
//!   an object at the top, no NUL characters, no unknown fields (the error lists
//!   the allowed ones), no duplicate keys, and type errors that name the field.
//! - [`QueryPairs`]: the raw query string decoded into ordered pairs, so repeated
//!   filter keys survive; non-UTF-8 is a 400.
//! - [`PathIds`]: path parameters, decoded, as strings.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::app::AppState;
use crate::db::Ts;
use crate::error::AppError;
use crate::wire::query::{Op, parse_time_condition};

/// A body type: its allowed field names, for `unknown_field` answers.
pub trait BodyFields {
    const FIELDS: &'static [&'static str];
}

pub struct JsonBody<T>(pub T);

fn too_large(limit: usize) -> AppError {
    AppError::new(
        "payload_too_large",
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the {} KiB limit", limit / 1024),
        "send a smaller body: split imports into several requests",
    )
}

/// Rejects NUL anywhere in keys or strings: PostgreSQL cannot store it and it is
/// never meaningful in CRM data.
fn check_no_nul(v: &Value, path: &mut String) -> Result<(), AppError> {
    let bad = |p: &str| {
        AppError::invalid(
            format!(
                "{} contains a NUL character",
                if p.is_empty() { "the body" } else { p }
            ),
            "remove the \\u0000 character from the value",
        )
    };
    match v {
        Value::String(s) if s.contains('\0') => Err(bad(path)),
        Value::Array(items) => items.iter().try_for_each(|i| check_no_nul(i, path)),
        Value::Object(map) => {
            for (k, val) in map {
                if k.contains('\0') {
                    return Err(bad(path));
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                check_no_nul(val, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Parses and checks a JSON object body into `T`.
pub fn parse_body<T: DeserializeOwned + BodyFields>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(AppError::invalid(
            "the request body is empty",
            format!("send a JSON object with some of: {}", T::FIELDS.join(", ")),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        AppError::invalid(
            "the request body is not valid UTF-8",
            "send JSON encoded as UTF-8",
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        AppError::invalid(
            format!("the request body is not valid JSON: {e}"),
            "send one JSON object, e.g. {\"name\":\"Jane Doe\"}",
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(AppError::invalid(
            "the request body must be a JSON object",
            format!("send {{…}} with some of: {}", T::FIELDS.join(", ")),
        ));
    };
    unknown_fields(map.keys(), T::FIELDS)?;
    check_no_nul(&value, &mut String::new())?;
    // Deserialize from the text, not the Value, so duplicate keys are caught.
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner
            .split(" at line ")
            .next()
            .unwrap_or(&inner)
            .to_string();
        let field = if path == "." {
            "the body".to_string()
        } else {
            format!("field {path:?}")
        };
        // Codes are digits with leading zeros that a JSON number would lose.
        let hint = if path == "code" && inner.contains("expected a string") {
            "send the code as a JSON string of 6 digits, e.g. \"code\":\"042917\""
        } else {
            "fix that field's value; GET /help lists each field's type"
        };
        AppError::invalid(format!("{field}: {inner}"), hint)
    })
}

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned + BodyFields + Send,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state.settings.body_limit).await?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// Decoded query pairs in order.
pub struct QueryPairs(pub Vec<(String, String)>);

pub fn decode_query(raw: &str) -> Result<Vec<(String, String)>, AppError> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| {
                AppError::invalid(
                    "the query string is not valid UTF-8",
                    "percent-encode the query as UTF-8",
                )
            })
    };
    let mut out = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        decode_query(parts.uri.query().unwrap_or("")).map(QueryPairs)
    }
}

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Rejects any parameter not in `allowed` (`format` and a stray step-up
    /// `code` are always allowed), naming every one and what each was
    /// probably meant to be, and any allowed one given twice unless it is
    /// one of [`REPEATABLE`]: a second value is never silently dropped.
    pub fn only(&self, allowed: &[&str]) -> Result<(), AppError> {
        let unknown: Vec<&str> = self
            .0
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "format" && *k != "code" && !allowed.contains(k))
            .collect();
        refuse_unknown(&unknown, allowed, "query parameter", "")?;
        for key in allowed.iter().filter(|k| !REPEATABLE.contains(k)) {
            if self.0.iter().filter(|(k, _)| k == key).count() > 1 {
                return Err(AppError::invalid(
                    format!("{key} is given more than once"),
                    format!("send {key} at most once"),
                ));
            }
        }
        Ok(())
    }

    /// `KEY=[op:]TIME` conditions, repeatable up to [`MAX_TIME_CONDITIONS`]
    /// (`gte:` and `lt:` make a range): the operators and the times, in UTC.
    pub fn time_conditions(&self, key: &str) -> Result<Vec<(Op, Ts)>, AppError> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        if values.len() > MAX_TIME_CONDITIONS {
            return Err(AppError::invalid(
                format!(
                    "{key} is given {} times; at most {MAX_TIME_CONDITIONS} are allowed",
                    values.len()
                ),
                format!("a range needs two: {key}=gte:START&{key}=lt:END"),
            ));
        }
        values
            .into_iter()
            .map(|v| {
                parse_time_condition(key, v)
                    .map(|(op, t)| (op, Ts::new(t)))
                    .map_err(|e| {
                        AppError::new(e.code, StatusCode::BAD_REQUEST, e.message, e.hint)
                            .allowed(&e.allowed)
                    })
            })
            .collect()
    }

    /// The value of `key` when given and not empty; an empty value is
    /// refused rather than read as "not given", which would widen the
    /// answer (an empty `contact=` listing the whole workspace's log).
    pub fn nonempty(&self, key: &str, hint: &str) -> Result<Option<&str>, AppError> {
        match self.get(key) {
            Some(v) if v.trim().is_empty() => Err(AppError::invalid(
                format!("{key}= has no value"),
                format!("leave {key} out, or {hint}"),
            )),
            other => Ok(other),
        }
    }
}

/// At most this many conditions on one time: a range needs two.
const MAX_TIME_CONDITIONS: usize = 4;

/// Query parameters that may be given more than once (each a condition,
/// all of them applied): a time range is two `occurred_at` (activities) or
/// two `at` (audit).
const REPEATABLE: &[&str] = &["occurred_at", "at"];

/// Marks a route that takes no query parameters besides `format` (and a
/// step-up `code`): anything else is refused with `unknown_field`, so a
/// misspelt parameter is never silently ignored. The check itself runs when
/// the handler extracts its output format ([`crate::negotiate::Fmt`]),
/// after authentication.
#[derive(Clone, Copy)]
pub struct NoParams;

/// Middleware that marks a route with [`NoParams`].
pub async fn no_params(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut().insert(NoParams);
    next.run(req).await
}

/// Refuses body fields not in `allowed` (`unknown_field`), naming every one
/// and what each was probably meant to be.
fn unknown_fields<'k>(
    keys: impl Iterator<Item = &'k String>,
    allowed: &[&str],
) -> Result<(), AppError> {
    let unknown: Vec<&str> = keys
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    refuse_unknown(&unknown, allowed, "field", " in the body")
}

/// `unknown_field` for the `unknown` names (a `noun`, e.g. "field"), unless
/// there are none: every one named, with what each was probably meant to be.
fn refuse_unknown(
    unknown: &[&str],
    allowed: &[&str],
    noun: &str,
    place: &str,
) -> Result<(), AppError> {
    if unknown.is_empty() {
        return Ok(());
    }
    let plural = if unknown.len() == 1 { "" } else { "s" };
    let mut hint = crate::wire::suggest::unknown_hint(unknown, allowed, &format!("{noun}s"));
    let server_set = [
        "id",
        "handle",
        "workspace_id",
        "created_at",
        "updated_at",
        "author",
    ];
    if unknown.iter().any(|u| server_set.contains(u)) {
        hint.push_str(" (ids, handles, authors and timestamps are set by the server)");
    }
    Err(AppError::new(
        "unknown_field",
        StatusCode::BAD_REQUEST,
        format!("unknown {noun}{plural} {}{place}", shown(unknown)),
        hint,
    )
    .allowed(allowed))
}

/// Names as quoted in a message: each cut to 60 characters, at most 10.
fn shown(names: &[&str]) -> String {
    let mut out: Vec<String> = names
        .iter()
        .take(10)
        .map(|n| format!("{:?}", n.chars().take(60).collect::<String>()))
        .collect();
    if names.len() > 10 {
        out.push(format!("and {} more", names.len() - 10));
    }
    out.join(", ")
}

/// Path parameters as decoded strings.
pub struct PathIds(pub Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(ids) = Path::<Vec<String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                AppError::invalid(
                    "the path is not valid UTF-8 or not a valid id",
                    "use the id or handle exactly as the API returned it",
                )
            })?;
        Ok(PathIds(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct B {
        email: String,
        n: Option<i64>,
    }
    impl BodyFields for B {
        const FIELDS: &'static [&'static str] = &["email", "n"];
    }

    #[test]
    fn rejects_each_malformed_body_with_a_hint() {
        for (body, code, needle) in [
            ("", "invalid_request", "empty"),
            ("{\"email\":", "invalid_request", "not valid JSON"),
            ("[1]", "invalid_request", "must be a JSON object"),
            ("{\"email\":5}", "invalid_request", "email"),
            ("{\"email\":\"a\",\"x\":1}", "unknown_field", "\"x\""),
            (
                "{\"email\":\"a\",\"email\":\"b\"}",
                "invalid_request",
                "duplicate",
            ),
            ("{\"email\":\"a\\u0000\"}", "invalid_request", "NUL"),
            ("{\"email\":\"a\",\"n\":1e400}", "invalid_request", "JSON"),
        ] {
            let e = parse_body::<B>(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, code, "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
            assert!(!e.hint.is_empty());
        }
        assert!(parse_body::<B>(b"\xff\xfe").is_err());
        assert_eq!(parse_body::<B>(b"{\"email\":\"a\"}").unwrap().email, "a");
    }

    #[test]
    fn query_keeps_repeats_and_refuses_bad_utf8() {
        let q = decode_query("stage=lead&stage=ne%3Awon&name=a+b").unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q[1].1, "ne:won");
        assert_eq!(q[2].1, "a b");
        assert!(decode_query("name=%ff").is_err());
    }

    /// A body that stops arriving is answered 408 request_timeout once the
    /// header read timeout has passed (on a paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        use futures_util::StreamExt;
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(
            axum::body::Bytes::from_static(b"{\"email\":"),
        )])
        .chain(futures_util::stream::pending());
        let req = Request::builder()
            .method("POST")
            .uri("/contacts")
            .body(axum::body::Body::from_stream(chunks))
            .unwrap();
        let start = tokio::time::Instant::now();
        let err = body_bytes(req, 1 << 20).await.unwrap_err();
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(err.code, "request_timeout");
        assert!(start.elapsed() >= crate::serve::HEADER_READ_TIMEOUT);
        // A whole body is read at once.
        let req = Request::builder()
            .method("POST")
            .uri("/contacts")
            .body(axum::body::Body::from("{}"))
            .unwrap();
        assert_eq!(&body_bytes(req, 1 << 20).await.unwrap()[..], b"{}");
    }
}

/// A JSON object whose top-level duplicate keys are refused (records, whose
/// allowed fields depend on the kind, are parsed through this).
struct NoDupMap(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for NoDupMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NoDupMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<NoDupMap, A::Error> {
                let mut m = serde_json::Map::new();
                while let Some(k) = a.next_key::<String>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{k}`")));
                    }
                    let v: Value = a.next_value()?;
                    m.insert(k, v);
                }
                Ok(NoDupMap(m))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses an object body and refuses fields outside `allowed`.
pub fn parse_object(
    bytes: &[u8],
    allowed: &[&str],
) -> Result<serde_json::Map<String, Value>, AppError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(AppError::invalid(
            "the request body is empty",
            format!("send a JSON object with some of: {}", allowed.join(", ")),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        AppError::invalid(
            "the request body is not valid UTF-8",
            "send JSON encoded as UTF-8",
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        AppError::invalid(
            format!("the request body is not valid JSON: {e}"),
            "send one JSON object, e.g. {\"name\":\"Jane Doe\"}",
        )
    })?;
    if !value.is_object() {
        return Err(AppError::invalid(
            "the request body must be a JSON object",
            format!("send {{…}} with some of: {}", allowed.join(", ")),
        ));
    }
    let NoDupMap(map) = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        AppError::invalid(format!("the request body: {msg}"), "send each field once")
    })?;
    unknown_fields(map.keys(), allowed)?;
    check_no_nul(&value, &mut String::new())?;
    Ok(map)
}

/// How much of a body over the cap is read and dropped before the 413 goes
/// out, and for how long at most.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the body bytes with the size cap.
///
/// A body over the cap is read on and dropped (up to [`DRAIN_MAX`], for at
/// most [`DRAIN_TIME`]) before the 413 is sent: most HTTP clients read no
/// answer while they are still sending, so closing the connection on a
/// client mid-upload loses the 413 and leaves it with a broken pipe. Past
/// those bounds (a declared length over [`DRAIN_MAX`] at once) the
/// connection is closed after the answer.
pub async fn body_bytes(req: Request, limit: usize) -> Result<axum::body::Bytes, AppError> {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= DRAIN_MAX {
            drain(body).await;
        }
        return Err(too_large(limit));
    }
    let read = async {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                AppError::invalid("the request body could not be read", "send the body again")
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    drain(body).await;
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.into())
    };
    // A body that trickles in (or stops) holds its connection and task;
    // it gets as long as headers do.
    tokio::time::timeout(crate::serve::HEADER_READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(AppError::new(
                "request_timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    crate::serve::HEADER_READ_TIMEOUT.as_secs()
                ),
                "send the whole body at once; nothing was changed",
            ))
        })
}

/// Reads and drops the rest of a body, within [`DRAIN_MAX`] and [`DRAIN_TIME`].
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > DRAIN_MAX {
                    break;
                }
            }
        }
    })
    .await;
}

/// The raw body bytes (capped); the handler parses them.
pub struct RawBody(pub axum::body::Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        body_bytes(req, state.settings.body_limit)
            .await
            .map(RawBody)
    }
}
