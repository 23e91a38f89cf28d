//! Unit tests of the list parameters: columns, sorting, filtering, pages, streamed lists.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[test]
fn columns_keep_nested_shape() {
    let q = ListQuery {
        columns: Some("name,message_stats.publish".into()),
        ..ListQuery::default()
    };
    let items = vec![json!({"name": "a", "x": 1, "message_stats": {"publish": 3, "ack": 1}})];
    assert_eq!(
        columns(items, &q),
        vec![json!({"name": "a", "message_stats": {"publish": 3}})]
    );
}

async fn body(r: ApiResult) -> Result<Value, String> {
    match r {
        Ok(resp) => {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.reason),
    }
}

/// `list_of`, which makes JSON of the answered items only, answers every query as
/// `list` does over all of them made JSON: sorts (by name, by another field, nested,
/// missing, reversed), name filters, pages, columns and errors.
#[tokio::test]
async fn a_list_made_json_lazily_answers_as_one_made_json_first() {
    let items: Vec<(String, i64)> = (0..23)
        .map(|i| (format!("q{:02}", (i * 7) % 23), (i * 5) % 4))
        .collect();
    let to_json = |(name, n): &(String, i64)| {
        let mut v = json!({"name": name, "messages": n, "stats": {"rate": -n}});
        if n % 2 == 0 {
            v["sometimes"] = json!(n);
        }
        v
    };
    let made = Arc::new(AtomicUsize::new(0));
    let counted = {
        let made = made.clone();
        move |item: &(String, i64)| {
            made.fetch_add(1, Ordering::Relaxed);
            to_json(item)
        }
    };
    let s = |v: &str| Some(v.to_owned());
    let mut queries = Vec::new();
    for sort in [
        None,
        s("name"),
        s("messages"),
        s("stats.rate"),
        s("sometimes"),
    ] {
        for reverse in [None, s("true")] {
            for (page, size) in [
                (None, None),
                (s("1"), None),
                (s("2"), s("5")),
                (s("5"), s("5")),
                (s("6"), s("5")),
                (s("0"), None),
                (s("1"), s("501")),
            ] {
                for name in [None, s("1"), s("^q0"), s("(")] {
                    for use_regex in [None, s("true")] {
                        queries.push(ListQuery {
                            page: page.clone(),
                            page_size: size.clone(),
                            name: name.clone(),
                            use_regex: use_regex.clone(),
                            sort: sort.clone(),
                            sort_reverse: reverse.clone(),
                            columns: Some("name,stats.rate".into()).filter(|_| name.is_none()),
                            disable_stats: None,
                        });
                    }
                }
            }
        }
    }
    for q in &queries {
        let eager = body(list(items.iter().map(to_json).collect(), q)).await;
        made.store(0, Ordering::Relaxed);
        let lazy = body(list_of(items.clone(), q, |(n, _)| Some(n), counted.clone())).await;
        assert_eq!(lazy, eager, "{q:?}");
        // A page of the first sort (none or by name) made only its items JSON.
        if q.page.is_some() && q.sort.as_deref().is_none_or(|s| s == "name") {
            let answered = lazy
                .as_ref()
                .map_or(0, |page| page["item_count"].as_u64().unwrap_or(0));
            assert_eq!(made.load(Ordering::Relaxed) as u64, answered, "{q:?}");
        }
    }
}

/// A whole list goes out in chunks, each made as the last is sent, and reads back as the
/// one JSON array it would have been made in one piece.
#[tokio::test]
async fn a_whole_list_is_written_in_chunks_that_read_as_one_array() {
    let items: Vec<String> = (0..5_000).map(|i| format!("queue-{i:05}")).collect();
    let to_json = |name: &String| json!({"name": name, "padding": "x".repeat(40)});
    let eager: Vec<Value> = items.iter().map(to_json).collect();
    let mut chunks = 0;
    let mut bytes = Vec::new();
    let q = ListQuery::default();
    let response = list_of(items.clone(), &q, |n| Some(n), to_json).map_err(|e| e.reason);
    let mut stream = response
        .expect("a whole list")
        .into_body()
        .into_data_stream();
    while let Some(chunk) = futures_lite::StreamExt::next(&mut stream).await {
        bytes.extend_from_slice(&chunk.expect("a chunk"));
        chunks += 1;
    }
    assert!(chunks > 1, "5,000 items went out in {chunks} chunk");
    let answered: Value = serde_json::from_slice(&bytes).expect("one JSON array");
    assert_eq!(answered, Value::Array(eager));
    // The same with columns, each item picked as it is written.
    let q = ListQuery {
        columns: Some("name".into()),
        ..ListQuery::default()
    };
    let picked = body(list_of(items.clone(), &q, |n| Some(n), to_json)).await;
    let names: Vec<Value> = items.iter().map(|n| json!({"name": n})).collect();
    assert_eq!(picked, Ok(Value::Array(names)));
    // And an empty list is still an array.
    let empty = body(list_of(
        Vec::<String>::new(),
        &ListQuery::default(),
        |n| Some(n),
        to_json,
    ))
    .await;
    assert_eq!(empty, Ok(json!([])));
}
