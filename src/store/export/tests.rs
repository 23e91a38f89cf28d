//! Unit tests of the definitions: changes applied through positions, copies.
use super::*;

fn queue(vhost: &str, name: &str, id: u64) -> Change {
    Change::PutQueue(QueueDef {
        name: name.into(),
        vhost: vhost.into(),
        durable: true,
        auto_delete: false,
        arguments: serde_json::json!({}),
        lepus_arguments: String::new(),
        lepus_id: id,
    })
}

fn exchange(vhost: &str, name: &str, internal: bool) -> Change {
    Change::PutExchange(ExchangeDef {
        name: name.into(),
        vhost: vhost.into(),
        kind: "direct".into(),
        durable: true,
        auto_delete: false,
        internal,
        arguments: serde_json::json!({}),
        lepus_arguments: String::new(),
        lepus_user: "guest".into(),
    })
}

fn binding(vhost: &str, source: &str, to_queue: bool, destination: &str, key: &str) -> BindingDef {
    BindingDef {
        source: source.into(),
        vhost: vhost.into(),
        destination: destination.into(),
        destination_type: if to_queue { "queue" } else { "exchange" }.into(),
        routing_key: key.into(),
        arguments: serde_json::json!({}),
        lepus_arguments: String::new(),
    }
}

/// The lists as sets, to compare two definitions whatever their order.
fn sorted(d: &Definitions) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut x: Vec<String> = d.exchanges.iter().map(|e| format!("{e:?}")).collect();
    let mut q: Vec<String> = d.queues.iter().map(|e| format!("{e:?}")).collect();
    let mut b: Vec<String> = d.bindings.iter().map(|e| format!("{e:?}")).collect();
    x.sort();
    q.sort();
    b.sort();
    (x, q, b)
}

/// What applying a change meant before positions: scans of the lists.
fn apply_by_scanning(d: &mut Definitions, change: Change) {
    match change {
        Change::PutExchange(x) => {
            d.exchanges
                .retain(|e| !(e.vhost == x.vhost && e.name == x.name));
            d.exchanges.push(Arc::new(x));
        }
        Change::DeleteExchange { vhost, name } => {
            d.exchanges
                .retain(|e| !(e.vhost == vhost && e.name == name));
            d.bindings.retain(|b| {
                !(b.vhost == vhost
                    && (b.source == name
                        || (b.destination_type == "exchange" && b.destination == name)))
            });
        }
        Change::PutQueue(q) => {
            d.queues
                .retain(|e| !(e.vhost == q.vhost && e.name == q.name));
            d.queues.push(Arc::new(q));
        }
        Change::DeleteQueue { vhost, name } => {
            d.queues.retain(|e| !(e.vhost == vhost && e.name == name));
            d.bindings.retain(|b| {
                !(b.vhost == vhost && b.destination_type == "queue" && b.destination == name)
            });
        }
        Change::PutBinding(b) => {
            if !d.bindings.iter().any(|x| **x == b) {
                d.bindings.push(Arc::new(b));
            }
        }
        Change::DeleteBinding(b) => d.bindings.retain(|x| **x != b),
        other => d.apply(other),
    }
}

/// Random changes over a few names, applied through positions and by scanning, give the
/// same definitions at every step, across a snapshot's round trip too.
#[test]
fn positions_apply_changes_as_scanning_did() {
    let mut rng = 0x5eed_u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut indexed = Definitions::default();
    let mut scanned = Definitions::default();
    for step in 0..5_000 {
        let vhost = ["/", "v"][next(2) as usize];
        let a = format!("n{}", next(6));
        let b = format!("n{}", next(6));
        let key = format!("k{}", next(3));
        let change = match next(8) {
            0 => exchange(vhost, &a, next(2) == 0),
            1 => Change::DeleteExchange {
                vhost: vhost.into(),
                name: a,
            },
            2 => queue(vhost, &a, next(100)),
            3 => Change::DeleteQueue {
                vhost: vhost.into(),
                name: a,
            },
            4 | 5 => Change::PutBinding(binding(vhost, &a, next(2) == 0, &b, &key)),
            6 => Change::DeleteBinding(binding(vhost, &a, next(2) == 0, &b, &key)),
            _ => Change::DeleteVhost { name: vhost.into() },
        };
        indexed.apply(change.clone());
        apply_by_scanning(&mut scanned, change);
        assert_eq!(sorted(&indexed), sorted(&scanned), "step {step}");
        if step % 500 == 0 {
            let json = serde_json::to_string(&indexed).unwrap();
            indexed = serde_json::from_str(&json).unwrap();
        }
    }
}

/// Recording 20,000 queues, each with a binding, and deleting them is linear: it was
/// quadratic (each change scanned the lists), 400 million comparisons here.
#[test]
fn many_queues_and_bindings_are_recorded_by_lookup() {
    let mut d = Definitions::default();
    for i in 0..20_000 {
        let name = format!("q{i}");
        d.apply(queue("/", &name, i));
        d.apply(Change::PutBinding(binding(
            "/",
            "amq.direct",
            true,
            &name,
            "k",
        )));
    }
    assert_eq!((d.queues.len(), d.bindings.len()), (20_000, 20_000));
    for i in 0..20_000 {
        d.apply(Change::DeleteQueue {
            vhost: "/".into(),
            name: format!("q{i}"),
        });
    }
    assert_eq!((d.queues.len(), d.bindings.len()), (0, 0));
}

/// A copy (the snapshot's, an export's) is taken under the definitions lock, so it
/// shares the exchanges, queues and bindings instead of copying them: with 200,000
/// queues and as many bindings a deep copy took 0.6-1.5 s, and every durable declare
/// waited for it. A changed copy builds its own positions and leaves the original alone.
#[test]
fn a_copy_shares_its_items_and_changes_apart() {
    let mut d = Definitions::default();
    for i in 0..3 {
        let name = format!("q{i}");
        d.apply(queue("/", &name, i));
        d.apply(exchange("/", &format!("x{i}"), false));
        d.apply(Change::PutBinding(binding("/", "x0", true, &name, "k")));
    }
    let mut copy = d.clone();
    assert_eq!(copy.positions.built_for, None, "a copy has no index");
    let mut indexed = d.clone();
    indexed.index();
    assert_eq!(
        indexed.positions.built_for,
        Some((3, 3, 3)),
        "built at start"
    );
    assert!(Arc::ptr_eq(&copy.queues[1], &d.queues[1]));
    assert!(Arc::ptr_eq(&copy.exchanges[2], &d.exchanges[2]));
    assert!(Arc::ptr_eq(&copy.bindings[0], &d.bindings[0]));
    assert_eq!(copy, d);

    copy.apply(Change::DeleteQueue {
        vhost: "/".into(),
        name: "q1".into(),
    });
    copy.apply(Change::DeleteBinding(binding("/", "x0", true, "q0", "k")));
    assert_eq!((copy.queues.len(), copy.bindings.len()), (2, 1));
    assert_eq!(copy.bindings[0].destination, "q2");
    assert_eq!((d.queues.len(), d.bindings.len()), (3, 3));
}
