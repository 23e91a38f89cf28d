#!/usr/bin/env python3
"""Conformance scenarios written with pika, the way Python applications use RabbitMQ.

Usage: scenarios.py --url amqp://guest:guest@127.0.0.1:5672/%2F --list
       scenarios.py --url ... --run NAME

Each scenario asserts what a user would observe from RabbitMQ and prints a JSON object of its
observations (what was delivered, codes, texts) on the last line, so the runner can compare
brokers. Exit status 0 means the scenario passed.
"""

import argparse
import json
import sys
import threading
import time
import uuid

import pika

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def connect(url):
    params = pika.URLParameters(url)
    params.heartbeat = 0
    return pika.BlockingConnection(params)


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


@scenario
def work_queue(url):
    """Two competing consumers with prefetch 1 share a durable work queue; every task is
    processed exactly once and acknowledged."""
    queue = unique("tasks")
    producer = connect(url)
    pch = producer.channel()
    pch.queue_declare(queue, durable=True)
    n = 40
    done = {"a": [], "b": []}
    lock = threading.Lock()
    # Both workers subscribe before any task exists, so both get a share.
    subscribed = threading.Barrier(3)

    def worker(name):
        conn = connect(url)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)

        def on_message(c, method, props, body):
            time.sleep(0.002)
            with lock:
                done[name].append(body.decode())
                finished = len(done["a"]) + len(done["b"]) >= n
            c.basic_ack(method.delivery_tag)
            if finished:
                c.stop_consuming()

        ch.basic_consume(queue, on_message)
        subscribed.wait()
        deadline = time.time() + 20
        while time.time() < deadline:
            conn.process_data_events(time_limit=0.05)
            with lock:
                if len(done["a"]) + len(done["b"]) >= n:
                    break
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in ("a", "b")]
    for t in threads:
        t.start()
    subscribed.wait()
    for i in range(n):
        pch.basic_publish("", queue, b"task %d" % i, pika.BasicProperties(delivery_mode=2))
    for t in threads:
        t.join()
    processed = sorted(done["a"] + done["b"], key=lambda s: int(s.split()[1]))
    assert processed == ["task %d" % i for i in range(n)], processed
    assert done["a"] and done["b"], "both workers got work: %r" % done
    left = pch.queue_declare(queue, passive=True).method.message_count
    assert left == 0, left
    pch.queue_delete(queue)
    producer.close()
    return {"processed": len(processed), "both_workers_busy": True, "left": left}


@scenario
def topic_pubsub(url):
    """Subscribers bind exclusive server-named queues to a topic exchange with wildcards."""
    exchange = unique("logs")
    conn = connect(url)
    ch = conn.channel()
    ch.exchange_declare(exchange, "topic")
    patterns = {"all": "#", "kern": "kern.*", "critical": "*.critical"}
    queues = {}
    for name, pattern in patterns.items():
        q = ch.queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-"), q
        ch.queue_bind(q, exchange, pattern)
        queues[name] = q
    keys = ["kern.critical", "kern.info", "app.critical", "app.info.extra"]
    for k in keys:
        ch.basic_publish(exchange, k, k.encode())
    got = {}
    for name, q in queues.items():
        got[name] = []
        while True:
            method, props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            got[name].append(body.decode())
    assert got["all"] == keys, got
    assert got["kern"] == ["kern.critical", "kern.info"], got
    assert got["critical"] == ["kern.critical", "app.critical"], got
    ch.exchange_delete(exchange)
    conn.close()
    return got


@scenario
def rpc(url):
    """A client sends requests with reply_to and correlation_id; a server answers each."""
    queue = unique("rpc")
    server = connect(url)
    sch = server.channel()
    sch.queue_declare(queue)

    def on_request(c, method, props, body):
        n = int(body)
        c.basic_publish("", props.reply_to, str(n * n).encode(),
                        pika.BasicProperties(correlation_id=props.correlation_id))
        c.basic_ack(method.delivery_tag)

    sch.basic_consume(queue, on_request)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            server.process_data_events(time_limit=0.05)

    t = threading.Thread(target=serve)
    t.start()
    client = connect(url)
    cch = client.channel()
    callback_queue = cch.queue_declare("", exclusive=True).method.queue
    responses = {}

    def on_response(c, method, props, body):
        responses[props.correlation_id] = body.decode()

    cch.basic_consume(callback_queue, on_response, auto_ack=True)
    asked = {}
    for n in range(1, 6):
        corr = str(uuid.uuid4())
        asked[corr] = n
        cch.basic_publish("", queue, str(n).encode(),
                          pika.BasicProperties(reply_to=callback_queue, correlation_id=corr))
    deadline = time.time() + 10
    while len(responses) < len(asked) and time.time() < deadline:
        client.process_data_events(time_limit=0.05)
    stop.set()
    t.join()
    answers = sorted(int(responses[c]) for c in asked)
    assert answers == [1, 4, 9, 16, 25], responses
    for corr, n in asked.items():
        assert responses[corr] == str(n * n)
    client.close()
    sch.queue_delete(queue)
    server.close()
    return {"answers": answers}


@scenario
def errors(url):
    """Channel and connection errors carry RabbitMQ's codes and texts."""
    observed = {}
    conn = connect(url)
    ch = conn.channel()
    try:
        ch.queue_declare("does-not-exist-%s" % uuid.uuid4().hex[:6], passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        observed["passive_missing"] = [e.reply_code, e.reply_text.split("'")[0]]
        assert e.reply_code == 404 and e.reply_text.startswith("NOT_FOUND - no queue"), e
    ch = conn.channel()
    q = unique("ttl")
    ch.queue_declare(q, arguments={"x-message-ttl": 1000})
    try:
        ch.queue_declare(q, arguments={"x-message-ttl": 2000})
        raise AssertionError("inequivalent redeclare succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        expected = ("PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '%s' in "
                    "vhost '/': received '2000' but current is '1000'" % q)
        assert (e.reply_code, e.reply_text) == (406, expected), e
        observed["inequivalent"] = [e.reply_code, e.reply_text.replace(q, "Q")]
    ch = conn.channel()
    try:
        ch.exchange_declare("amq.mine", "direct")
        raise AssertionError("amq. exchange declared")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 403, e
        observed["reserved"] = [e.reply_code, e.reply_text]
    ch = conn.channel()
    ch.queue_delete(q)
    try:
        ch.basic_ack(delivery_tag=42)
        ch.queue_declare(q)
        raise AssertionError("unknown delivery tag accepted")
    except pika.exceptions.ChannelClosedByBroker as e:
        assert (e.reply_code, e.reply_text) == (406, "PRECONDITION_FAILED - unknown delivery tag 42"), e
        observed["unknown_tag"] = [e.reply_code, e.reply_text]
    conn.close()
    return observed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--run")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    observed = SCENARIOS[args.run](args.url)
    print(json.dumps(observed, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
