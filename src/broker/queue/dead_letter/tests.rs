//! Dead-lettering against RabbitMQ 3.10's `rabbit_dead_letter`, case by case and by a
//! reference model.

use super::*;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldArray, LongString};

fn long_str(s: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_vec()))
}

fn entry_str<'a>(entry: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    table::get(entry, key).and_then(table::as_bytes)
}

fn raw_headers(m: &Message) -> Vec<u8> {
    table::encode(&headers(m))
}

fn message(props: BasicProperties) -> Message {
    let raw = properties::encode_all(&props).unwrap();
    let summary = properties::scan(&raw).unwrap();
    Message::new(
        Bytes::from_static(b"orders"),
        Bytes::from_static(b"eu"),
        raw,
        Bytes::from_static(b"body"),
        &summary,
    )
}

fn headers(m: &Message) -> FieldTable {
    properties::decode_all(&m.properties)
        .unwrap()
        .headers()
        .clone()
        .unwrap()
}

fn deaths(m: &Message) -> Vec<FieldTable> {
    match table::get(&headers(m), "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn dead(
    m: &Message,
    reason: Reason,
    queue: &str,
    dest: &DlxTarget,
    now: u64,
) -> (Message, Vec<Bytes>) {
    let d = make_message(m, reason, queue, dest, now).unwrap();
    (d.message, d.routing_keys)
}

/// A dead letter's body is still a slice of the buffer the original arrived in: it is
/// marked so, for a queue short of memory to copy it out as it would the original.
#[test]
fn a_dead_letter_of_a_message_in_read_buffers_is_in_them_too() {
    let mut m = message(BasicProperties::default());
    let dest = DlxTarget {
        exchange: "dlx".into(),
        routing_key: None,
    };
    assert!(
        !dead(&m, Reason::Expired, "work", &dest, 1)
            .0
            .in_read_buffers
    );
    m.in_read_buffers = true;
    let (letter, _) = dead(&m, Reason::Expired, "work", &dest, 1);
    assert!(letter.in_read_buffers);
    assert_eq!(letter.body.parts()[0].as_ptr(), m.body.parts()[0].as_ptr());
}

#[test]
fn same_as_rabbitmq_the_first_death_writes_x_death_and_first_death_headers() {
    let m = message(
        BasicProperties::default()
            .with_expiration("5000".into())
            .with_delivery_mode(2),
    );
    let dest = DlxTarget {
        exchange: "dlx".into(),
        routing_key: None,
    };
    let (dead, keys) = dead(&m, Reason::Expired, "work", &dest, 1700);
    assert_eq!(keys, vec![Bytes::from_static(b"eu")]);
    assert_eq!(&dead.exchange[..], b"dlx");
    assert!(dead.ttl_ms.is_none(), "expiration is removed");
    assert!(dead.persistent);
    let h = headers(&dead);
    assert_eq!(entry_str(&h, "x-first-death-reason"), Some(&b"expired"[..]));
    assert_eq!(entry_str(&h, "x-first-death-queue"), Some(&b"work"[..]));
    assert_eq!(
        entry_str(&h, "x-first-death-exchange"),
        Some(&b"orders"[..])
    );
    let d = deaths(&dead);
    assert_eq!(d.len(), 1);
    assert_eq!(table::get(&d[0], "count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(table::get(&d[0], "time"), Some(&AMQPValue::Timestamp(1700)));
    assert_eq!(entry_str(&d[0], "original-expiration"), Some(&b"5000"[..]));
}

/// The names of an encoded table's entries, in wire order.
fn names(table: &[u8]) -> Vec<String> {
    raw_table::entries(table)
        .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
        .collect()
}

#[test]
fn same_as_rabbitmq_dead_lettered_headers_are_sorted_and_a_new_entry_keeps_its_order() {
    let mut start = FieldTable::default();
    start.insert("zz".into(), long_str(b"1"));
    start.insert("Ab".into(), long_str(b"2"));
    let m = message(
        BasicProperties::default()
            .with_headers(start)
            .with_expiration("60000".into()),
    );
    let dest = DlxTarget {
        exchange: String::new(),
        routing_key: None,
    };
    let once = make_message(&m, Reason::Rejected, "work", &dest, 7).unwrap();
    assert_eq!(
        names(&once.headers),
        [
            "Ab",
            "x-death",
            "x-first-death-exchange",
            "x-first-death-queue",
            "x-first-death-reason",
            "zz"
        ]
    );
    let entry = |headers: &[u8]| {
        let deaths = raw_table::get(headers, b"x-death").unwrap();
        let first = raw_table::items(deaths).next().unwrap();
        names(raw_table::as_table(first).unwrap())
    };
    let rabbit_order = [
        "count",
        "reason",
        "queue",
        "time",
        "exchange",
        "routing-keys",
        "original-expiration",
    ];
    assert_eq!(entry(&once.headers), rabbit_order);
    let twice = make_message(&once.message, Reason::Rejected, "work", &dest, 8).unwrap();
    let mut sorted = rabbit_order.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        entry(&twice.headers),
        sorted,
        "counted up: set_table_value sorts it"
    );
    // Dying in another queue puts a new entry in front of the existing one, sorted too
    // (the first death took the expiration, so it has no `original-expiration`).
    let elsewhere = make_message(&once.message, Reason::Rejected, "next", &dest, 9).unwrap();
    let mut sorted_new: Vec<&str> = rabbit_order[..6].to_vec();
    sorted_new.sort_unstable();
    assert_eq!(entry(&elsewhere.headers), sorted_new);
}

#[test]
fn same_as_rabbitmq_dying_again_bumps_the_count_and_keeps_the_first_time() {
    let m = message(BasicProperties::default());
    let dest = DlxTarget {
        exchange: "dlx".into(),
        routing_key: Some(Bytes::from_static(b"retry")),
    };
    let (once, keys) = dead(&m, Reason::Rejected, "work", &dest, 100);
    assert_eq!(keys, vec![Bytes::from_static(b"retry")]);
    let (twice, _) = dead(&once, Reason::Expired, "wait", &dest, 200);
    let (thrice, _) = dead(&twice, Reason::Rejected, "work", &dest, 300);
    let d = deaths(&thrice);
    assert_eq!(d.len(), 2);
    assert_eq!(entry_str(&d[0], "queue"), Some(&b"work"[..]));
    assert_eq!(table::get(&d[0], "count"), Some(&AMQPValue::LongLongInt(2)));
    assert_eq!(table::get(&d[0], "time"), Some(&AMQPValue::Timestamp(100)));
    assert_eq!(entry_str(&d[1], "queue"), Some(&b"wait"[..]));
    // The first death is remembered.
    assert_eq!(
        entry_str(&headers(&thrice), "x-first-death-queue"),
        Some(&b"work"[..])
    );
}

#[test]
fn same_as_rabbitmq_cycles_without_a_rejection_are_detected() {
    let m = message(BasicProperties::default());
    let dest = DlxTarget {
        exchange: "dlx".into(),
        routing_key: None,
    };
    let (a, _) = dead(&m, Reason::Expired, "a", &dest, 1);
    let (b, _) = dead(&a, Reason::Expired, "b", &dest, 2);
    assert!(is_cycle("a", &raw_headers(&b)));
    assert!(!is_cycle("c", &raw_headers(&b)));
    let (r, _) = dead(&a, Reason::Rejected, "b", &dest, 2);
    assert!(
        !is_cycle("a", &raw_headers(&r)),
        "a rejection on the way breaks the cycle"
    );
}

#[test]
fn same_as_rabbitmq_each_death_reverses_the_older_entries() {
    // RabbitMQ 3.10 regroups existing entries with a fold that reverses them, then puts
    // the new death in front: q1; q2 q1; q3 q1 q2; q4 q2 q1 q3.
    let dest = DlxTarget {
        exchange: "dlx".into(),
        routing_key: None,
    };
    let mut m = message(BasicProperties::default());
    for q in ["q1", "q2", "q3", "q4"] {
        m = dead(&m, Reason::Expired, q, &dest, 1).0;
    }
    let order: Vec<Vec<u8>> = deaths(&m)
        .iter()
        .map(|d| entry_str(d, "queue").unwrap().to_vec())
        .collect();
    assert_eq!(
        order,
        vec![
            b"q4".to_vec(),
            b"q2".to_vec(),
            b"q1".to_vec(),
            b"q3".to_vec()
        ]
    );
}

/// The decoded-table implementation this file had before headers were edited in their
/// encoded form, kept as the oracle for it.
mod reference {
    use super::*;

    fn group(tables: &[&FieldTable]) -> Vec<FieldTable> {
        if tables.len() <= 1 {
            return tables.iter().map(|t| (*t).clone()).collect();
        }
        let mut seen: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut acc: Vec<FieldTable> = Vec::new();
        for t in tables {
            let key = (
                entry_str(t, "queue").unwrap_or_default().to_vec(),
                entry_str(t, "reason").unwrap_or_default().to_vec(),
            );
            if seen.contains(&key) {
                continue;
            }
            let n = tables
                .iter()
                .filter(|u| {
                    entry_str(u, "queue").unwrap_or_default() == key.0
                        && entry_str(u, "reason").unwrap_or_default() == key.1
                })
                .count() as i64;
            let first = (*t).clone();
            let first = if table::get(&first, "count").is_none() {
                with_count(first, n)
            } else {
                first
            };
            acc.insert(0, first);
            seen.push(key);
        }
        acc
    }

    pub fn record_death(headers: &mut FieldTable, info: FieldTable, exchange: &[u8], queue: &str) {
        let reason = entry_str(&info, "reason").unwrap_or_default().to_vec();
        let deaths = match table::get(headers, "x-death") {
            None => {
                headers.insert("x-first-death-reason".into(), long_str(&reason));
                headers.insert("x-first-death-queue".into(), long_str(queue.as_bytes()));
                headers.insert("x-first-death-exchange".into(), long_str(exchange));
                vec![with_count(info, 1)]
            }
            Some(AMQPValue::FieldArray(existing)) => {
                let tables: Vec<&FieldTable> = existing
                    .as_slice()
                    .iter()
                    .filter_map(|v| match v {
                        AMQPValue::FieldTable(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                let (matches, others): (Vec<FieldTable>, Vec<FieldTable>) =
                    group(&tables).into_iter().partition(|t| {
                        entry_str(t, "queue") == Some(queue.as_bytes())
                            && entry_str(t, "reason") == Some(reason.as_slice())
                    });
                let updated = match matches.into_iter().next() {
                    None => with_count(info, 1),
                    Some(m) => {
                        let count = table::get(&m, "count").and_then(table::as_int).unwrap_or(0);
                        with_count(m, count + 1)
                    }
                };
                std::iter::once(updated).chain(others).collect()
            }
            Some(_) => vec![with_count(info, 1)],
        };
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(
                deaths
                    .into_iter()
                    .map(AMQPValue::FieldTable)
                    .collect::<Vec<_>>(),
            )),
        );
    }
}

/// Legacy `x-death` entries (from before RabbitMQ counted them): no count, repeated.
fn legacy_entry(queue: &str, reason: &str) -> AMQPValue {
    let mut t = FieldTable::default();
    t.insert("queue".into(), long_str(queue.as_bytes()));
    t.insert("reason".into(), long_str(reason.as_bytes()));
    t.insert("time".into(), AMQPValue::Timestamp(1));
    AMQPValue::FieldTable(t)
}

proptest::proptest! {
    #[test]
    fn encoded_editing_writes_what_the_decoded_oracle_writes(
        legacy in proptest::collection::vec((0usize..3, 0usize..2), 0..5),
        deaths in proptest::collection::vec((0usize..4, 0usize..4, proptest::bool::ANY), 1..12),
    ) {
        let queues = ["a", "b", "c", "d"];
        let reasons = [Reason::Rejected, Reason::Expired, Reason::Maxlen, Reason::DeliveryLimit];
        let mut start = FieldTable::default();
        start.insert("app".into(), long_str(b"kept"));
        if !legacy.is_empty() {
            let entries: Vec<AMQPValue> = legacy
                .iter()
                .map(|&(q, r)| legacy_entry(queues[q], reasons[r].as_str()))
                .collect();
            start.insert("x-death".into(), AMQPValue::FieldArray(FieldArray::from(entries)));
        }
        let mut m = message(
            BasicProperties::default()
                .with_headers(start.clone())
                .with_expiration("9".into()),
        );
        let mut expected = start;
        for (step, &(q, r, with_key)) in deaths.iter().enumerate() {
            let dest = DlxTarget {
                exchange: "dlx".into(),
                routing_key: with_key.then(|| Bytes::from_static(b"k")),
            };
            let props = properties::decode_all(&m.properties).unwrap();
            let expiration = props.expiration().as_ref().map(|e| e.as_str().as_bytes().to_vec());
            let entry = new_death_entry(
                &m,
                expiration.as_deref(),
                None,
                reasons[r],
                queues[q],
                step as u64,
            )
            .unwrap();
            let info = raw_table::decode(&entry[1..]).unwrap();
            reference::record_death(&mut expected, info, &m.exchange, queues[q]);
            m = dead(&m, reasons[r], queues[q], &dest, step as u64).0;
            proptest::prop_assert_eq!(&headers(&m), &expected);
        }
    }
}
