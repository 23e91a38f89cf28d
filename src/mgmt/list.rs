//! RabbitMQ's list parameters: filtering by name, sorting, `columns` and pages, over every
//! list the management API answers (queues, exchanges, connections, channels, ...).
//!
//! A list is answered one of two ways. A page (`page` given) is made JSON for its items
//! only. A whole list is written to the response as the client reads it, a few dozen items
//! at a time, each made JSON and dropped before the next: `GET /api/queues` over 50,000
//! queues (Flower's call, and every Prometheus exporter's) built a gigabyte of
//! `serde_json::Value` before its first byte went out.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::http::{ApiError, ApiResult};

/// The largest page RabbitMQ serves.
pub const MAX_PAGE_SIZE: usize = 500;
/// The page size when `page` is given without `page_size`.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// RabbitMQ's list parameters. Filtering and pages apply when `page` is given (as in
/// RabbitMQ 3.10, which ignores `name` otherwise); sorting and `columns` always.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub page: Option<String>,
    pub page_size: Option<String>,
    pub name: Option<String>,
    pub use_regex: Option<String>,
    pub sort: Option<String>,
    pub sort_reverse: Option<String>,
    pub columns: Option<String>,
    /// `disable_stats=true`: leave message rates out, as RabbitMQ does.
    pub disable_stats: Option<String>,
}

pub type List = Query<ListQuery>;

fn truthy(v: &Option<String>) -> bool {
    v.as_deref() == Some("true")
}

impl ListQuery {
    pub fn stats(&self) -> bool {
        !truthy(&self.disable_stats)
    }
}

/// Answers a list the way RabbitMQ does: sorted, cut to `columns`, and paged into
/// `{total_count, item_count, filtered_count, page, page_size, page_count, items}` when
/// `page` is given.
pub fn list(mut items: Vec<Value>, q: &ListQuery) -> ApiResult {
    if let Some(sort) = sort_field(q) {
        items.sort_by(|a, b| compare(lookup(a, sort), lookup(b, sort)));
    }
    if truthy(&q.sort_reverse) {
        items.reverse();
    }
    let Some((page, page_size)) = page_of(q)? else {
        return Ok(Json(Value::Array(columns(items, q))).into_response());
    };
    let total = items.len();
    if let Some(matcher) = name_filter(q)? {
        items.retain(|item| matcher.matches(item.get("name").and_then(Value::as_str)));
    }
    let filtered = items.len();
    let page_count = page_count(filtered, page, page_size)?;
    let items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(paged(
        items,
        q,
        (total, filtered),
        (page, page_size, page_count),
    ))
}

/// What a list item becomes in an answer: JSON written straight into the response, or a
/// `Value` where the answer has to look inside it (a sort key, `columns`). Types that can
/// write themselves (a queue's row) skip the `Value` for a whole list.
pub trait Row: Serialize {
    fn into_value(self) -> Value;
}

impl Row for Value {
    fn into_value(self) -> Value {
        self
    }
}

/// [`list`] for items that are turned into JSON only to be answered: with `page`, only the
/// page's items are; without, each item is as the response is written ([`Streamed`]). When
/// sorting by a field other than `name`, each item's value of it is read first, one item
/// at a time. `name` must be the item's `"name"` in its JSON (`None` for items without one,
/// such as bindings).
pub fn list_of<T, R, F>(
    items: Vec<T>,
    q: &ListQuery,
    name: impl Fn(&T) -> Option<&str>,
    to_json: F,
) -> ApiResult
where
    T: Send + Unpin + 'static,
    R: Row,
    F: Fn(&T) -> R + Send + Unpin + 'static,
{
    let pages = page_of(q)?;
    // A whole list sorted by a changing field (`messages`) is written as its keys were
    // read: made again as it is written, it could come out unsorted.
    if let (None, Some(sort)) = (pages, sort_field(q).filter(|s| *s != "name")) {
        return Ok(sorted_whole(&items, q, sort, to_json));
    }
    let total = items.len();
    let mut keyed: Vec<(Option<Value>, T)> = match sort_field(q) {
        None => items.into_iter().map(|item| (None, item)).collect(),
        Some("name") => items
            .into_iter()
            .map(|item| (name(&item).map(|n| Value::String(n.to_owned())), item))
            .collect(),
        Some(sort) => items
            .into_iter()
            .map(|item| (lookup(&to_json(&item).into_value(), sort).cloned(), item))
            .collect(),
    };
    if sort_field(q).is_some() {
        keyed.sort_by(|a, b| compare(a.0.as_ref(), b.0.as_ref()));
    }
    if truthy(&q.sort_reverse) {
        keyed.reverse();
    }
    let Some((page, page_size)) = pages else {
        let items: Vec<T> = keyed.into_iter().map(|(_, item)| item).collect();
        return Ok(Streamed::answer(items, Columns::of(q), to_json));
    };
    if let Some(matcher) = name_filter(q)? {
        keyed.retain(|(_, item)| matcher.matches(name(item)));
    }
    let filtered = keyed.len();
    let page_count = page_count(filtered, page, page_size)?;
    let items: Vec<Value> = keyed
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(_, item)| to_json(item).into_value())
        .collect();
    Ok(paged(
        items,
        q,
        (total, filtered),
        (page, page_size, page_count),
    ))
}

/// A whole list sorted by a field other than the name: each item is made JSON once, its
/// sort key read and the item written out (as compact bytes, a twentieth of what its
/// `Value` takes), then the rows are sorted. Sorting the `Value`s themselves held a
/// gigabyte for 50,000 queues.
fn sorted_whole<T, R: Row>(
    items: &[T],
    q: &ListQuery,
    sort: &str,
    to_json: impl Fn(&T) -> R,
) -> Response {
    let columns = Columns::of(q);
    let mut rows: Vec<(Option<Value>, Vec<u8>)> = items
        .iter()
        .map(|item| {
            let json = to_json(item).into_value();
            let key = lookup(&json, sort).cloned();
            let shown = match &columns {
                Some(columns) => columns.pick(&json),
                None => json,
            };
            // Cannot fail for JSON made of string keys; an item that did would be left out.
            (key, serde_json::to_vec(&shown).unwrap_or_default())
        })
        .filter(|(_, bytes)| !bytes.is_empty())
        .collect();
    rows.sort_by(|a, b| compare(a.0.as_ref(), b.0.as_ref()));
    if truthy(&q.sort_reverse) {
        rows.reverse();
    }
    let mut body = Vec::with_capacity(rows.iter().map(|(_, b)| b.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, (_, bytes)) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&bytes);
    }
    body.push(b']');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// How much of a whole list is written at a time: a few dozen queues.
const STREAMED_CHUNK_BYTES: usize = 64 * 1024;

/// A whole list, written as the client reads it: hyper asks for the next chunk as its write
/// buffer drains (it buffers about 400 KiB), so an answer holds a few chunks and the items
/// themselves (each an `Arc` or two), not the list's JSON. Making a chunk takes about a
/// millisecond, so a long list never holds a runtime thread for long either.
struct Streamed<T, F> {
    items: std::vec::IntoIter<T>,
    to_json: F,
    columns: Option<Columns>,
    /// Items written so far (a comma goes before each but the first).
    written: usize,
    /// `[` is out.
    opened: bool,
    /// `]` is out, or writing failed.
    done: bool,
}

impl<T, R, F> Streamed<T, F>
where
    T: Send + Unpin + 'static,
    R: Row,
    F: Fn(&T) -> R + Send + Unpin + 'static,
{
    fn answer(items: Vec<T>, columns: Option<Columns>, to_json: F) -> Response {
        let streamed = Streamed {
            items: items.into_iter(),
            to_json,
            columns,
            written: 0,
            opened: false,
            done: false,
        };
        (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(streamed),
        )
            .into_response()
    }

    /// The next chunk: items until it holds [`STREAMED_CHUNK_BYTES`], and `]` after the
    /// last.
    fn chunk(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(STREAMED_CHUNK_BYTES + STREAMED_CHUNK_BYTES / 4);
        if !self.opened {
            out.push(b'[');
            self.opened = true;
        }
        while out.len() < STREAMED_CHUNK_BYTES {
            let Some(item) = self.items.next() else {
                out.push(b']');
                self.done = true;
                break;
            };
            if self.written > 0 {
                out.push(b',');
            }
            self.written += 1;
            let row = (self.to_json)(&item);
            match &self.columns {
                None => serde_json::to_writer(&mut out, &row)?,
                Some(columns) => serde_json::to_writer(&mut out, &columns.pick(&row.into_value()))?,
            }
        }
        Ok(out)
    }
}

impl<T, R, F> Stream for Streamed<T, F>
where
    T: Send + Unpin + 'static,
    R: Row,
    F: Fn(&T) -> R + Send + Unpin + 'static,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(match this.chunk() {
            Ok(chunk) => Ok(Bytes::from(chunk)),
            // Cannot happen for JSON made of string keys; the client sees a cut answer.
            Err(e) => {
                this.done = true;
                Err(std::io::Error::other(e))
            }
        }))
    }
}

fn sort_field(q: &ListQuery) -> Option<&str> {
    q.sort.as_deref().filter(|s| !s.is_empty())
}

/// `(page, page_size)` when `page` is given.
fn page_of(q: &ListQuery) -> Result<Option<(usize, usize)>, ApiError> {
    let Some(page) = &q.page else {
        return Ok(None);
    };
    let page: usize =
        page.parse().ok().filter(|&p| p >= 1).ok_or_else(|| {
            ApiError::bad_request(format!("page must be a positive integer: {page}"))
        })?;
    let page_size = match &q.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&n| (1..=MAX_PAGE_SIZE).contains(&n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "page_size must be between 1 and {MAX_PAGE_SIZE}: {s}"
                ))
            })?,
    };
    Ok(Some((page, page_size)))
}

fn name_filter(q: &ListQuery) -> Result<Option<NameFilter>, ApiError> {
    match q.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => NameFilter::new(name, truthy(&q.use_regex)).map(Some),
        None => Ok(None),
    }
}

fn page_count(filtered: usize, page: usize, page_size: usize) -> Result<usize, ApiError> {
    let page_count = filtered.div_ceil(page_size);
    if page > page_count.max(1) {
        return Err(ApiError::bad_request(format!(
            "page out of range: {page} of {page_count}"
        )));
    }
    Ok(page_count)
}

/// A page: `(total, filtered)` counts and `(page, page_size, page_count)`.
fn paged(
    items: Vec<Value>,
    q: &ListQuery,
    (total, filtered): (usize, usize),
    (page, page_size, page_count): (usize, usize, usize),
) -> Response {
    Json(json!({
        "filtered_count": filtered,
        "item_count": items.len(),
        "items": columns(items, q),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
    .into_response()
}

/// The longest `name` filter taken as a regular expression: no name is longer, and it bounds
/// what compiling one costs (about a quarter of a second at worst, on the blocking pool).
pub const MAX_NAME_REGEX_BYTES: usize = 255;

enum NameFilter {
    Substring(String),
    Regex(regex::Regex),
}

impl NameFilter {
    fn new(name: &str, regex: bool) -> Result<Self, ApiError> {
        if !regex {
            return Ok(NameFilter::Substring(name.to_lowercase()));
        }
        // Compiling costs more than its length suggests: folding the case of a class that
        // spans Unicode (`\p{Any}`) takes milliseconds, for each such class in the pattern.
        if name.len() > MAX_NAME_REGEX_BYTES {
            return Err(ApiError::bad_request(format!(
                "invalid regular expression: longer than {MAX_NAME_REGEX_BYTES} bytes"
            )));
        }
        // Bounded like every pattern a client sends: the regex crate runs in linear time.
        regex::RegexBuilder::new(name)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(NameFilter::Regex)
            .map_err(|e| ApiError::bad_request(format!("invalid regular expression: {e}")))
    }

    fn matches(&self, name: Option<&str>) -> bool {
        let name = name.unwrap_or_default();
        match self {
            NameFilter::Substring(s) => name.to_lowercase().contains(s.as_str()),
            NameFilter::Regex(r) => r.is_match(name),
        }
    }
}

/// A value by dotted path (`message_stats.publish_details.rate`).
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// Orders sort keys as Erlang orders terms (numbers, then atoms, then objects, arrays and
/// strings), a missing value first. It must be a total order whatever the values are:
/// `sort_by` may panic on one that is not, and values of a column can be of any type.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Null | Value::Bool(_) => 1,
            Value::Object(_) => 2,
            Value::Array(_) => 3,
            Value::String(_) => 4,
        }
    }
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => rank(x).cmp(&rank(y)).then_with(|| match (x, y) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y.as_f64().unwrap_or(0.0)),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            // Atoms in alphabetical order: false, null, true.
            (Value::Null | Value::Bool(_), Value::Null | Value::Bool(_)) => {
                let atom = |v: &Value| match v {
                    Value::Bool(false) => 0,
                    Value::Null => 1,
                    _ => 2,
                };
                atom(x).cmp(&atom(y))
            }
            _ => Ordering::Equal,
        }),
    }
}

/// How many `columns` a list request may pick.
const MAX_COLUMNS: usize = 64;

/// The `columns` asked for: each item keeps only these (dotted paths keep their parents'
/// shape).
struct Columns(Vec<String>);

impl Columns {
    fn of(q: &ListQuery) -> Option<Columns> {
        let cols = q.columns.as_deref().filter(|c| !c.is_empty())?;
        // Each distinct path once, and no more than an item could have: every path costs a
        // walk of every item.
        let mut paths: Vec<String> = Vec::new();
        for path in cols.split(',').map(str::trim) {
            if paths.len() < MAX_COLUMNS && !paths.iter().any(|p| p == path) {
                paths.push(path.to_owned());
            }
        }
        Some(Columns(paths))
    }

    fn pick(&self, item: &Value) -> Value {
        let mut out = Map::new();
        for path in &self.0 {
            if let Some(v) = lookup(item, path) {
                insert_path(&mut out, path, v.clone());
            }
        }
        Value::Object(out)
    }
}

/// Keeps only the `columns` asked for.
fn columns(items: Vec<Value>, q: &ListQuery) -> Vec<Value> {
    match Columns::of(q) {
        None => items,
        Some(columns) => items.iter().map(|item| columns.pick(item)).collect(),
    }
}

fn insert_path(out: &mut Map<String, Value>, path: &str, v: Value) {
    match path.split_once('.') {
        None => {
            out.insert(path.to_owned(), v);
        }
        Some((head, rest)) => {
            let child = out
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                insert_path(child, rest, v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
