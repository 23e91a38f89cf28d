#!/usr/bin/env python3
"""rabbitmqctl against RabbitMQ, and lepusctl (as the rabbitmqctl scripts call) against Lepus,
in the same state: the same lines for the list commands, the same messages and exit statuses
for the changes. CONFORMANCE_CTL names the broker's tool; banners are left out with -q, and
lines whose order RabbitMQ leaves to its tables (exchanges, bindings) are compared sorted."""

import json
import os
import subprocess
import sys

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run, scenario  # noqa: E402


def ctl(*args):
    """(exit status, output lines) of one command; standard error after standard output."""
    argv = json.loads(os.environ["CONFORMANCE_CTL"]) + list(args)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    lines = [l for l in (out.stdout + "\n" + out.stderr).splitlines() if l.strip()]
    # rabbitmqctl's usage text after an error is long and names its own flags.
    keep = []
    for l in lines:
        if "Usage" in l or l.startswith("Arguments given") or l.startswith("rabbitmqctl [--node"):
            break
        keep.append(l)
    return [out.returncode, keep]


def local_port(conn):
    """The port of a pika connection's socket: the broker lists it as peer_port."""
    return conn._impl._transport._sock.getsockname()[1]


@scenario
def ctl_lists(url):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    # Arguments in name order: RabbitMQ lists them in the order the client sent them, Lepus
    # (whose tables are kept sorted) in name order (conformance/DIFFERENCES.md).
    ch.queue_declare("ctl-q", durable=True, arguments={"x-dead-letter-exchange": "dlx", "x-max-length": 10})
    ch.queue_bind("ctl-q", "amq.direct", "ctl-rk")
    # Confirmed, so that the message is queued before the tool looks (lepusctl starts in
    # milliseconds, rabbitmqctl in a second).
    ch.confirm_delivery()
    ch.basic_publish("", "ctl-q", b"x")
    seen = {}
    seen["set_policy"] = ctl("set_policy", "--priority", "3", "--apply-to", "queues", "ctl-pol", "^ctl-", '{"max-length":5}')
    # Other scenarios leave queues and exchanges behind (some with random names), and
    # RabbitMQ lists in its tables' order: compare this scenario's objects, sorted.
    def mine(result, keep=lambda l: l.startswith("ctl-")):
        status, lines = result
        return [status, lines[:1] + sorted(l for l in lines[1:] if keep(l))]

    seen["queues"] = mine(ctl("-q", "list_queues", "name", "messages", "consumers", "durable", "arguments", "policy"))
    status, lines = ctl("-q", "list_queues", "name", "durable", "--formatter", "json")
    listed = json.loads("\n".join(lines)) if status == 0 else []
    seen["queues_json"] = [status, [q for q in listed if q["name"].startswith("ctl-")]]
    seen["exchanges"] = mine(ctl("-q", "list_exchanges", "name", "type"),
                             lambda l: l.split("\t")[0] in ("", "amq.direct", "amq.topic", "amq.fanout"))
    seen["bindings"] = mine(ctl("-q", "list_bindings"), lambda l: "ctl-" in l)
    # The default user and vhost, and this scenario's own: what other scenarios made and
    # have not deleted yet is theirs.
    ours = lambda l: l.split("\t")[0] in ("guest", "/") or "ctl-" in l  # noqa: E731
    seen["users"] = mine(ctl("-q", "list_users"), ours)
    seen["permissions"] = mine(ctl("-q", "list_permissions"), ours)
    seen["policies"] = mine(ctl("-q", "list_policies"), lambda l: "ctl-" in l)
    seen["vhosts"] = mine(ctl("-q", "list_vhosts", "name"), ours)
    status, lines = ctl("-q", "list_queues", "--no-table-headers")
    seen["no_headers"] = [status, sorted(l for l in lines if l.startswith("ctl-"))]
    seen["unknown_command"] = ctl("no_such_command")[0]
    seen["unknown_column"] = ctl("list_queues", "bogus_col")
    ctl("clear_policy", "ctl-pol")
    ch.queue_delete("ctl-q")
    conn.close()
    return seen


@scenario
def ctl_changes(url):
    seen = {}
    seen["add_vhost"] = ctl("add_vhost", "ctl-vhost")
    seen["delete_vhost"] = ctl("delete_vhost", "ctl-vhost")
    seen["delete_vhost_again"] = ctl("delete_vhost", "ctl-vhost")
    seen["set_policy"] = ctl("set_policy", "ctl-p", "^nothing$", '{"message-ttl":1000}')
    seen["clear_policy"] = ctl("clear_policy", "ctl-p")
    seen["clear_policy_again"] = ctl("clear_policy", "ctl-p")
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("ctl-dq")
    ch.confirm_delivery()
    ch.basic_publish("", "ctl-dq", b"1")
    ch.basic_publish("", "ctl-dq", b"2")
    seen["purge"] = ctl("purge_queue", "ctl-dq")
    seen["delete_queue"] = ctl("delete_queue", "ctl-dq")
    seen["delete_queue_again"] = ctl("delete_queue", "ctl-dq")
    seen["authenticate"] = ctl("authenticate_user", "guest", "guest")
    seen["authenticate_bad"] = ctl("authenticate_user", "guest", "wrong")[0]
    # This scenario's connection, by its port: another scenario's may not be gone yet.
    status, rows = ctl("-q", "list_connections", "pid", "peer_port", "--no-table-headers")
    pids = [row.split("\t")[0] for row in rows if row.split("\t")[-1] == str(local_port(conn))]
    closed = ctl("close_connection", pids[0], "Closed via rabbitmqctl") if pids else [None, rows]
    seen["close_connection"] = closed[0]
    try:
        conn.process_data_events(time_limit=10)
        seen["client_saw"] = None
    except pika.exceptions.ConnectionClosedByBroker as e:
        seen["client_saw"] = [e.reply_code, e.reply_text]
    return seen


@scenario
def ctl_users(url):
    """The user, permission and resource commands scripts and Docker entrypoints call."""
    seen = {}
    seen["add_user"] = ctl("add_user", "ctl-alice", "s3cret")
    seen["add_user_again"] = ctl("add_user", "ctl-alice", "other")
    seen["change_password"] = ctl("change_password", "ctl-alice", "n3w")
    seen["authenticate_new"] = ctl("authenticate_user", "ctl-alice", "n3w")
    seen["authenticate_old"] = ctl("authenticate_user", "ctl-alice", "s3cret")[0]
    seen["set_user_tags"] = ctl("set_user_tags", "ctl-alice", "monitoring", "policymaker")
    seen["list_users"] = [l for l in ctl("-q", "list_users")[1] if l.startswith("ctl-")]
    seen["set_user_tags_none"] = ctl("set_user_tags", "ctl-alice")
    seen["set_permissions"] = ctl("set_permissions", "-p", "/", "ctl-alice", "^ctl-", ".*", ".*")
    seen["list_permissions"] = [l for l in ctl("-q", "list_permissions")[1] if l.startswith("ctl-")]
    seen["set_permissions_nobody"] = ctl("set_permissions", "ctl-nobody", ".*", ".*", ".*")
    seen["set_permissions_no_vhost"] = ctl("set_permissions", "-p", "ctl-none", "ctl-alice", ".*", ".*", ".*")
    seen["set_topic_permissions"] = ctl("set_topic_permissions", "ctl-alice", "amq.topic", "^a", "^b")
    seen["clear_topic_permissions"] = ctl("clear_topic_permissions", "ctl-alice", "amq.topic")
    seen["clear_permissions"] = ctl("clear_permissions", "ctl-alice")
    seen["delete_user"] = ctl("delete_user", "ctl-alice")
    seen["delete_user_again"] = ctl("delete_user", "ctl-alice")
    seen["change_password_nobody"] = ctl("change_password", "ctl-alice", "x")
    seen["set_user_tags_nobody"] = ctl("set_user_tags", "ctl-alice", "x")
    seen["add_user_missing_password"] = ctl("add_user", "ctl-bob")[0]
    # The node's name differs (lepus@host); the rest of each banner is compared.
    def banner(result):
        return [result[0], [l.split(" on ")[0] + " to " + l.split(" to ")[-1] for l in result[1]]]
    seen["watermark"] = [banner(ctl("set_vm_memory_high_watermark", "0.5")),
                         banner(ctl("set_vm_memory_high_watermark", "absolute", "2GB")),
                         banner(ctl("set_vm_memory_high_watermark", "0.4"))]
    seen["disk_free_limit"] = [banner(ctl("set_disk_free_limit", "mem_relative", "1.0")),
                               banner(ctl("set_disk_free_limit", "50MB")),
                               banner(ctl("set_disk_free_limit", "50000000"))]
    seen["watermark_bad"] = ctl("set_vm_memory_high_watermark", "7")
    seen["disk_free_limit_bad"] = ctl("set_disk_free_limit", "bogus")
    return seen


@scenario
def ctl_app(url):
    """stop_app and start_app, as the RabbitMQ Java client's test suite uses them: clients are
    told why and refused while stopped, commands that need the app are refused, and the
    broker takes clients again, with its durable queues, after start_app."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("ctl-app", durable=True)
    ch.confirm_delivery()
    ch.basic_publish("", "ctl-app", b"kept", pika.BasicProperties(delivery_mode=2))
    seen = {"await_startup": ctl("await_startup")}
    status, lines = ctl("stop_app")
    seen["stop_app"] = [status, [l.split(" on node ")[0] for l in lines]]
    try:
        conn.process_data_events(time_limit=10)
        seen["client_saw"] = None
    except pika.exceptions.ConnectionClosedByBroker as e:
        seen["client_saw"] = [e.reply_code, e.reply_text]
    try:
        pika.BlockingConnection(pika.URLParameters(url + "?connection_attempts=1&socket_timeout=2"))
        seen["connect_while_stopped"] = "connected"
    except pika.exceptions.AMQPConnectionError:
        seen["connect_while_stopped"] = "refused"
    seen["list_while_stopped"] = ctl("list_queues")
    seen["await_while_stopped"] = ctl("await_startup", "--timeout", "1")
    status, lines = ctl("start_app")
    seen["start_app"] = [status, [l.split(" node ")[0] for l in lines]]
    seen["await_after_start"] = ctl("await_startup")
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    method, _, body = ch.basic_get("ctl-app", auto_ack=True)
    seen["kept"] = body.decode() if method else None
    ch.queue_delete("ctl-app")
    conn.close()
    return seen


@scenario
def ctl_user_limits(url):
    """set_user_limits, clear_user_limits and list_user_limits, as scripts call them."""
    ctl("add_user", "ctl-lim", "pw")
    seen = {}
    seen["set"] = ctl("set_user_limits", "ctl-lim", '{"max-connections": 1}')
    seen["merge"] = ctl("set_user_limits", "ctl-lim", '{"max-channels": 2}')
    seen["list"] = ctl("list_user_limits", "--user", "ctl-lim")
    seen["list_quiet"] = ctl("-q", "list_user_limits", "--user", "ctl-lim")
    status, lines = ctl("-q", "list_user_limits", "--global")
    seen["global"] = [status, [l for l in lines if l.startswith("user") or l.startswith("ctl-")]]
    seen["negative"] = ctl("set_user_limits", "ctl-lim", '{"max-channels": -5}')
    seen["after_negative"] = ctl("-q", "list_user_limits", "--user", "ctl-lim")
    seen["unknown"] = ctl("set_user_limits", "ctl-lim", '{"max-foo": 1}')
    seen["not_a_number"] = ctl("set_user_limits", "ctl-lim", '{"max-channels": "a"}')
    seen["float"] = ctl("set_user_limits", "ctl-lim", '{"max-channels": 1.5}')
    seen["not_json"] = ctl("set_user_limits", "ctl-lim", "notjson")
    seen["not_an_object"] = ctl("set_user_limits", "ctl-lim", "[1]")
    seen["no_user"] = ctl("set_user_limits", "ctl-nobody", '{"max-channels": 1}')
    seen["clear_one"] = ctl("clear_user_limits", "ctl-lim", "max-connections")
    seen["clear_unknown"] = ctl("clear_user_limits", "ctl-lim", "max-foo")
    seen["after_clear"] = ctl("-q", "list_user_limits", "--user", "ctl-lim")
    seen["clear_all"] = ctl("clear_user_limits", "ctl-lim", "all")
    seen["after_clear_all"] = ctl("-q", "list_user_limits", "--user", "ctl-lim")
    seen["clear_no_user"] = ctl("clear_user_limits", "ctl-nobody", "all")
    seen["list_no_user"] = ctl("list_user_limits", "--user", "ctl-nobody")
    ctl("delete_user", "ctl-lim")
    return seen


if __name__ == "__main__":
    run()
