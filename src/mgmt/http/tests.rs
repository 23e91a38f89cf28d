//! Unit tests of what every endpoint shares: timestamps, columns, lists.
use super::*;

#[test]
fn timestamps_read_as_rabbitmq_writes_them() {
    assert_eq!(
        timestamp(1_796_198_292_129),
        "2026-12-02T07:58:12.129+00:00"
    );
    assert_eq!(timestamp(0), "1970-01-01T00:00:00.000+00:00");
}

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
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
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
    let made = std::cell::Cell::new(0usize);
    let counted = |item: &(String, i64)| {
        made.set(made.get() + 1);
        to_json(item)
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
        made.set(0);
        let lazy = body(list_of(items.clone(), q, |(n, _)| n, counted)).await;
        assert_eq!(lazy, eager, "{q:?}");
        // A page of the first sort (none or by name) made only its items JSON.
        if q.page.is_some() && q.sort.as_deref().is_none_or(|s| s == "name") {
            let answered = lazy
                .as_ref()
                .map_or(0, |page| page["item_count"].as_u64().unwrap_or(0));
            assert_eq!(made.get() as u64, answered, "{q:?}");
        }
    }
}
