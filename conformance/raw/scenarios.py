#!/usr/bin/env python3
"""Protocol-level scenarios over a raw socket: the malformed and out-of-order input that no
client library produces, but that a broker must answer exactly as RabbitMQ does. Same CLI as
the other clients: --url URL --list | --run NAME; the last line printed is the observation.
"""

import argparse
import json
import socket
import struct
import sys
import urllib.parse

FRAME_END = b"\xce"


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def table(entries):
    """A field table of (name, bool) or (name, str) entries."""
    out = b""
    for k, v in entries:
        if isinstance(v, bool):
            out += shortstr(k) + b"t" + bytes([1 if v else 0])
        elif isinstance(v, dict):
            out += shortstr(k) + b"F" + table(list(v.items()))
        else:
            out += shortstr(k) + b"S" + longstr(v.encode())
    return longstr(out)


def method(channel, class_id, method_id, args=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


class Raw:
    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 5672), timeout=10)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def recv_frame(self):
        """The next frame as (type, channel, payload), or None once the socket closes."""
        while True:
            if len(self.buf) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buf[:7])
                if len(self.buf) >= size + 8:
                    payload = self.buf[7:7 + size]
                    self.buf = self.buf[size + 8:]
                    return kind, channel, payload
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk

    def recv_method(self):
        while True:
            f = self.recv_frame()
            if f is None:
                return None
            kind, channel, payload = f
            if kind == 1:
                class_id, method_id = struct.unpack(">HH", payload[:4])
                return channel, class_id, method_id, payload[4:]

    def closed_silently(self):
        """True when the broker closes the socket without sending another frame."""
        return self.recv_frame() is None

    def handshake(self, client_properties=b"\x00\x00\x00\x00", channel_max=0):
        self.send(b"AMQP\x00\x00\x09\x01")
        self.recv_method()  # start
        self.send(method(0, 10, 11, client_properties + shortstr("PLAIN") + longstr(b"\0guest\0guest")
                         + shortstr("en_US")))
        _, _, _, tune = self.recv_method()
        offered_channel_max, frame_max, heartbeat = struct.unpack(">HIH", tune[:8])
        self.send(method(0, 10, 31, struct.pack(">HIH", channel_max or offered_channel_max, frame_max, 0)))
        self.send(method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        self.recv_method()  # open-ok

    def open_channel(self, channel=1):
        self.send(method(channel, 20, 10, shortstr("")))
        self.recv_method()

    def close_frame(self):
        """Reads until Connection.Close or Channel.Close; returns [code, text, class, method]."""
        while True:
            m = self.recv_method()
            if m is None:
                return None
            channel, class_id, method_id, args = m
            if (class_id, method_id) in ((10, 50), (20, 40)):
                code = struct.unpack(">H", args[:2])[0]
                n = args[2]
                text = args[3:3 + n].decode("utf-8", "replace")
                cls, mth = struct.unpack(">HH", args[3 + n:7 + n])
                return [code, text, cls, mth]


SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def opened(url):
    r = Raw(url)
    r.handshake()
    r.open_channel(1)
    return r


PUBLISH = method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("q") + b"\x00")


def header(class_id=60, body_size=0, weight=0):
    return frame(2, 1, struct.pack(">HHQ", class_id, weight, body_size) + b"\x00\x00")


@scenario
def wrong_protocol_header(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x00")
    got = b""
    while True:
        try:
            chunk = r.sock.recv(64)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        got += chunk
    assert got == b"AMQP\x00\x00\x09\x01", got
    return {"answer": list(got)}


@scenario
def frame_too_large(url):
    r = opened(url)
    r.send(struct.pack(">BHI", 3, 1, 0xFFFFFFFF))
    return {"close": r.close_frame()}


@scenario
def bad_frame_end(url):
    r = opened(url)
    r.send(struct.pack(">BHI", 1, 1, 11) + bytes([0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0]) + b"\x00")
    return {"close": r.close_frame()}


@scenario
def unknown_frame_type(url):
    r = opened(url)
    r.send(frame(9, 1, b"abc"))
    return {"close": r.close_frame()}


@scenario
def content_on_channel_zero(url):
    r = opened(url)
    r.send(frame(3, 0, b"hello"))
    return {"close": r.close_frame()}


@scenario
def heartbeat_on_a_channel(url):
    r = opened(url)
    r.send(frame(8, 1, b""))
    return {"close": r.close_frame()}


@scenario
def header_without_publish(url):
    r = opened(url)
    r.send(header())
    return {"close": r.close_frame()}


@scenario
def method_instead_of_header(url):
    r = opened(url)
    r.send(PUBLISH + PUBLISH)
    return {"close": r.close_frame()}


@scenario
def header_of_another_class(url):
    r = opened(url)
    r.send(PUBLISH + header(class_id=50))
    return {"close": r.close_frame()}


@scenario
def method_instead_of_body(url):
    r = opened(url)
    r.send(PUBLISH + header(body_size=10) + frame(3, 1, b"12345") + PUBLISH)
    return {"close": r.close_frame()}


@scenario
def channel_not_open(url):
    r = Raw(url)
    r.handshake()
    r.send(method(5, 60, 10, struct.pack(">IHB", 0, 1, 0)))
    return {"close": r.close_frame()}


@scenario
def content_on_unopened_channel(url):
    r = Raw(url)
    r.handshake()
    r.send(frame(2, 5, struct.pack(">HHQ", 60, 0, 0) + b"\x00\x00"))
    return {"close": r.close_frame()}


@scenario
def truncated_method_instead_of_header(url):
    r = opened(url)
    r.send(PUBLISH + frame(1, 1, bytes([0, 60, 0, 40, 0, 0])))
    return {"close": r.close_frame()}


@scenario
def prefetch_size_instead_of_header(url):
    r = opened(url)
    r.send(PUBLISH + method(1, 60, 10, struct.pack(">IHB", 10, 0, 0)))
    return {"close": r.close_frame()}


@scenario
def close_ok_instead_of_header(url):
    r = opened(url)
    r.send(PUBLISH + method(1, 20, 41))
    return {"close": r.close_frame()}


@scenario
def second_channel_open(url):
    r = opened(url)
    r.send(method(1, 20, 10, shortstr("")))
    return {"close": r.close_frame()}


@scenario
def channel_max_reached(url):
    r = Raw(url)
    r.handshake(channel_max=2)
    r.open_channel(65535)
    r.open_channel(7)
    r.send(method(3, 20, 10, shortstr("")))
    return {"close": r.close_frame()}


@scenario
def truncated_arguments(url):
    r = opened(url)
    r.send(frame(1, 1, bytes([0, 50, 0, 10, 0, 0])))
    return {"close": r.close_frame()}


@scenario
def non_utf8_queue_name(url):
    """Both brokers check short strings in method fields for UTF-8 (a connection error)."""
    r = opened(url)
    r.send(method(1, 50, 10, b"\x00\x00" + shortstr(b"q\xff") + b"\x00" + b"\x00\x00\x00\x00"))
    return {"close": r.close_frame()}


@scenario
def non_utf8_exchange_in_publish(url):
    """...but not a publish's exchange or routing key: the name is unknown, and shown."""
    r = opened(url)
    r.send(method(1, 60, 40, b"\x00\x00" + shortstr(b"e\xff") + shortstr(b"k\xfe") + b"\x00") + header())
    return {"close": r.close_frame()}


@scenario
def immediate_publish(url):
    r = opened(url)
    r.send(method(1, 60, 40, b"\x00\x00" + shortstr("") + shortstr("q") + b"\x02") + header())
    return {"close": r.close_frame()}


@scenario
def prefetch_size(url):
    r = opened(url)
    r.send(method(1, 60, 10, struct.pack(">IHB", 10, 0, 0)))
    return {"close": r.close_frame()}


@scenario
def unknown_vhost(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    r.send(method(0, 10, 11, b"\x00\x00\x00\x00" + shortstr("PLAIN") + longstr(b"\0guest\0guest") + shortstr("en_US")))
    r.recv_method()
    r.send(method(0, 10, 31, struct.pack(">HIH", 2047, 131072, 0)))
    r.send(method(0, 10, 40, shortstr("no-such-vhost") + shortstr("") + b"\x00"))
    return {"close": r.close_frame()}


@scenario
def refused_login(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    caps = table([("capabilities", {"authentication_failure_close": True})])
    r.send(method(0, 10, 11, caps + shortstr("PLAIN") + longstr(b"\0guest\0wrong") + shortstr("en_US")))
    return {"close": r.close_frame()}


@scenario
def refused_login_without_capability(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    r.send(method(0, 10, 11, b"\x00\x00\x00\x00" + shortstr("PLAIN") + longstr(b"\0guest\0wrong") + shortstr("en_US")))
    return {"closed_without_a_frame": r.closed_silently()}


@scenario
def tune_ok_above_offer(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x01")
    r.recv_method()
    r.send(method(0, 10, 11, b"\x00\x00\x00\x00" + shortstr("PLAIN") + longstr(b"\0guest\0guest") + shortstr("en_US")))
    r.recv_method()
    r.send(method(0, 10, 31, struct.pack(">HIH", 2047, 131073, 0)))
    return {"closed_without_a_frame": r.closed_silently()}


@scenario
def unknown_method(url):
    r = opened(url)
    r.send(frame(1, 1, bytes([0, 60, 0, 99])))
    return {"close": r.close_frame()}


@scenario
def malformed_argument_table(url):
    r = opened(url)
    args = b"\x00\x00" + shortstr("q") + b"\x00" + longstr(shortstr("k") + b"Z")
    r.send(frame(1, 1, bytes([0, 50, 0, 10]) + args))
    return {"close": r.close_frame()}


@scenario
def server_properties(url):
    r = Raw(url)
    r.send(b"AMQP\x00\x00\x09\x01")
    _, _, _, args = r.recv_method()
    major, minor = args[0], args[1]
    # Walk the server-properties table just enough to list its keys and capabilities.
    size = struct.unpack(">I", args[2:6])[0]
    body = args[6:6 + size]
    keys, caps, i = [], [], 0
    while i < len(body):
        n = body[i]
        key = body[i + 1:i + 1 + n].decode()
        i += 1 + n
        kind = chr(body[i])
        i += 1
        if kind == "S":
            ln = struct.unpack(">I", body[i:i + 4])[0]
            i += 4 + ln
        elif kind == "F":
            ln = struct.unpack(">I", body[i:i + 4])[0]
            sub = body[i + 4:i + 4 + ln]
            j = 0
            while j < len(sub):
                m = sub[j]
                caps.append(sub[j + 1:j + 1 + m].decode())
                j += 1 + m + 2
            i += 4 + ln
        keys.append(key)
    rest = args[6 + size:]
    mechanisms = rest[4:4 + struct.unpack(">I", rest[:4])[0]].decode()
    return {"version": [major, minor], "keys": sorted(keys), "capabilities": sorted(caps),
            "mechanisms": mechanisms}


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
