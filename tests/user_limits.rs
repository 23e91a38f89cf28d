//! Per-user limits (`set_user_limits`, `/api/user-limits`): how many connections and
//! channels one user may have open at once, over all of the user's connections. Refusals
//! carry RabbitMQ 3.10's code and text (observed from a node), and other users, other
//! connections and what was open before a change are not disturbed.

mod common;

use common::http::Api;
use common::*;
use lapin::{Connection, ConnectionProperties};
use lepus::store::definitions::UserLimits;
use serde_json::json;

fn limits(max_connections: Option<i64>, max_channels: Option<i64>) -> UserLimits {
    UserLimits {
        max_connections,
        max_channels,
    }
}

/// A broker with a second administrator, `other`, to show one user's limits leave the
/// others alone.
async fn broker_with_two_users() -> Broker {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    server.add_user("other", "pw").unwrap();
    server
        .set_permissions("other", "/", ".*", ".*", ".*")
        .unwrap();
    broker
}

fn set(broker: &Broker, user: &str, limits: UserLimits) {
    let server = broker.server.as_ref().unwrap().broker().clone();
    server.set_user_limits(user, limits).expect("user exists");
}

async fn connect_as(broker: &Broker, user: &str, password: &str) -> lapin::Result<Connection> {
    let uri = broker
        .uri()
        .replace("guest:guest", &format!("{user}:{password}"));
    within(Connection::connect(&uri, ConnectionProperties::default())).await
}

#[tokio::test]
async fn same_as_rabbitmq_max_connections_refuses_the_users_next_open_and_frees_on_close() {
    let broker = broker_with_two_users().await;
    set(&broker, "guest", limits(Some(2), None));
    let first = broker.connect().await;
    let _second = broker.connect().await;
    assert_amqp_error(
        connect_as(&broker, "guest", "guest").await,
        530,
        "NOT_ALLOWED - connection refused for user 'guest': user connection limit (2) is reached",
    );
    // Another user is not counted against guest's limit.
    let other = connect_as(&broker, "other", "pw")
        .await
        .expect("other connects");
    within(other.create_channel())
        .await
        .expect("other's channel");
    // The refused connection took no place; closing one frees one.
    within(first.close(200, "bye".into())).await.unwrap();
    let third = broker.connect().await;
    within(third.create_channel()).await.expect("a channel");
    // A negative limit is none, as in RabbitMQ; 0 refuses every connection.
    set(&broker, "guest", limits(Some(-1), None));
    let _more = broker.connect().await;
    set(&broker, "guest", limits(Some(0), None));
    assert_amqp_error(
        connect_as(&broker, "guest", "guest").await,
        530,
        "NOT_ALLOWED - connection refused for user 'guest': user connection limit (0) is reached",
    );
    // What was open before the change stays open.
    within(third.create_channel())
        .await
        .expect("open connections are left alone");
}

#[tokio::test]
async fn same_as_rabbitmq_max_channels_counts_over_all_the_users_connections_and_closes_the_one_over()
 {
    let broker = broker_with_two_users().await;
    set(&broker, "guest", limits(None, Some(2)));
    let a = broker.connect().await;
    let b = broker.connect().await;
    let _a1 = within(a.create_channel()).await.expect("first channel");
    let b1 = within(b.create_channel()).await.expect("second channel");
    assert_amqp_error(
        within(b.create_channel()).await,
        530,
        "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum allowed user limit of (2)",
    );
    assert!(
        !b.status().connected(),
        "the refused channel's connection is closed"
    );
    assert!(!b1.status().connected());
    // The closed connection's channel is given back: guest has one open, on `a`.
    let a2 = within(a.create_channel())
        .await
        .expect("a channel in the freed place");
    within(a2.close(200, "bye".into())).await.unwrap();
    let _a3 = within(a.create_channel())
        .await
        .expect("a closed channel frees its place");
    // Another user's channels are theirs.
    let other = connect_as(&broker, "other", "pw")
        .await
        .expect("other connects");
    for _ in 0..3 {
        within(other.create_channel())
            .await
            .expect("other's channels");
    }
}

#[tokio::test]
async fn user_limits_are_set_over_the_api_shown_as_rabbitmq_shows_them_and_survive_a_restart() {
    let mut config = Config::for_tests();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let api_of = |b: &Broker| {
        let addr = b.server.as_ref().and_then(|s| s.management_addr());
        Api::new(addr.expect("management listener"), "guest", "guest")
    };
    let mut broker = Broker::start_with(config.clone()).await;
    let api = api_of(&broker);
    assert_eq!(api.get("/api/user-limits").await.json(), json!([]));
    assert_eq!(api.get("/api/user-limits/guest").await.json(), json!([]));
    assert_eq!(api.get("/api/user-limits/nobody").await.status, 404);
    let put = |name: &str, value| {
        let path = format!("/api/user-limits/guest/{name}");
        let api = &api;
        async move { api.put(&path, json!({ "value": value })).await }
    };
    assert_eq!(put("max-connections", json!(1)).await.status, 204);
    assert_eq!(put("max-channels", json!(5)).await.status, 204);
    let expected = json!([{"user": "guest", "value": {"max-channels": 5, "max-connections": 1}}]);
    assert_eq!(api.get("/api/user-limits").await.json(), expected);
    assert_eq!(api.get("/api/user-limits/guest").await.json(), expected);
    assert_eq!(
        api.get("/api/users/guest").await.json()["limits"],
        json!({"max-channels": 5, "max-connections": 1})
    );
    let exported = api.get("/api/definitions").await.json();
    assert_eq!(
        exported["users"][0]["limits"],
        json!({"max-channels": 5, "max-connections": 1})
    );
    // RabbitMQ's refusals: an unknown limit, a value that is not an integer, no value.
    let bad = put("max-foo", json!(3)).await;
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (
            400,
            json!("Unrecognised terms [{<<\"max-foo\">>,3}] in user-limits")
        )
    );
    let bad = put("max-channels", json!("7")).await;
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (
            400,
            json!("max-channels should be a number, actually was <<\"7\">>")
        )
    );
    let missing = api
        .put("/api/user-limits/guest/max-channels", json!({}))
        .await;
    assert_eq!(missing.status, 400);
    let nobody = api
        .put("/api/user-limits/nobody/max-channels", json!({"value": 1}))
        .await;
    assert_eq!(nobody.status, 400);

    broker.stop().await;
    let broker = Broker::start_with(config).await;
    let api = api_of(&broker);
    assert_eq!(api.get("/api/user-limits").await.json(), expected);
    let _only = broker.connect().await;
    assert_amqp_error(
        connect_as(&broker, "guest", "guest").await,
        530,
        "NOT_ALLOWED - connection refused for user 'guest': user connection limit (1) is reached",
    );
    assert_eq!(
        api.delete("/api/user-limits/guest/max-connections")
            .await
            .status,
        204
    );
    // Clearing a limit that is not set is no error, as in RabbitMQ.
    assert_eq!(
        api.delete("/api/user-limits/guest/max-connections")
            .await
            .status,
        204
    );
    assert_eq!(
        api.get("/api/user-limits/guest").await.json(),
        json!([{"user": "guest", "value": {"max-channels": 5}}])
    );
    let _second = broker.connect().await;
}

#[tokio::test]
async fn an_import_sets_the_limits_a_definitions_export_carries() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    let mut defs = server.definitions.current();
    let guest = defs.users.iter_mut().find(|u| u.name == "guest").unwrap();
    guest.limits = limits(Some(1), None);
    server.import_definitions(&defs, "guest").expect("imports");
    let _only = broker.connect().await;
    assert_amqp_error(
        connect_as(&broker, "guest", "guest").await,
        530,
        "NOT_ALLOWED - connection refused for user 'guest': user connection limit (1) is reached",
    );
}

#[tokio::test]
async fn same_as_rabbitmq_a_user_put_with_limits_merges_them_and_an_unknown_limit_is_refused() {
    let mut config = Config::for_tests();
    config.management_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start_with(config).await;
    let addr = broker.server.as_ref().and_then(|s| s.management_addr());
    let api = Api::new(addr.expect("management listener"), "guest", "guest");
    let made = api
        .put(
            "/api/users/capped",
            json!({"password": "pw", "tags": "", "limits": {"max-connections": 3}}),
        )
        .await;
    assert_eq!(made.status, 201);
    let changed = api
        .put(
            "/api/users/capped",
            json!({"password": "pw2", "tags": "", "limits": {"max-channels": 4}}),
        )
        .await;
    assert_eq!(changed.status, 204);
    assert_eq!(
        api.get("/api/user-limits/capped").await.json(),
        json!([{"user": "capped", "value": {"max-channels": 4, "max-connections": 3}}])
    );
    let unknown = api
        .put(
            "/api/users/capped",
            json!({"password": "pw", "tags": "", "limits": {"max-foo": 1}}),
        )
        .await;
    assert_eq!(unknown.status, 400);
    // A management user (neither administrator nor monitoring) may read them.
    assert_eq!(
        api.put(
            "/api/users/viewer",
            json!({"password": "pw", "tags": "management"})
        )
        .await
        .status,
        201
    );
    let viewer = Api::new(api.addr, "viewer", "pw");
    assert_eq!(viewer.get("/api/user-limits").await.status, 200);
    assert_eq!(
        viewer
            .put("/api/user-limits/capped/max-channels", json!({"value": 1}))
            .await
            .status,
        401
    );
}

/// Changes to one user at once are not lost: each reads the user, changes a copy and
/// records it, one at a time.
#[tokio::test(flavor = "multi_thread")]
async fn limits_and_tags_changed_at_once_are_all_kept() {
    let broker = Broker::start().await;
    let server = broker.server.as_ref().unwrap().broker().clone();
    tokio::task::block_in_place(|| {
        for round in 0..50 {
            let name = format!("u{round}");
            server.add_user(&name, "pw").unwrap();
            let start = std::sync::Barrier::new(3);
            std::thread::scope(|s| {
                s.spawn(|| {
                    start.wait();
                    server
                        .set_user_limits(&name, limits(Some(1), None))
                        .unwrap();
                });
                s.spawn(|| {
                    start.wait();
                    server
                        .set_user_limits(&name, limits(None, Some(2)))
                        .unwrap();
                });
                s.spawn(|| {
                    start.wait();
                    server
                        .set_user_tags(&name, vec!["monitoring".into()])
                        .unwrap();
                });
            });
            let user = server.user(&name).unwrap();
            assert_eq!(user.limits, limits(Some(1), Some(2)), "round {round}");
            assert_eq!(user.tags, vec!["monitoring".to_owned()], "round {round}");
        }
    });
}
