#!/usr/bin/env python3
"""The management API and the Prometheus endpoint over plain HTTP: status codes, error bodies,
paging, the shape of every kind of object (field names and types, where values are not
deterministic), and RabbitMQ's metric names."""

import json
import os
import re
import sys
import time

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import endpoints, get_json, http, quote, run, scenario, shape  # noqa: E402

# Fields of Erlang's own machinery (garbage collection, reductions, the classic queue's
# backing store), which Lepus has no equivalent of; left out of shape comparisons
# (conformance/DIFFERENCES.md).
ERLANG_ONLY = {"garbage_collection", "reductions", "reductions_details", "backing_queue_status"}


# Present or not by timing on both brokers: RabbitMQ shows it once the object's process has
# hibernated (about a second at rest), Lepus once two rate samples found it at rest.
TIMING = {"idle_since"}


def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in ERLANG_ONLY | TIMING}
    return v


@scenario
def http_errors(url):
    seen = {}
    status, headers, body = http("GET", "/api/overview", auth=None)
    seen["no_auth"] = [status, headers.get("www-authenticate"), body]
    seen["bad_password"] = http("GET", "/api/overview", auth=("guest", "nope"))[::2]
    http("PUT", "/api/users/http-plain", {"password": "pw", "tags": ""})
    http("PUT", "/api/users/http-mgr", {"password": "pw", "tags": "management"})
    seen["no_tags"] = http("GET", "/api/overview", auth=("http-plain", "pw"))[::2]
    seen["not_admin"] = http("GET", "/api/users", auth=("http-mgr", "pw"))[::2]
    seen["not_monitor"] = http("GET", "/api/nodes", auth=("http-mgr", "pw"))[::2]
    seen["no_vhost_access"] = http("GET", "/api/queues/%2F/x", auth=("http-mgr", "pw"))[::2]
    seen["policy_not_policymaker"] = http("GET", "/api/policies/%2F/x", auth=("http-mgr", "pw"))[::2]
    seen["operator_policy_not_admin"] = http(
        "GET", "/api/operator-policies/%2F/x", auth=("http-mgr", "pw"))[::2]
    seen["not_found"] = http("GET", "/api/queues/%2F/http-nope")[::2]
    seen["no_such_vhost"] = http("GET", "/api/queues/nope")[::2]
    seen["bad_type"] = http("PUT", "/api/exchanges/%2F/http-x", {"type": "nope"})[::2]
    http("PUT", "/api/queues/%2F/http-q", {"durable": True})
    seen["inequivalent"] = http("PUT", "/api/queues/%2F/http-q", {"durable": False})[::2]
    seen["trailing_slash"] = http("GET", "/api/queues/%2F/http-q/")[0]
    seen["default_exchange"] = get_json("/api/exchanges/%2F/amq.default")[1]["name"]
    seen["delete_system_exchange"] = http("DELETE", "/api/exchanges/%2F/amq.direct")[0]
    http("DELETE", "/api/queues/%2F/http-q")
    for u in ("http-plain", "http-mgr"):
        http("DELETE", "/api/users/" + u)
    return seen


@scenario
def http_paging(url):
    http("PUT", "/api/vhosts/http-paging", {})
    for name in ("b-2", "a-1", "c-3", "b-4"):
        http("PUT", "/api/queues/http-paging/" + name, {})
    seen = {}
    seen["plain"] = [q["name"] for q in get_json("/api/queues/http-paging")[1]]
    seen["columns"] = get_json("/api/queues/http-paging?columns=name,durable")[1]
    page = get_json("/api/queues/http-paging?page=2&page_size=3")[1]
    seen["page"] = {k: v for k, v in page.items() if k != "items"}
    seen["page_items"] = [q["name"] for q in page["items"]]
    filtered = get_json("/api/queues/http-paging?page=1&name=b-&sort=name&sort_reverse=true")[1]
    seen["filtered"] = [filtered["filtered_count"], [q["name"] for q in filtered["items"]]]
    regex = get_json("/api/queues/http-paging?page=1&name=%5E%5Bac%5D&use_regex=true")[1]
    seen["regex"] = [q["name"] for q in regex["items"]]
    http("DELETE", "/api/vhosts/http-paging")
    return seen


def until(path, ready, timeout=20):
    """The JSON at `path` once `ready` holds (RabbitMQ fills in statistics every 5 s)."""
    deadline = time.time() + timeout
    while True:
        status, body = get_json(path)
        if (status == 200 and ready(body)) or time.time() > deadline:
            return body
        time.sleep(0.25)


def consumers_detailed(q):
    """Whether each of a queue's consumers shows its channel's details."""
    details = q.get("consumer_details") or []
    return bool(details) and all(c.get("channel_details") for c in details)


@scenario
def http_shapes(url):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("http-shape", durable=True)
    ch.basic_publish("", "http-shape", b"m")
    ch.basic_qos(prefetch_count=2)
    ch.basic_consume("http-shape", lambda *a: None, consumer_tag="shape-tag")
    conn.process_data_events(time_limit=0.5)
    seen = {}
    # RabbitMQ fills in a consumer's channel_details from its statistics too: [] until then.
    queue = until("/api/queues/%2F/http-shape", lambda q: "message_stats" in q and q.get("messages_unacknowledged") == 1
                  and consumers_detailed(q))
    seen["queue"] = shape(strip(queue))
    # A quorum queue has fields of its own (leader, members, online, open_files...).
    ch.queue_declare("http-shape-qq", durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_publish("", "http-shape-qq", b"m")
    ch.basic_consume("http-shape-qq", lambda *a: None, consumer_tag="shape-qq-tag")
    conn.process_data_events(time_limit=0.5)
    qq = until("/api/queues/%2F/http-shape-qq",
               lambda q: "message_stats" in q and q.get("messages_unacknowledged") == 1
               and consumers_detailed(q))
    # Keyed by node name, which differs between the brokers.
    qq["open_files"] = sorted(qq.get("open_files", {}).values())
    seen["quorum_queue"] = shape(strip(qq))
    conns = until("/api/connections", lambda cs: any("recv_oct" in c for c in cs))
    seen["connection"] = shape(strip([c for c in conns if "recv_oct" in c][0]))
    chans = until("/api/channels", lambda cs: any("message_stats" in c for c in cs))
    seen["channel"] = shape(strip([c for c in chans if "message_stats" in c][0]))
    consumers = until("/api/consumers", lambda cs: any(c["consumer_tag"] == "shape-tag" for c in cs))
    seen["consumer"] = shape(strip([c for c in consumers if c["consumer_tag"] == "shape-tag"][0]))
    seen["exchange"] = shape(strip(get_json("/api/exchanges/%2F/amq.topic")[1]))
    seen["binding"] = shape(get_json("/api/queues/%2F/http-shape/bindings")[1])
    vhost = until("/api/vhosts/%2F", lambda v: "message_stats" in v and "recv_oct" in v)
    # Keyed by node name, which differs between the brokers.
    vhost["cluster_state"] = sorted(vhost["cluster_state"].values())
    seen["vhost"] = shape(vhost)
    seen["user"] = shape(get_json("/api/users/guest")[1])
    seen["permission"] = get_json("/api/permissions/%2F/guest")[1]
    seen["whoami"] = get_json("/api/whoami")[1]
    conn.close()
    http("DELETE", "/api/queues/%2F/http-shape")
    http("DELETE", "/api/queues/%2F/http-shape-qq")
    return seen


@scenario
def http_live_values(url):
    """Values operators read, compared as they are: which consumer a single-active-consumer
    queue delivers to, what an open transaction holds, the connection's state."""
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "http-live"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("http-sac", arguments={"x-single-active-consumer": True})
    for tag in ("sac-first", "sac-second"):
        ch.basic_consume("http-sac", lambda *a: None, consumer_tag=tag)
    seen = {}
    # RabbitMQ fills in the active consumer's tag from its statistics, which may lag the
    # consumer details.
    q = until("/api/queues/%2F/http-sac", lambda q: len(q.get("consumer_details", [])) == 2
              and q.get("single_active_consumer_tag"))
    seen["sac_tag"] = q.get("single_active_consumer_tag")
    seen["sac_consumers"] = sorted(
        [c["consumer_tag"], c["active"], c["activity_status"]] for c in q.get("consumer_details", []))
    tx = conn.channel()
    tx.queue_declare("http-tx")
    tx.tx_select()
    for body in (b"m1", b"m2"):
        tx.basic_publish("", "http-tx", body)
    conn.process_data_events(time_limit=0.2)

    def mine(cs):
        return [c for c in cs if c.get("client_properties", {}).get("connection_name") == "http-live"]

    me = mine(until("/api/connections", lambda cs: len(mine(cs)) == 1))
    seen["state"] = [c.get("state") for c in me]
    name = me[0]["name"] if me else None
    chans = until("/api/channels", lambda cs: any(
        c["connection_details"]["name"] == name and c.get("messages_uncommitted") == 2 for c in cs))
    seen["uncommitted"] = sorted(
        c.get("messages_uncommitted") for c in chans if c["connection_details"]["name"] == name)
    tx.tx_commit()
    conn.close()
    for queue in ("http-sac", "http-tx"):
        http("DELETE", "/api/queues/%2F/" + queue)
    return seen


@scenario
def http_message_bytes(url):
    """What a queue counts of its messages' bodies: ready, unacknowledged, persistent."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("http-bytes", durable=True)
    ch.confirm_delivery()
    for body, mode in ((b"p" * 10, 2), (b"p" * 20, 2), (b"t" * 5, 1)):
        ch.basic_publish("", "http-bytes", body, pika.BasicProperties(delivery_mode=mode))
    ch.basic_get("http-bytes", auto_ack=False)
    fields = ("messages", "messages_persistent", "message_bytes", "message_bytes_ready",
              "message_bytes_unacknowledged", "message_bytes_persistent")
    seen = {}
    q = until("/api/queues/%2F/http-bytes", lambda q: q.get("messages_unacknowledged") == 1)
    seen["one_unacked"] = {f: q.get(f) for f in fields}
    ch.basic_ack(1)
    q = until("/api/queues/%2F/http-bytes", lambda q: q.get("messages") == 2)
    seen["acked"] = {f: q.get(f) for f in fields}
    conn.close()
    http("DELETE", "/api/queues/%2F/http-bytes")
    return seen


@scenario
def quorum_dlx_at_least_once(url):
    """At-least-once dead-lettering: a quorum queue keeps dead letters its exchange cannot
    take (`messages_dlx`), counts them among its messages and against its length limit, keeps
    them through a purge, and routes them again when a policy changes."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    q, x, t = "http-alo-src", "http-alo-dlx", "http-alo-target"
    for name in (q, t):
        ch.queue_delete(name)
    ch.exchange_delete(x)
    ch.queue_declare(q, durable=True, arguments={
        "x-queue-type": "quorum", "x-dead-letter-exchange": x, "x-max-length": 3,
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    for body in (b"m1", b"m2", b"m3"):
        ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
    for _ in range(2):
        method, _, _ = ch.basic_get(q)
        ch.basic_reject(method.delivery_tag, requeue=False)
    fields = ("messages", "messages_ready", "messages_unacknowledged", "messages_dlx",
              "message_bytes_dlx", "message_bytes")
    path = "/api/queues/%2F/" + q
    seen = {}
    body = until(path, lambda s: s.get("messages_dlx") == 2 and s.get("messages") == 3)
    seen["held"] = {f: body.get(f) for f in fields}
    published = []
    for body in (b"m4", b"m5"):
        try:
            ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
            published.append("ack")
        except pika.exceptions.NackError:
            published.append("nack")
    seen["publishes_at_the_limit"] = published
    seen["purged"] = ch.queue_purge(q).method.message_count
    body = until(path, lambda s: s.get("messages_ready") == 0 and s.get("messages") == 2)
    seen["after_purge"] = {f: body.get(f) for f in fields}
    ch.exchange_declare(x, "fanout")
    ch.queue_declare(t, durable=True)
    ch.queue_bind(t, x)
    http("PUT", "/api/policies/%2F/http-alo", {
        "pattern": "^http-alo-src$", "definition": {"max-length": 100}, "apply-to": "queues"})
    body = until(path, lambda s: s.get("messages") == 0)
    seen["after_policy"] = {f: body.get(f) for f in fields}
    got = []
    for _ in range(2):
        method, props, body = ch.basic_get(t, auto_ack=True)
        got.append([body.decode() if body else None,
                    [d.get("reason") for d in (props.headers or {}).get("x-death", [])] if props else None])
    seen["target"] = got
    http("DELETE", "/api/policies/%2F/http-alo")
    for name in (q, t):
        ch.queue_delete(name)
    ch.exchange_delete(x)
    conn.close()
    return seen


@scenario
def restart_quorum_dlx_held(url, phase):
    """At-least-once dead letters held when the broker restarts: still held after it (not
    ready), and routed again at the start to a queue that has room for them now."""
    src, nowhere, x, full, refused = ("http-rs-src", "http-rs-nowhere", "http-rs-dlx",
                                      "http-rs-full", "http-rs-refused")
    fields = ("messages", "messages_ready", "messages_dlx")

    def counts(q, want):
        body = until("/api/queues/%2F/" + q, lambda s: [s.get(f) for f in fields] == want)
        return {f: body.get(f) for f in fields}

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    seen = {}
    if phase == "before":
        for q in (src, nowhere, full, refused):
            ch.queue_delete(q)
        ch.exchange_delete(x)
        ch.exchange_delete(x + "-refused")
        ch.exchange_declare(x, "fanout", durable=True)
        ch.exchange_declare(x + "-refused", "fanout", durable=True)
        ch.queue_declare(refused, durable=True)
        ch.queue_bind(refused, x + "-refused")
        # A full queue refuses the letter, and says so by dead-lettering the refusal.
        ch.queue_declare(full, durable=True, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish-dlx",
            "x-dead-letter-exchange": x + "-refused"})
        ch.queue_bind(full, x)
        ch.confirm_delivery()
        ch.basic_publish("", full, b"filler", pika.BasicProperties(delivery_mode=2))
        for q, dlx in ((src, x), (nowhere, "http-rs-missing")):
            ch.queue_declare(q, durable=True, arguments={
                "x-queue-type": "quorum", "x-dead-letter-exchange": dlx,
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
            for body in (b"held", b"ready"):
                ch.basic_publish("", q, body, pika.BasicProperties(delivery_mode=2))
            method, _, _ = ch.basic_get(q)
            ch.basic_reject(method.delivery_tag, requeue=False)
            seen[q] = counts(q, [2, 1, 1])
        seen["refused"] = counts(refused, [1, 1, None])["messages"]
        # Room for it now; its retry is three minutes away.
        seen["purged"] = ch.queue_purge(full).method.message_count
        conn.close()
        return seen
    seen[src] = counts(src, [1, 1, 0])
    seen[nowhere] = counts(nowhere, [2, 1, 1])
    method, props, body = ch.basic_get(full, auto_ack=True)
    seen["routed_again"] = [body.decode() if body else None,
                            [[d.get("reason"), d.get("queue"), d.get("count")]
                             for d in (props.headers or {}).get("x-death", [])] if props else None]
    seen["nowhere_ready"] = []
    while True:
        method, _, body = ch.basic_get(nowhere, auto_ack=True)
        if method is None:
            break
        seen["nowhere_ready"].append(body.decode())
    for q in (src, nowhere, full, refused):
        ch.queue_delete(q)
    ch.exchange_delete(x)
    ch.exchange_delete(x + "-refused")
    conn.close()
    return seen


@scenario
def restart_exchange_user(url, phase):
    """An exchange's `user_who_performed_action`: who declared it (over AMQP or the API),
    `rmq-internal` for the predeclared ones, the importing user for imported ones; an
    equivalent declare by another user changes nothing; durable ones keep it across a
    restart."""
    names = ("http-ux-amqp", "http-ux-transient", "http-ux-http", "http-ux-import")
    user, password = "http-ux", "pw"

    def who():
        listed = get_json("/api/exchanges/%2F?columns=name,user_who_performed_action")[1]
        return {x["name"]: x["user_who_performed_action"] for x in listed
                if x["name"] in names + ("", "amq.direct", "amq.rabbitmq.trace")}

    if phase == "after":
        seen = who()
        for name in names:
            http("DELETE", "/api/exchanges/%2F/" + name)
        http("DELETE", "/api/users/" + user)
        return seen
    for name in names:
        http("DELETE", "/api/exchanges/%2F/" + name)
    http("PUT", "/api/users/" + user, {"password": password, "tags": "management"})
    http("PUT", "/api/permissions/%2F/" + user, {"configure": ".*", "write": ".*", "read": ".*"})
    conn = pika.BlockingConnection(pika.URLParameters(
        url.replace("guest:guest@", "%s:%s@" % (user, password))))
    ch = conn.channel()
    ch.exchange_declare(names[0], "direct", durable=True)
    ch.exchange_declare(names[1], "fanout", durable=False)
    seen = {"put": http("PUT", "/api/exchanges/%2F/" + names[2], {"type": "topic", "durable": True},
                        auth=(user, password))[0]}
    seen["import"] = http("POST", "/api/definitions", {"exchanges": [
        {"name": names[3], "vhost": "/", "type": "direct", "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}}]})[0]
    guest = pika.BlockingConnection(pika.URLParameters(url))
    guest.channel().exchange_declare(names[0], "direct", durable=True)
    guest.close()
    seen["who"] = who()
    # Kept through the restart only if the exchange is.
    conn.close()
    return seen


@scenario
def http_publish_checks(url):
    """What the API's publish refuses as an AMQP publish would (another user's user_id), and a
    monitor closing someone else's connection."""
    http("PUT", "/api/queues/%2F/http-pub", {})
    seen = {}

    def publish(props, key="http-pub", auth=("guest", "guest")):
        status, _, body = http("POST", "/api/exchanges/%2F/amq.default/publish", {
            "properties": props, "routing_key": key, "payload": "x", "payload_encoding": "string"},
            auth=auth)
        return [status, body]

    seen["own_user_id"] = publish({"user_id": "guest"})
    seen["other_user_id"] = publish({"user_id": "someone-else"})
    http("PUT", "/api/users/http-mon", {"password": "pw", "tags": "monitoring"})
    conn = pika.BlockingConnection(pika.URLParameters(url))
    name = None
    deadline = time.time() + 20
    while name is None and time.time() < deadline:
        status, conns = get_json("/api/connections", auth=("http-mon", "pw"))
        name = conns[0]["name"] if status == 200 and conns else None
        time.sleep(0.25)
    status, _, body = http("DELETE", "/api/connections/" + quote(name or "none"), auth=("http-mon", "pw"))
    seen["monitor_closes_other"] = [status, body]
    conn.close()
    http("DELETE", "/api/users/http-mon")
    http("DELETE", "/api/queues/%2F/http-pub")
    return seen


@scenario
def http_aliveness_permissions(url):
    """The aliveness test runs as the caller: configure and read on its queue, write on the
    default exchange; each refusal is a 401 with the channel's text."""
    http("PUT", "/api/users/http-alive", {"password": "pw", "tags": "management"})
    seen = {}
    for name, perms in [("none", ["^$", "^$", "^$"]), ("no_write", [".*", "^$", ".*"]),
                        ("no_read", [".*", ".*", "^$"]), ("all", [".*", ".*", ".*"])]:
        http("PUT", "/api/permissions/%2F/http-alive",
             {"configure": perms[0], "write": perms[1], "read": perms[2]})
        seen[name] = http("GET", "/api/aliveness-test/%2F", auth=("http-alive", "pw"))[::2]
    http("DELETE", "/api/permissions/%2F/http-alive")
    seen["no_vhost"] = http("GET", "/api/aliveness-test/%2F", auth=("http-alive", "pw"))[::2]
    http("DELETE", "/api/users/http-alive")
    http("DELETE", "/api/queues/%2F/aliveness-test")
    return seen


@scenario
def http_refusals(url):
    """What the API checks as AMQP does (write on an alternate or dead-letter exchange, topic
    read on a binding's key), how it words a refusal (by how it ran the request), and another
    connection's exclusive queue, locked to it."""
    http("PUT", "/api/users/http-app", {"password": "pw", "tags": "management"})
    http("PUT", "/api/permissions/%2F/http-app", {
        "configure": "^app\\.", "write": "^(app\\..*|amq\\.topic)$", "read": "^(app\\..*|amq\\.topic)$"})
    http("PUT", "/api/topic-permissions/%2F/http-app",
         {"exchange": "amq.topic", "write": "^app\\.", "read": "^app\\."})
    http("PUT", "/api/exchanges/%2F/http-secret", {"type": "fanout"})
    http("PUT", "/api/exchanges/%2F/http-inner", {"type": "fanout", "internal": True})
    http("PUT", "/api/queues/%2F/http-secretq", {})
    app = ("http-app", "pw")
    seen = {}
    seen["alternate"] = http("PUT", "/api/exchanges/%2F/app.x", {
        "type": "fanout", "arguments": {"alternate-exchange": "http-secret"}}, auth=app)[::2]
    seen["dead_letter"] = http("PUT", "/api/queues/%2F/app.q", {
        "arguments": {"x-dead-letter-exchange": "http-secret"}}, auth=app)[::2]
    seen["own_queue"] = http("PUT", "/api/queues/%2F/app.q", {}, auth=app)[0]
    seen["bind_all_topics"] = http("POST", "/api/bindings/%2F/e/amq.topic/q/app.q",
                                   {"routing_key": "#"}, auth=app)[::2]
    seen["bind_own_topics"] = http("POST", "/api/bindings/%2F/e/amq.topic/q/app.q",
                                   {"routing_key": "app.events"}, auth=app)[0]
    seen["purge"] = http("DELETE", "/api/queues/%2F/http-secretq/contents", auth=app)[::2]
    seen["get"] = http("POST", "/api/queues/%2F/http-secretq/get",
                       {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}, auth=app)[::2]

    def publish(exchange, key, auth):
        return http("POST", "/api/exchanges/%2F/" + exchange + "/publish", {
            "properties": {}, "routing_key": key, "payload": "x", "payload_encoding": "string"},
            auth=auth)[::2]

    seen["publish_no_write"] = publish("http-secret", "k", app)
    seen["publish_topic"] = publish("amq.topic", "other.k", app)
    seen["publish_internal"] = publish("http-inner", "k", ("guest", "guest"))
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("http-mine", exclusive=True)
    ch.basic_publish("", "http-mine", b"private")
    seen["exclusive_delete"] = http("DELETE", "/api/queues/%2F/http-mine")[::2]
    seen["exclusive_purge"] = http("DELETE", "/api/queues/%2F/http-mine/contents")[::2]
    seen["exclusive_get"] = http("POST", "/api/queues/%2F/http-mine/get",
                                 {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})[::2]
    seen["exclusive_left"] = ch.queue_declare("http-mine", passive=True).method.message_count
    conn.close()
    for path in ("/api/queues/%2F/app.q", "/api/queues/%2F/http-secretq", "/api/exchanges/%2F/http-secret",
                 "/api/exchanges/%2F/http-inner", "/api/users/http-app"):
        http("DELETE", path)
    return seen


@scenario
def http_api_message_stats(url):
    """What the API's publishes and gets count, in the vhost's totals (RabbitMQ does them on a
    channel of its own, with confirms and mandatory) and on the default exchange, which counts
    every message as routed out."""
    vh = "http-api-stats"
    http("PUT", "/api/vhosts/" + vh, {})
    http("PUT", "/api/permissions/%s/guest" % vh, {"configure": ".*", "write": ".*", "read": ".*"})
    http("PUT", "/api/queues/%s/stq" % vh, {})
    for key in ("stq", "stq", "stq", "nowhere"):
        http("POST", "/api/exchanges/%s/amq.default/publish" % vh, {
            "properties": {}, "routing_key": key, "payload": "x", "payload_encoding": "string"})
    for mode in ("ack_requeue_false", "ack_requeue_true", "reject_requeue_true"):
        http("POST", "/api/queues/%s/stq/get" % vh, {"count": 1, "ackmode": mode, "encoding": "auto"})
    counted = ("publish", "confirm", "return_unroutable", "drop_unroutable", "get", "get_no_ack",
               "redeliver", "deliver_get", "ack")

    def stats(body):
        return {k: (body.get("message_stats") or {}).get(k) for k in counted}

    seen = {}
    vhost = until("/api/vhosts/" + vh, lambda v: stats(v)["get"] == 2 and stats(v)["publish"] == 4)
    seen["vhost"] = stats(vhost)
    queue = until("/api/queues/%s/stq" % vh, lambda q: stats(q)["get"] == 2)
    seen["queue"] = stats(queue)
    x = until("/api/exchanges/%s/amq.default" % vh,
              lambda x: (x.get("message_stats") or {}).get("publish_in") == 4)
    seen["default_exchange"] = {k: (x.get("message_stats") or {}).get(k) for k in ("publish_in", "publish_out")}
    http("DELETE", "/api/vhosts/" + vh)
    return seen


METRICS = [
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers", "rabbitmq_queue_messages_bytes", "rabbitmq_queue_messages_published_total",
    "rabbitmq_queue_messages_ready_bytes", "rabbitmq_queue_messages_unacked_bytes",
    "rabbitmq_queue_messages_persistent",
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues",
    "rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total",
    "rabbitmq_channels_opened_total", "rabbitmq_channels_closed_total",
    "rabbitmq_queues_declared_total", "rabbitmq_queues_created_total", "rabbitmq_queues_deleted_total",
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_delivered_total", "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_confirmed_total", "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_unroutable_dropped_total", "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_global_consumers", "rabbitmq_global_publishers", "rabbitmq_connection_incoming_bytes_total",
    "rabbitmq_connection_outgoing_bytes_total", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes", "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes", "rabbitmq_process_open_fds", "rabbitmq_process_max_fds",
    "rabbitmq_alarms_memory_used_watermark", "rabbitmq_alarms_free_disk_space_watermark",
    "rabbitmq_build_info", "rabbitmq_identity_info",
]


def scrape(path):
    status, headers, body = http("GET", path, auth=None, port=endpoints()[1])
    assert status == 200, status
    return body


def scrape_until(path, line, want):
    """(the scrape, the value `line` matched) once it is `want`, or the last after 20 s: the
    brokers' statistics lag (RabbitMQ's by up to its 5 s emission interval)."""
    pattern = re.compile(line, re.M)
    deadline = time.time() + 20
    while True:
        text = scrape(path)
        found = pattern.search(text)
        value = found and float(found.group(1))
        if value == want or time.time() > deadline:
            return text, value
        time.sleep(0.25)


@scenario
def prometheus_metrics(url):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("prom-q")
    for _ in range(2):
        ch.basic_publish("", "prom-q", b"m")
    seen = {}
    names = set(re.findall(r"^([a-z_]+)[{ ]", scrape("/metrics"), re.M))
    seen["present"] = {name: name in names for name in METRICS}
    line = r'^rabbitmq_queue_messages_ready\{vhost="/",queue="prom-q"\} (\S+)$'
    per_object, seen["per_object_ready"] = scrape_until("/metrics/per-object", line, 2)
    seen["per_object_persistent_bytes"] = "\nrabbitmq_queue_messages_persistent_bytes{" in per_object
    conn.close()
    http("DELETE", "/api/queues/%2F/prom-q")
    return seen


@scenario
def prometheus_detailed(url):
    """`/metrics/detailed`: which series each family holds, and a queue's depth in them."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare("prom-detailed")
    for _ in range(2):
        ch.basic_publish("", "prom-detailed", b"m")
    conn.process_data_events(time_limit=0.2)

    def names(text):
        found = set(re.findall(r"^([a-z_]+)[{ ]", text, re.M))
        return sorted(n for n in found if not n.startswith("telemetry_"))

    seen = {"bare": names(scrape("/metrics/detailed"))}
    ready = r'^rabbitmq_detailed_queue_messages_ready\{vhost="/",queue="prom-detailed"\} (\S+)$'
    coarse, _ = scrape_until("/metrics/detailed?family=queue_coarse_metrics&vhost=%2F", ready, 2)
    seen["coarse"] = names(coarse)
    seen["coarse_depth"] = re.findall(r'^rabbitmq_detailed_queue_messages(?:_ready|_unacked)?\{vhost="/",queue="prom-detailed"\} \S+$', coarse, re.M)
    for family in ("queue_metrics", "queue_consumer_count", "connection_coarse_metrics", "connection_metrics",
                   "channel_metrics", "channel_process_metrics", "exchange_names", "exchange_bindings",
                   "vhost_status", "node_coarse_metrics", "node_metrics", "node_persister_metrics", "no_such_family"):
        seen[family] = names(scrape("/metrics/detailed?family=" + family))
    seen["exchange"] = re.findall(r'^rabbitmq_cluster_exchange_name\{vhost="/",exchange="amq.fanout",type="fanout"\} \S+$',
                                  scrape("/metrics/detailed?family=exchange_names"), re.M)
    conn.close()
    http("DELETE", "/api/queues/%2F/prom-detailed")
    return seen


@scenario
def http_user_limits(url):
    """Per-user limits over the API, and what a client of that user sees at them: the
    refused connection and the channel over the limit, each with RabbitMQ's 530 and text."""
    seen = {}

    def answer(method, path, body=None):
        status, _, text = http(method, path, body)
        return [status, json.loads(text) if text else None]

    http("PUT", "/api/users/http-lim", {"password": "pw", "tags": ""})
    http("PUT", "/api/permissions/%2F/http-lim", {"configure": ".*", "write": ".*", "read": ".*"})
    seen["none"] = answer("GET", "/api/user-limits/http-lim")
    seen["no_user"] = answer("GET", "/api/user-limits/http-nobody")[0]
    seen["set_connections"] = answer("PUT", "/api/user-limits/http-lim/max-connections", {"value": 1})
    seen["set_channels"] = answer("PUT", "/api/user-limits/http-lim/max-channels", {"value": 2})
    seen["one"] = answer("GET", "/api/user-limits/http-lim")
    seen["listed"] = [i for i in answer("GET", "/api/user-limits")[1] if i["user"] == "http-lim"]
    seen["user"] = answer("GET", "/api/users/http-lim")[1]["limits"]
    exported = answer("GET", "/api/definitions")[1]["users"]
    seen["exported"] = [u["limits"] for u in exported if u["name"] == "http-lim"]
    seen["unknown_name"] = answer("PUT", "/api/user-limits/http-lim/max-foo", {"value": 3})
    seen["string_value"] = answer("PUT", "/api/user-limits/http-lim/max-channels", {"value": "7"})
    seen["float_value"] = answer("PUT", "/api/user-limits/http-lim/max-channels", {"value": 2.5})
    seen["no_value"] = answer("PUT", "/api/user-limits/http-lim/max-channels", {})[0]
    seen["set_no_user"] = answer("PUT", "/api/user-limits/http-nobody/max-channels", {"value": 1})[0]
    params = pika.URLParameters(url.replace("guest:guest", "http-lim:pw"))
    first = pika.BlockingConnection(params)
    try:
        pika.BlockingConnection(params)
        seen["second_connection"] = "opened"
    except pika.exceptions.ProbableAccessDeniedError as e:
        seen["second_connection"] = str(e)
    first.channel()
    first.channel()
    try:
        first.channel()
        seen["third_channel"] = "opened"
    except pika.exceptions.ConnectionClosedByBroker as e:
        seen["third_channel"] = [e.reply_code, e.reply_text]
    # The closed connection gave back its place.
    again = pika.BlockingConnection(params)
    again.channel()
    again.close()
    seen["cleared"] = answer("DELETE", "/api/user-limits/http-lim/max-connections")
    seen["cleared_again"] = answer("DELETE", "/api/user-limits/http-lim/max-connections")
    seen["after_clear"] = answer("GET", "/api/user-limits/http-lim")
    http("DELETE", "/api/user-limits/http-lim/max-channels")
    seen["all_cleared"] = answer("GET", "/api/user-limits/http-lim")
    http("DELETE", "/api/users/http-lim")
    return seen


@scenario
def http_what_a_management_user_sees(url):
    """A management user's view of shared objects: only its own consumers, the limits of
    the vhosts it can see; and a permission for a user or vhost that does not exist (400,
    not 404). A definitions import that stops at a bad policy keeps the ones before it in
    force."""
    seen = {}

    def answer(method, path, body=None, auth=None):
        status, _, text = http(method, path, body, **({"auth": auth} if auth else {}))
        return [status, json.loads(text) if text else None]

    for user in ("http-see-a", "http-see-b"):
        http("PUT", "/api/users/" + user, {"password": "pw", "tags": "management"})
        http("PUT", "/api/permissions/%2F/" + user, {"configure": ".*", "write": ".*", "read": ".*"})
    conns = {}
    for user in ("http-see-a", "http-see-b"):
        conn = pika.BlockingConnection(pika.URLParameters(url.replace("guest:guest", user + ":pw")))
        ch = conn.channel()
        ch.queue_declare("http-see-q")
        ch.basic_consume("http-see-q", lambda *a: None, consumer_tag=user + "-tag")
        conns[user] = conn
    deadline = time.time() + 10
    while time.time() < deadline:
        tags = sorted(c["consumer_tag"] for c in get_json("/api/consumers")[1])
        if "http-see-a-tag" in tags and "http-see-b-tag" in tags:
            break
        time.sleep(0.1)
    for path in ("/api/consumers", "/api/consumers/%2F"):
        status, listed = answer("GET", path, auth=("http-see-a", "pw"))
        seen[path] = [status, sorted([c["consumer_tag"], c["channel_details"]["user"]]
                                     for c in listed if c["queue"]["name"] == "http-see-q")]
    seen["consumers_no_vhost"] = answer("GET", "/api/consumers/http-see-novhost", auth=("http-see-a", "pw"))[0]
    http("PUT", "/api/vhost-limits/%2F/max-queues", {"value": 1000})
    status, limits = answer("GET", "/api/vhost-limits", auth=("http-see-a", "pw"))
    seen["vhost_limits"] = [status, [l for l in limits if l["vhost"] == "/"] if status == 200 else limits]
    http("DELETE", "/api/vhost-limits/%2F/max-queues")
    grant = {"configure": ".*", "write": ".*", "read": ".*"}
    seen["grant_no_user"] = answer("PUT", "/api/permissions/%2F/http-see-nobody", grant)
    seen["grant_no_vhost"] = answer("PUT", "/api/permissions/http-see-novhost/http-see-a", grant)
    seen["grant_no_user_bad_body"] = answer("PUT", "/api/permissions/%2F/http-see-nobody", {"x": 1})[0]
    topic = {"exchange": "amq.topic", "write": ".*", "read": ".*"}
    seen["topic_no_user"] = answer("PUT", "/api/topic-permissions/%2F/http-see-nobody", topic)
    seen["topic_no_vhost"] = answer("PUT", "/api/topic-permissions/http-see-novhost/http-see-a", {"x": 1})
    for conn in conns.values():
        conn.close()
    status, _ = answer("POST", "/api/definitions", {"policies": [
        {"vhost": "/", "name": "http-see-p1", "pattern": "^http-see-q$", "apply-to": "queues",
         "definition": {"max-length": 10}, "priority": 0},
        {"vhost": "/", "name": "http-see-p2", "pattern": ".*", "apply-to": "queues",
         "definition": {"http-no-such-key": 1}, "priority": 0}]})
    seen["import_status"] = status
    got = None
    for _ in range(50):
        got = get_json("/api/queues/%2F/http-see-q")[1].get("policy")
        if got:
            break
        time.sleep(0.1)
    seen["policy_in_force"] = got
    for p in ("http-see-p1", "http-see-p2"):
        http("DELETE", "/api/policies/%2F/" + p)
    http("DELETE", "/api/queues/%2F/http-see-q")
    for user in ("http-see-a", "http-see-b"):
        http("DELETE", "/api/users/" + user)
    return seen


@scenario
def http_what_a_monitor_sees(url):
    """A monitor sees every vhost's queues, but the policies only of vhosts it may use, as an
    administrator sees every vhost's; and what the overview holds for a monitor and for a
    management user."""
    seen = {}
    http("PUT", "/api/vhosts/http-mon-secret", {})
    http("PUT", "/api/policies/http-mon-secret/http-mon-p",
         {"pattern": "^never$", "definition": {"max-length": 1}, "apply-to": "queues"})
    http("PUT", "/api/operator-policies/http-mon-secret/http-mon-op",
         {"pattern": "^never$", "definition": {"max-length": 1}, "apply-to": "queues"})
    http("PUT", "/api/policies/%2F/http-mon-open",
         {"pattern": "^never$", "definition": {"max-length": 1}, "apply-to": "queues"})
    http("PUT", "/api/users/http-mon-m", {"password": "pw", "tags": "monitoring"})
    http("PUT", "/api/users/http-mon-u", {"password": "pw", "tags": "management"})
    for user in ("http-mon-m", "http-mon-u"):
        http("PUT", "/api/permissions/%2F/" + user, {"configure": ".*", "write": ".*", "read": ".*"})
    for user in ("http-mon-m", "http-mon-u", "guest"):
        auth = (user, "pw") if user != "guest" else ("guest", "guest")
        view = {}
        for path in ("/api/policies", "/api/operator-policies"):
            status, listed = get_json(path, auth=auth)
            view[path] = [status, sorted([p["vhost"], p["name"]] for p in listed
                                         if p["name"].startswith("http-mon"))
                          if status == 200 else listed]
        for path in ("/api/policies/http-mon-secret", "/api/operator-policies/http-mon-secret",
                     "/api/policies/%2F"):
            status, listed = get_json(path, auth=auth)
            view[path] = [status, sorted(p["name"] for p in listed) if status == 200 else None]
        status, overview = get_json("/api/overview", auth=auth)
        view["overview_keys"] = sorted(overview) if status == 200 else status
        view["object_totals_keys"] = sorted(overview.get("object_totals", {})) if status == 200 else None
        seen[user] = view
    for user in ("http-mon-m", "http-mon-u"):
        http("DELETE", "/api/users/" + user)
    http("DELETE", "/api/policies/%2F/http-mon-open")
    http("DELETE", "/api/vhosts/http-mon-secret")
    return seen


@scenario
def http_certificate_expiration(url):
    """The TLS listener's certificates (3 days, the conformance CA's) against windows on
    both sides of their expiry, and windows neither broker can read."""
    seen = {}
    for window in ("1/days", "1/weeks", "2/MONTHS", "soon/days", "3/fortnights"):
        status, _, text = http("GET", "/api/health/checks/certificate-expiration/" + window)
        body = json.loads(text) if text else None
        if status == 503:
            body = {"status": body["status"], "reason": body["reason"],
                    "expired": sorted([l["protocol"], len(l["certfile_expires_on"]),
                                       len(l["cacertfile_expires_on"])] for l in body["expired"])}
        seen[window] = [status, body]
    return seen


@scenario
def http_lookaround_patterns(url):
    """Permission and policy patterns with lookahead, as operators write them to cover all
    names but some (PCRE in RabbitMQ)."""
    seen = {}
    http("PUT", "/api/users/http-look", {"password": "pw", "tags": ""})
    seen["grant"] = http("PUT", "/api/permissions/%2F/http-look",
                         {"configure": "^(?!http-secret-).*", "write": ".*", "read": ".*"})[0]
    conn = pika.BlockingConnection(pika.URLParameters(url.replace("guest:guest", "http-look:pw")))
    ch = conn.channel()
    ch.queue_declare("http-open-q")
    seen["allowed"] = "declared"
    try:
        ch.queue_declare("http-secret-q")
        seen["refused"] = "declared"
    except pika.exceptions.ChannelClosedByBroker as e:
        seen["refused"] = [e.reply_code, e.reply_text]
    conn.close()
    seen["policy"] = http("PUT", "/api/policies/%2F/http-look-pol",
                          {"pattern": "^(?!http-skip-)http-", "apply-to": "queues", "definition": {"max-length": 1}})[0]
    for q in ("http-open-q", "http-skip-q"):
        http("PUT", "/api/queues/%2F/" + q, {})
    for _ in range(50):
        got = {q: get_json("/api/queues/%2F/" + q)[1].get("policy") for q in ("http-open-q", "http-skip-q")}
        if got["http-open-q"]:
            break
        time.sleep(0.1)
    seen["applied"] = got
    http("DELETE", "/api/policies/%2F/http-look-pol")
    for q in ("http-open-q", "http-skip-q"):
        http("DELETE", "/api/queues/%2F/" + q)
    http("DELETE", "/api/users/http-look")
    return seen


@scenario
def http_cluster_identity(url):
    """The cluster's permanent id: the global parameter `internal_cluster_id` in RabbitMQ's
    shape, the label Prometheus puts on `rabbitmq_identity_info`, unchanged by a new cluster
    name; and who may read the global parameters."""
    seen = {}
    status, params = get_json("/api/global-parameters")
    seen["list"] = [status, sorted(p["name"] for p in params)]
    status, one = get_json("/api/global-parameters/internal_cluster_id")
    cluster_id = one["value"]
    seen["id"] = [status, sorted(one), bool(re.fullmatch(r"rabbitmq-cluster-id-[A-Za-z0-9_-]{22}", cluster_id))]
    seen["missing"] = http("GET", "/api/global-parameters/http-nothing")[::2]
    http("PUT", "/api/users/http-mon", {"password": "pw", "tags": "monitoring"})
    seen["monitor"] = http("GET", "/api/global-parameters", auth=("http-mon", "pw"))[0]
    http("DELETE", "/api/users/http-mon")
    label = r'rabbitmq_cluster_permanent_id="([^"]*)"'
    seen["prometheus"] = re.search(label, scrape("/metrics")).group(1) == cluster_id
    original = get_json("/api/cluster-name")[1]["name"]
    http("PUT", "/api/cluster-name", {"name": "http-renamed"})
    seen["renamed"] = re.search(label, scrape("/metrics")).group(1) == cluster_id
    exported = get_json("/api/definitions")[1]["global_parameters"]
    seen["exported"] = sorted((p["name"], p["value"] == cluster_id) for p in exported)
    http("PUT", "/api/cluster-name", {"name": original})
    return seen


if __name__ == "__main__":
    run()
