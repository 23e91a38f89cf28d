//! `lepusctl` as scripts call `rabbitmqctl`: the list commands print RabbitMQ's banners,
//! default columns and tab-separated rows (observed from rabbitmqctl 3.10.8 against a node
//! in the same state), and bad usage exits with 64 as rabbitmqctl does.

mod common;

use std::process::Command;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;

/// Runs lepusctl against the broker's admin socket: (exit status, stdout, stderr).
fn lepusctl(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    let data_dir = broker
        .server
        .as_ref()
        .map(|s| s.broker().config.data_dir.clone())
        .expect("a running broker");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lepusctl"));
    cmd.arg("--data-dir").arg(data_dir).args(args);
    output(cmd)
}

/// Runs a command: (exit status, stdout, stderr).
fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd
        .env_remove("LEPUS_ADMIN_SOCKET")
        .output()
        .expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The blocking command runs off the runtime's threads.
async fn ctl(broker: &Broker, args: &[&str]) -> (i32, String, String) {
    tokio::task::block_in_place(|| lepusctl(broker, args))
}

async fn declare_and_publish(broker: &Broker) -> (lapin::Connection, lapin::Channel) {
    let (conn, ch) = broker.channel().await;
    ch.queue_declare(
        "q1".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "q1".into(),
        "amq.direct".into(),
        "rk".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "q1".into(),
        BasicPublishOptions::default(),
        b"x",
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_list_queues_prints_its_banner_and_default_columns() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    assert_eq!(
        ctl(&broker, &["list_queues"]).await,
        (
            0,
            "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\nname\tmessages\nq1\t1\n"
                .into(),
            String::new()
        )
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_queues"]).await.1,
        "name\tmessages\nq1\t1\n"
    );
    assert_eq!(
        ctl(
            &broker,
            &[
                "-q",
                "list_queues",
                "--no-table-headers",
                "name",
                "messages",
                "consumers",
                "durable"
            ]
        )
        .await
        .1,
        "q1\t1\t0\ttrue\n"
    );
    assert_eq!(
        ctl(
            &broker,
            &[
                "-q",
                "list_queues",
                "name",
                "arguments",
                "--formatter",
                "json"
            ]
        )
        .await
        .1,
        "[\n{\"name\":\"q1\",\"arguments\":[]}\n]\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_the_other_lists_read_as_it_prints_them() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    assert_eq!(
        ctl(&broker, &["-q", "list_bindings"]).await.1,
        "source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments\n\
         \texchange\tq1\tqueue\tq1\t[]\n\
         amq.direct\texchange\tq1\tqueue\trk\t[]\n"
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_users"]).await.1,
        "user\ttags\nguest\t[administrator]\n"
    );
    assert_eq!(
        ctl(&broker, &["list_permissions"]).await.1,
        "Listing permissions for vhost \"/\" ...\nuser\tconfigure\twrite\tread\nguest\t.*\t.*\t.*\n"
    );
    assert_eq!(ctl(&broker, &["-q", "list_vhosts"]).await.1, "name\n/\n");
    let exchanges = ctl(&broker, &["-q", "list_exchanges"]).await.1;
    assert!(
        exchanges.starts_with("name\ttype\n\tdirect\namq.direct\tdirect\n"),
        "{exchanges}"
    );
    let policy = lepus::store::definitions::PolicyDef {
        vhost: "/".into(),
        name: "pol".into(),
        pattern: "^q".into(),
        apply_to: "queues".into(),
        definition: serde_json::json!({"max-length": 5}),
        priority: 2,
    };
    broker
        .server
        .as_ref()
        .unwrap()
        .broker()
        .put_policy(policy, false)
        .unwrap();
    assert_eq!(
        ctl(&broker, &["-q", "list_policies"]).await.1,
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tpol\t^q\tqueues\t{\"max-length\":5}\t2\n"
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_queues", "name", "policy"])
            .await
            .1,
        "name\tpolicy\nq1\tpol\n"
    );
    let conns = ctl(&broker, &["-q", "list_connections", "user", "state"])
        .await
        .1;
    assert_eq!(conns, "user\tstate\nguest\trunning\n");
    assert_eq!(
        ctl(&broker, &["list_consumers", "-p", "nowhere"]).await.1,
        "Listing consumers in vhost nowhere ...\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_bad_usage_exits_with_64() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    assert_eq!(ctl(&broker, &["no_such_command"]).await.0, 64);
    let (status, out, err) = ctl(&broker, &["list_queues", "bogus_col"]).await;
    assert_eq!((status, out.as_str()), (64, ""));
    assert_eq!(
        err,
        "Error (argument validation): Info key(s) bogus_col are not supported\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_objects_are_changed_with_its_messages_and_statuses() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    assert_eq!(
        ctl(&broker, &["add_vhost", "v3"]).await,
        (0, "Adding vhost \"v3\" ...\n".into(), String::new())
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_vhosts"]).await.1,
        "name\n/\nv3\n"
    );
    assert_eq!(ctl(&broker, &["delete_vhost", "v3"]).await.0, 0);
    assert_eq!(
        ctl(&broker, &["delete_vhost", "v3"]).await,
        (
            65,
            "Deleting vhost \"v3\" ...\nVirtual host 'v3' does not exist\n".into(),
            String::new()
        )
    );
    assert_eq!(
        ctl(&broker, &["set_policy", "-p", "/", "--priority", "1", "--apply-to", "queues", "p2", "^q", "{\"max-length\":1}"]).await,
        (0, "Setting policy \"p2\" for pattern \"^q\" to \"{\"max-length\":1}\" with priority \"1\" for vhost \"/\" ...\n".into(), String::new())
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_policies"])
            .await
            .1
            .lines()
            .nth(1),
        Some("/\tp2\t^q\tqueues\t{\"max-length\":1}\t1")
    );
    assert_eq!(ctl(&broker, &["clear_policy", "p2"]).await.0, 0);
    assert_eq!(
        ctl(&broker, &["clear_policy", "p2"]).await,
        (
            69,
            "Clearing policy \"p2\" on vhost \"/\" ...\n".into(),
            "Error:\nParameter does not exist\n".into()
        )
    );
    assert_eq!(
        ctl(&broker, &["purge_queue", "q1"]).await,
        (
            0,
            "Purging queue 'q1' in vhost '/' ...\n".into(),
            String::new()
        )
    );
    assert_eq!(
        ctl(&broker, &["delete_queue", "q1"]).await,
        (0, "Deleting queue 'q1' on vhost '/' ...\nQueue was successfully deleted with 0 ready messages\n".into(), String::new())
    );
    assert_eq!(
        ctl(&broker, &["delete_queue", "q1"]).await,
        (
            64,
            "Deleting queue 'q1' on vhost '/' ...\n".into(),
            "Error:\nQueue not found\n".into()
        )
    );
    assert_eq!(
        ctl(&broker, &["authenticate_user", "guest", "guest"])
            .await
            .1,
        "Authenticating user \"guest\" ...\nSuccess\n"
    );
    assert_eq!(
        ctl(&broker, &["authenticate_user", "guest", "nope"])
            .await
            .0,
        65
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_close_connection_tells_the_client_why() {
    let broker = Broker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    let name = within(async {
        loop {
            let listed = ctl(
                &broker,
                &["-q", "list_connections", "name", "--no-table-headers"],
            )
            .await
            .1;
            if let Some(line) = listed.lines().next() {
                return line.to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        ctl(
            &broker,
            &["close_connection", &name, "Closed via rabbitmqctl"]
        )
        .await
        .1,
        format!("Closing connection {name}, reason: Closed via rabbitmqctl...\n")
    );
    assert_eq!(
        raw.expect_connection_close().await,
        (
            320,
            "CONNECTION_FORCED - Closed via rabbitmqctl".into(),
            0,
            0
        )
    );
    let dir = std::env::temp_dir().join(format!("lepusctl-defs-{}.json", std::process::id()));
    let path = dir.to_str().unwrap();
    assert_eq!(ctl(&broker, &["export_definitions", path]).await.0, 0);
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&dir).unwrap()).unwrap();
    assert_eq!(exported["vhosts"], serde_json::json!([{"name": "/"}]));
    assert_eq!(ctl(&broker, &["import_definitions", path]).await.0, 0);
    let _ = std::fs::remove_file(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_stop_app_closes_amqp_and_start_app_brings_it_back() {
    let broker = Broker::start().await;
    let _publisher = declare_and_publish(&broker).await;
    let mut raw = broker.raw().await;
    raw.handshake().await;
    assert_eq!(
        ctl(&broker, &["await_startup"]).await,
        (0, "".into(), "".into())
    );

    let (status, out, _) = ctl(&broker, &["stop_app"]).await;
    assert_eq!(status, 0);
    assert!(
        out.starts_with("Stopping rabbit application on node lepus@"),
        "{out}"
    );
    // Same as RabbitMQ: every client is told why, and new ones are refused at the door.
    assert_eq!(
        raw.expect_connection_close().await,
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'".into(),
            0,
            0
        )
    );
    // The AMQP listener is closed while stopped. (Connecting to its port is no test: a
    // broker of a test running beside this one may have been given the freed port.)
    let server = broker.server.as_ref().unwrap().broker().clone();
    assert!(
        !server.connections.app_running(),
        "the AMQP side is stopped"
    );
    // Commands that need the app are refused with rabbitmqctl's words and 64 ...
    let (status, _, err) = ctl(&broker, &["list_queues"]).await;
    assert_eq!(status, 64);
    assert!(
        err.starts_with(
            "Error: this command requires the 'rabbit' app to be running on the target node. \
         Start it with 'rabbitmqctl start_app'.\nArguments given:\n"
        ),
        "{err}"
    );
    // ... and await_startup gives up with 69.
    assert_eq!(
        ctl(&broker, &["await_startup", "--timeout", "1"]).await,
        (69, "".into(), "Error:\nrabbit_is_not_running\n".into())
    );

    let (status, out, _) = ctl(&broker, &["start_app"]).await;
    assert_eq!(status, 0);
    assert!(out.starts_with("Starting node lepus@"), "{out}");
    assert_eq!(ctl(&broker, &["-q", "await_startup"]).await.0, 0);
    // The same port takes clients again, and the queue kept its message.
    let (_conn, ch) = broker.channel().await;
    let got = ch
        .basic_get("q1".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message survived stop_app");
    assert_eq!(got.delivery.data, b"x");
    assert_eq!(
        ctl(&broker, &["-q", "list_queues", "name", "messages"]).await,
        (0, "name\tmessages\nq1\t0\n".into(), "".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_start_app_returns_once_clients_can_connect() {
    let broker = Broker::start().await;
    assert_eq!(ctl(&broker, &["stop_app"]).await.0, 0);
    // Hold the port the listener gave up, so that it cannot open again yet. (Another
    // test's broker could be given the freed port first; it is one of thousands.)
    let squatter = within(async {
        loop {
            match tokio::net::TcpListener::bind(broker.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    // While the port is taken, start_app does not say the broker started (it did at once
    // before, and a client connecting as soon as it returned was refused) ...
    let (status, out, err) = ctl(&broker, &["start_app"]).await;
    assert_eq!(status, 69, "{out}");
    assert!(
        err.starts_with("Error: the AMQP listeners are not open again after 10 s"),
        "{err}"
    );
    // ... and once the port is free, the listener takes it and start_app says so.
    drop(squatter);
    let (status, out, err) = ctl(&broker, &["start_app"]).await;
    assert_eq!(status, 0, "{out}{err}");
    // Same as RabbitMQ: once start_app has returned, a client connects at its first try.
    let mut raw = broker.raw().await;
    raw.handshake().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_status_reports_its_sections_and_json() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    let (status, out, _) = ctl(&broker, &["status"]).await;
    assert_eq!(status, 0);
    assert!(out.starts_with("Status of node lepus@"), "{out}");
    for line in [
        "\nRuntime\n\nOS PID: ",
        "\nAlarms\n\n(none)\n",
        "\nTotals\n\nConnection count: 1\nQueue count: 1\nVirtual host count: 1\n",
        // Lepus's own: what the budgets hold, the queue's share among it.
        "\nBudgets\n\nQueues, exchanges and bindings: ",
        ", limit: 4294967296\nConsumers: ",
        &format!(
            "Interface: {}, port: {}, protocol: amqp, purpose: AMQP 0-9-1 and AMQP 1.0",
            broker.addr.ip(),
            broker.addr.port()
        ),
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    let (status, out, _) = ctl(&broker, &["status", "--formatter", "json"]).await;
    assert_eq!(status, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["pid"], serde_json::json!(std::process::id()));
    assert_eq!(json["totals"]["queue_count"], 1);
    assert_eq!(json["alarms"], serde_json::json!([]));
    assert_eq!(json["listeners"][0]["protocol"], "amqp");
    let topology = &json["lepus_budgets"]["topology_bytes"];
    assert!(topology["used"].as_u64().unwrap() >= 1536, "{topology}");
    assert_eq!(topology["limit"], 4294967296u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn called_as_rabbitmqctl_through_a_symlink_it_behaves_the_same() {
    let broker = Broker::start().await;
    let _client = declare_and_publish(&broker).await;
    let data_dir = broker
        .server
        .as_ref()
        .map(|s| s.broker().config.data_dir.clone())
        .expect("a running broker");
    let bin = std::env::temp_dir().join(format!("lepusctl-symlink-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let rabbitmqctl = bin.join("rabbitmqctl");
    let _ = std::fs::remove_file(&rabbitmqctl);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lepusctl"), &rabbitmqctl).unwrap();
    // Scripts name no data directory: the environment (or ./lepus-data) says where.
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&rabbitmqctl);
        cmd.args(args).env("LEPUS_DATA_DIR", &data_dir);
        output(cmd)
    };
    let listed = tokio::task::block_in_place(|| run(&["-q", "list_queues", "name", "messages"]));
    assert_eq!(listed, (0, "name\tmessages\nq1\t1\n".into(), "".into()));
    let (status, _, usage) = tokio::task::block_in_place(|| run(&["no_such_command"]));
    assert_eq!(status, 64);
    assert!(usage.contains("rabbitmqctl"), "{usage}");
    let _ = std::fs::remove_dir_all(&bin);
}

/// The admin socket serves only the broker's own user (and root), whatever the socket file's
/// mode: its mode is set just after it is bound, and a connection made in between was served
/// as the operator. Run as root (which can act as another user); skipped otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_socket_serves_no_other_user_even_when_its_file_lets_them_in() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let broker = Broker::start().await;
    let data_dir = broker
        .server
        .as_ref()
        .unwrap()
        .broker()
        .config
        .data_dir
        .clone();
    let socket = lepus::mgmt::admin::socket_path(&data_dir);
    if std::fs::metadata(&socket).unwrap().uid() != 0
        || !std::path::Path::new("/usr/bin/setpriv").exists()
    {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    // What a connection in the moment before the mode is set would find.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    for dir in [data_dir.as_path(), data_dir.parent().unwrap()] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
    }
    let mut as_nobody = Command::new("/usr/bin/setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_lepusctl"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("list_users");
    let (status, stdout, _) = tokio::task::block_in_place(|| output(as_nobody));
    assert_ne!(status, 0, "another user was served: {stdout}");
    assert!(!stdout.contains("guest"), "{stdout}");
    let (status, stdout, _) = ctl(&broker, &["list_users"]).await;
    assert_eq!(status, 0);
    assert!(stdout.contains("guest"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn same_as_rabbitmqctl_user_limits_are_set_merged_listed_and_cleared() {
    let broker = Broker::start().await;
    let set = ctl(
        &broker,
        &["set_user_limits", "guest", r#"{"max-connections": 1}"#],
    )
    .await;
    assert_eq!(
        set,
        (
            0,
            "Setting user limits to \"{\"max-connections\": 1}\" for user \"guest\" ...\n".into(),
            String::new()
        )
    );
    // Same as rabbitmqctl: the names given replace those set, the others stay.
    ctl(
        &broker,
        &["set_user_limits", "guest", r#"{"max-channels": 2}"#],
    )
    .await;
    assert_eq!(
        ctl(&broker, &["list_user_limits", "--user", "guest"])
            .await
            .1,
        "Listing limits for user \"guest\" ...\n{\"max-channels\":2,\"max-connections\":1}\n"
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_user_limits", "--global"])
            .await
            .1,
        "user\tlimits\nguest\t{\"max-channels\":2,\"max-connections\":1}\n"
    );
    let _first = broker.connect().await;
    assert_amqp_error(
        within(lapin::Connection::connect(
            &broker.uri(),
            Default::default(),
        ))
        .await,
        530,
        "NOT_ALLOWED - connection refused for user 'guest': user connection limit (1) is reached",
    );
    // rabbitmqctl's refusals, all with status 69.
    for (definition, why) in [
        (
            r#"{"max-foo": 1}"#,
            "Unrecognised terms [{<<\"max-foo\">>,1}] in user-limits",
        ),
        (
            r#"{"max-channels": "a"}"#,
            "max-channels should be a number, actually was <<\"a\">>",
        ),
        ("notjson", "JSON decoding error. Reason: badarg"),
    ] {
        let (status, _, stderr) = ctl(&broker, &["set_user_limits", "guest", definition]).await;
        assert_eq!((status, stderr), (69, format!("Error:\n{why}\n")));
    }
    let (status, _, stderr) = ctl(
        &broker,
        &["set_user_limits", "nobody", r#"{"max-channels": 1}"#],
    )
    .await;
    assert_eq!(
        (status, stderr.as_str()),
        (69, "Error:\n{:no_such_user, \"nobody\"}\n")
    );
    assert_eq!(
        ctl(&broker, &["clear_user_limits", "guest", "max-connections"]).await,
        (
            0,
            "Clearing \"max-connections\" limit for user \"guest\" ...\n".into(),
            String::new()
        )
    );
    let _second = broker.connect().await;
    ctl(&broker, &["clear_user_limits", "guest", "all"]).await;
    assert_eq!(
        ctl(&broker, &["-q", "list_user_limits", "--user", "guest"])
            .await
            .1,
        "{}\n"
    );
    assert_eq!(
        ctl(&broker, &["-q", "list_user_limits", "--global"])
            .await
            .1,
        ""
    );
}
