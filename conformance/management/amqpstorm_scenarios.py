#!/usr/bin/env python3
"""Management scenarios through amqpstorm's management client (PyPI), as applications and
monitoring scripts use it: its list calls always page, its errors carry the API's status
and reason. Each scenario prints the deterministic fields of what the client returned."""

import os
import sys
import time

import pika
from amqpstorm.management import ApiError, ManagementApi
from amqpstorm.management.exception import ApiConnectionError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import base_url, pick, run, scenario  # noqa: E402


def api(user="guest", password="guest"):
    return ManagementApi(base_url(), user, password, timeout=30)


def error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return None
    except ApiError as e:
        # Messages name the URL, with the broker's port.
        return {"code": e.error_code, "message": str(e).replace(base_url(), "BASE")}


def polled(fn, *args, **kwargs):
    """A read asked in a loop, asked again when the web server had closed the kept-alive
    connection it went out on: RabbitMQ's closes one after a number of requests, and a
    request sent as it closes gets no response (seen once in CI, on RabbitMQ's side)."""
    for attempt in range(3):
        try:
            return fn(*args, **kwargs)
        except ApiConnectionError:
            if attempt == 2:
                raise
            time.sleep(0.2)


QUEUE_KEYS = ["name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "type", "policy"]


@scenario
def storm_queues(url):
    m = api()
    seen = {}
    m.queue.declare("storm-q", durable=True, arguments={"x-max-priority": 5})
    seen["get"] = pick(m.queue.get("storm-q"), QUEUE_KEYS)
    seen["listed"] = [q["name"] for q in m.queue.list(virtual_host="/") if q["name"].startswith("storm-")]
    seen["listed_all"] = [q["name"] for q in m.queue.list(show_all=True) if q["name"].startswith("storm-")]
    m.basic.publish("hi there", "storm-q", properties={"priority": 3, "message_id": "m-1"})
    got = m.basic.get("storm-q", requeue=False, to_dict=True)
    seen["message"] = [pick(g, ["payload", "payload_bytes", "payload_encoding", "routing_key", "exchange",
                                "redelivered", "message_count", "properties"]) for g in got]
    seen["missing"] = error(m.queue.get, "storm-nope")
    seen["redeclare"] = error(m.queue.declare, "storm-q", durable=False)
    m.queue.purge("storm-q")
    m.queue.delete("storm-q")
    seen["gone"] = error(m.queue.get, "storm-q")
    return seen


@scenario
def storm_exchanges(url):
    m = api()
    seen = {}
    m.exchange.declare("storm-x", exchange_type="fanout", durable=True)
    m.queue.declare("storm-xq")
    m.queue.bind("storm-xq", "storm-x", routing_key="any")
    seen["exchange"] = pick(m.exchange.get("storm-x"), ["name", "vhost", "type", "durable", "auto_delete",
                                                        "internal", "arguments", "user_who_performed_action"])
    seen["bindings"] = [pick(b, ["source", "destination", "destination_type", "routing_key", "properties_key"])
                        for b in m.queue.bindings("storm-xq")]
    seen["exchange_bindings"] = [pick(b, ["source", "destination", "routing_key"]) for b in m.exchange.bindings("storm-x")]
    seen["default"] = pick(m.exchange.get("amq.default"), ["name", "type", "durable"])
    m.queue.unbind("storm-xq", "storm-x", routing_key="any")
    seen["after_unbind"] = [b["source"] for b in m.queue.bindings("storm-xq")]
    seen["bad_type"] = error(m.exchange.declare, "storm-bad", exchange_type="nope")
    m.exchange.delete("storm-x")
    m.queue.delete("storm-xq")
    return seen


@scenario
def storm_connections(url):
    m = api()
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": "storm-conn"}
    conn = pika.BlockingConnection(params)
    conn.channel()
    seen = {}
    # A loaded CI machine has seen RabbitMQ take longer than 15 s: wait up to 40 s.
    deadline = time.time() + 40
    while True:
        mine = [c for c in polled(m.connection.list)
                if c.get("client_properties", {}).get("connection_name") == "storm-conn"]
        # RabbitMQ counts a connection's channels in its statistics, every few seconds.
        if mine and mine[0].get("channels") == 1 or time.time() > deadline:
            break
        time.sleep(0.2)
    seen["connection"] = pick(mine[0], ["user", "vhost", "protocol", "auth_mechanism", "type", "ssl", "channels",
                                        "frame_max", "channel_max"])
    seen["client_product"] = mine[0]["client_properties"].get("product")
    m.connection.close(mine[0]["name"], reason="storm says bye")
    try:
        conn.process_data_events(time_limit=10)
        seen["closed"] = None
    except pika.exceptions.ConnectionClosedByBroker as e:
        seen["closed"] = [e.reply_code, e.reply_text]
    # RabbitMQ drops a closed connection from its statistics a moment after it closed:
    # ask until it is gone (or 40 s have passed; the scenario's limit is 120 s).
    deadline = time.time() + 40
    seen["gone"] = error(polled, m.connection.get, mine[0]["name"])
    while seen["gone"] is None and time.time() < deadline:
        time.sleep(0.2)
        seen["gone"] = error(polled, m.connection.get, mine[0]["name"])
    return seen


@scenario
def storm_users(url):
    m = api()
    seen = {}
    m.user.create("storm-user", "pw", tags="management")
    seen["user"] = pick(m.user.get("storm-user"), ["name", "tags", "hashing_algorithm"])
    m.user.set_permission("storm-user", "/", configure_regex="^storm", write_regex=".*", read_regex=".*")
    seen["permission"] = m.user.get_permission("storm-user", "/")
    seen["as_user"] = [q["name"] for q in api("storm-user", "pw").queue.list(virtual_host="/") if q["name"] == "none"]
    seen["not_admin"] = error(api("storm-user", "pw").user.list)
    seen["bad_password"] = error(api("storm-user", "nope").overview)
    m.user.delete_permission("storm-user", "/")
    m.user.delete("storm-user")
    seen["gone"] = error(m.user.get, "storm-user")
    return seen


@scenario
def storm_health(url):
    m = api()
    return {
        "aliveness": m.aliveness_test("/"),
        "healthchecks": m.healthchecks.get(),
        "whoami": m.whoami(),
        "overview_keys": sorted(m.overview()),
        "node_keys": sorted(m.nodes()[0]),
        "vhosts": [v["name"] for v in m.virtual_host.list()],
    }


if __name__ == "__main__":
    run()
