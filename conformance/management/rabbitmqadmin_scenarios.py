#!/usr/bin/env python3
"""Management scenarios through rabbitmqadmin (v1, the script Debian's rabbitmq-server ships
under the management plugin's priv/www/cli/), run as operators run it. Each scenario prints
what the operator would see: the JSON rabbitmqadmin returns (-f raw_json), cut to the fields
whose values are deterministic, and its exit status and messages."""

import glob
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import endpoints, get_json, run, scenario  # noqa: E402


def admin_path():
    found = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/priv/www/cli/rabbitmqadmin")
    if not found:
        raise RuntimeError("rabbitmqadmin not found: apt-get install rabbitmq-server")
    return found[0]


def admin(*args, fmt="raw_json"):
    """(exit status, stdout) of one rabbitmqadmin command."""
    port, _ = endpoints()
    argv = [sys.executable, admin_path(), "-H", "127.0.0.1", "-P", str(port), "-u", "guest", "-p", "guest",
            "-f", fmt] + list(args)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return out.returncode, (out.stdout + out.stderr).strip()


def admin_json(*args):
    status, out = admin(*args)
    assert status == 0, out
    return json.loads(out) if out else None


def fields(items, keys, keep=lambda item: True):
    return [{k: item.get(k) for k in keys} for item in items if keep(item)]


@scenario
def mgmt_queues(url):
    seen = {}
    seen["declare"] = admin("declare", "queue", "name=adm-q", "durable=true",
                            'arguments={"x-max-length": 10}')
    seen["redeclare_inequivalent"] = admin("declare", "queue", "name=adm-q", "durable=false")
    seen["publish"] = admin("publish", "exchange=amq.default", "routing_key=adm-q", "payload=hello",
                            'properties={"delivery_mode": 2, "content_type": "text/plain", "headers": {"h": 1}}')
    seen["publish_unrouted"] = admin("publish", "exchange=amq.default", "routing_key=nowhere", "payload=x")
    seen["list"] = fields(admin_json("list", "queues"), ["name", "durable", "auto_delete", "exclusive", "arguments"],
                          lambda q: q["name"] == "adm-q")
    seen["get_requeue"] = admin_json("get", "queue=adm-q", "ackmode=ack_requeue_true", "count=5")
    seen["get"] = admin_json("get", "queue=adm-q", "ackmode=ack_requeue_false", "encoding=base64")
    seen["get_empty"] = admin_json("get", "queue=adm-q", "ackmode=ack_requeue_false")
    seen["purge"] = admin("purge", "queue", "name=adm-q")
    seen["delete"] = admin("delete", "queue", "name=adm-q")
    seen["delete_again"] = admin("delete", "queue", "name=adm-q")
    return seen


@scenario
def mgmt_bindings(url):
    seen = {}
    seen["exchange"] = admin("declare", "exchange", "name=adm-x", "type=topic", "durable=true")
    seen["bad_type"] = admin("declare", "exchange", "name=adm-bad", "type=nope")
    admin("declare", "queue", "name=adm-bq", "durable=true")
    seen["bind"] = admin("declare", "binding", "source=adm-x", "destination=adm-bq", "routing_key=a b/#")
    seen["bind_args"] = admin("declare", "binding", "source=adm-x", "destination=adm-bq", "routing_key=k",
                              'arguments={"x": 1}')
    keys = ["source", "destination", "destination_type", "routing_key", "arguments"]
    bindings = admin_json("list", "bindings")
    seen["list"] = fields(bindings, keys + ["properties_key"], lambda b: b["source"] == "adm-x" and not b["arguments"])
    seen["list_args"] = fields(bindings, keys, lambda b: b["source"] == "adm-x" and b["arguments"])
    seen["routed"] = admin("publish", "exchange=adm-x", "routing_key=a b/c", "payload=p")
    seen["unbind"] = admin("delete", "binding", "source=adm-x", "destination_type=queue", "destination=adm-bq",
                           "properties_key=a+b%2F%23")
    seen["after"] = fields(admin_json("list", "bindings"), keys, lambda b: b["source"] == "adm-x")
    seen["delete_exchange"] = admin("delete", "exchange", "name=adm-x")
    admin("delete", "queue", "name=adm-bq")
    return seen


@scenario
def mgmt_users(url):
    seen = {}
    seen["user"] = admin("declare", "user", "name=adm-user", "password=pw", "tags=monitoring,policymaker")
    seen["users"] = fields(admin_json("list", "users"), ["name", "tags", "hashing_algorithm"],
                           lambda u: u["name"] in ("guest", "adm-user"))
    seen["permission"] = admin("declare", "permission", "vhost=/", "user=adm-user", "configure=^adm",
                               "write=.*", "read=.*")
    seen["permissions"] = fields(admin_json("list", "permissions"), ["user", "vhost", "configure", "write", "read"],
                                 lambda p: p["user"] == "adm-user")
    # rabbitmqadmin v1 sets topic permissions but cannot list them: read them over HTTP.
    seen["topic"] = admin("declare", "topic_permission", "vhost=/", "user=adm-user", "exchange=amq.topic",
                          "write=^w", "read=^r")
    seen["topics"] = get_json("/api/topic-permissions/%2F/adm-user")
    seen["delete_permission"] = admin("delete", "permission", "vhost=/", "user=adm-user")
    seen["delete_user"] = admin("delete", "user", "name=adm-user")
    seen["delete_user_again"] = admin("delete", "user", "name=adm-user")
    return seen


@scenario
def mgmt_policies(url):
    seen = {}
    admin("declare", "queue", "name=adm-pq")
    for i in range(3):
        admin("publish", "exchange=amq.default", "routing_key=adm-pq", "payload=%d" % i)
    seen["bad"] = admin("declare", "policy", "name=adm-bad", "pattern=^adm-pq$", 'definition={"max-lengthx": 1}')
    seen["policy"] = admin("declare", "policy", "name=adm-cap", "pattern=^adm-pq$", 'definition={"max-length": 1}',
                           "apply-to=queues", "priority=3")
    seen["policies"] = fields(admin_json("list", "policies"), ["vhost", "name", "pattern", "apply-to", "definition",
                                                               "priority"], lambda p: p["name"] == "adm-cap")
    # RabbitMQ applies a policy to its queues in the background: wait for it.
    deadline = time.time() + 15
    while True:
        got = admin_json("get", "queue=adm-pq", "ackmode=ack_requeue_true", "count=10")
        if len(got) == 1 or time.time() > deadline:
            break
        time.sleep(0.2)
    seen["left"] = [m["payload"] for m in got]
    seen["delete_policy"] = admin("delete", "policy", "name=adm-cap")
    seen["delete_missing_policy"] = admin("delete", "policy", "name=adm-cap")
    admin("delete", "queue", "name=adm-pq")
    return seen


@scenario
def mgmt_vhosts(url):
    seen = {}
    seen["declare"] = admin("declare", "vhost", "name=adm-vhost")
    seen["vhosts"] = [v["name"] for v in admin_json("list", "vhosts") if v["name"] in ("/", "adm-vhost")]
    seen["permissions"] = fields(admin_json("list", "permissions"), ["user", "vhost", "configure"],
                                 lambda p: p["vhost"] == "adm-vhost")
    seen["queue"] = admin("--vhost=adm-vhost", "declare", "queue", "name=inside")
    seen["queues"] = [q["name"] for q in admin_json("--vhost=adm-vhost", "list", "queues")]
    seen["delete"] = admin("delete", "vhost", "name=adm-vhost")
    seen["after"] = [v["name"] for v in admin_json("list", "vhosts") if v["name"] == "adm-vhost"]
    return seen


@scenario
def mgmt_definitions(url):
    seen = {}
    admin("declare", "exchange", "name=adm-dx", "type=direct", "durable=true")
    admin("declare", "queue", "name=adm-dq", "durable=true", 'arguments={"x-message-ttl": 5000}')
    admin("declare", "binding", "source=adm-dx", "destination=adm-dq", "routing_key=r")
    path = "/tmp/conformance-definitions-%d.json" % os.getpid()
    seen["export"] = admin("export", path)[0]
    exported = json.load(open(path))
    seen["queues"] = [q for q in exported["queues"] if q["name"] == "adm-dq"]
    seen["exchanges"] = [x for x in exported["exchanges"] if x["name"] == "adm-dx"]
    seen["bindings"] = [b for b in exported["bindings"] if b["source"] == "adm-dx"]
    seen["keys"] = sorted(k for k in exported if k not in ("rabbitmq_version", "rabbit_version", "product_version",
                                                            "product_name"))
    admin("delete", "exchange", "name=adm-dx")
    admin("delete", "queue", "name=adm-dq")
    only_mine = dict(exported, queues=seen["queues"], exchanges=seen["exchanges"], bindings=seen["bindings"],
                     users=[], permissions=[], topic_permissions=[], policies=[], vhosts=[])
    json.dump(only_mine, open(path, "w"))
    status, message = admin("import", path)
    seen["import"] = [status, message.replace(path, "FILE")]
    seen["restored"] = fields(admin_json("list", "bindings"), ["source", "destination", "routing_key"],
                              lambda b: b["source"] == "adm-dx")
    admin("delete", "exchange", "name=adm-dx")
    admin("delete", "queue", "name=adm-dq")
    os.unlink(path)
    return seen


if __name__ == "__main__":
    run()
