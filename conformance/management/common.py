"""What the management scenarios share: where the broker's management API and Prometheus
endpoint are (CONFORMANCE_MGMT, set by conformance/run), a plain HTTP client for what the
tools under test do not cover, and the scenario registry and command line every client of
the conformance suite has (--list, --run NAME; the last line printed is the observation)."""

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def endpoints():
    """(management port, prometheus port)."""
    mgmt = json.loads(os.environ["CONFORMANCE_MGMT"])
    return mgmt["port"], mgmt["prometheus_port"]


def base_url():
    return "http://127.0.0.1:%d" % endpoints()[0]


def http(method, path, body=None, auth=("guest", "guest"), headers=None, port=None):
    """(status, headers, body text) of one request."""
    port = port or endpoints()[0]
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    if auth:
        token = base64.b64encode(("%s:%s" % auth).encode()).decode()
        req.add_header("Authorization", "Basic " + token)
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        resp = urllib.request.urlopen(req, data, timeout=30)
        return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def get_json(path, **kw):
    status, _, body = http("GET", path, **kw)
    return status, (json.loads(body) if body else None)


def quote(s):
    return urllib.parse.quote(s, safe="")


def pick(obj, keys):
    """The deterministic fields of an object (names, flags, counts, arguments)."""
    return {k: obj.get(k) for k in keys}


def shape(v):
    """The type of every field, recursively: compared where the values are not
    deterministic (rates, timestamps, memory)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items())}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--run")
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    # A `restart_` scenario runs as NAME:before and NAME:after, with a restart between.
    name, _, phase = args.run.partition(":")
    observed = SCENARIOS[name](args.url, phase) if phase else SCENARIOS[name](args.url)
    print(json.dumps(observed, sort_keys=True))
    return 0


def run():
    sys.exit(main())
