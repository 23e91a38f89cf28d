#!/usr/bin/env python3
"""Conformance scenario with Celery (kombu over py-amqp): a real worker runs tasks with
retries and returns results through the broker. Same CLI as the other clients."""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


def celery_tasks(url):
    queue = "celery-%s" % uuid.uuid4().hex[:8]
    env = dict(os.environ, LEPUS_CONF_URL=url, LEPUS_CONF_QUEUE=queue, PYTHONPATH=HERE)
    os.environ.update(LEPUS_CONF_URL=url, LEPUS_CONF_QUEUE=queue)
    sys.path.insert(0, HERE)
    import tasks  # noqa: E402  (needs the environment above)

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo", "--concurrency=1",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-Q", queue, "-n", "%s@localhost" % queue],
        cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        observed = {}
        observed["add"] = tasks.add.delay(2, 3).get(timeout=30)
        observed["retried"] = tasks.flaky.delay(2).get(timeout=30)
        group = [tasks.add.delay(i, i) for i in range(5)]
        observed["many"] = [r.get(timeout=30) for r in group]
        failed = tasks.boom.delay()
        try:
            failed.get(timeout=30)
            raise AssertionError("a failing task succeeded")
        except ValueError as e:
            observed["failure"] = [type(e).__name__, str(e)]
        assert observed["add"] == 5, observed
        assert observed["retried"] == "succeeded after 2 retries", observed
        assert observed["many"] == [0, 2, 4, 6, 8], observed
        return observed
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
        if worker.returncode not in (0, -15, None):
            sys.stderr.write(out[-3000:])
        try:
            tasks.app.connection_for_write().default_channel.queue_delete(queue)
        except Exception:
            pass


SCENARIOS = {"celery_tasks": celery_tasks}


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
