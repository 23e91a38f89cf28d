"""A Celery application as users write them: a broker URL, the rpc:// result backend, and
tasks with automatic retries. The conformance scenario starts a worker on this module."""

import os

from celery import Celery

app = Celery("lepusconf", broker=os.environ["LEPUS_CONF_URL"], backend="rpc://")
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("LEPUS_CONF_QUEUE", "celery"),
)


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=5, default_retry_delay=0.05)
def flaky(self, fail_times):
    """Fails `fail_times` times, then succeeds: exercises retry (republish with countdown)."""
    if self.request.retries < fail_times:
        raise self.retry(exc=RuntimeError("not yet"))
    return "succeeded after %d retries" % self.request.retries


@app.task
def boom():
    raise ValueError("this task always fails")
