"""An unreliable partner API: retries with back-off, the dead-letter queue, and retry().

Run it from a fresh clone:  python examples/flaky_api.py

Four jobs call a fake partner API:

1. `sync-orders`: the connection drops twice (ConnectionError), then the call works. It
   is retried after retry_delay * retry_backoff ** (n - 1) seconds, jittered.
2. `sync-prices`: the API answers "429 Too Many Requests, retry after 0.5 s"; the job
   raises RetryableError(delay=0.5) to wait exactly that long.
3. `sync-invoices`: the API stays down; after max_retries the job ends FAILED, which is
   the dead-letter queue, and a notification channel hears of it. Once the API is back,
   `manager.retry(job_id)` runs it again from the start.
4. `sync-customers`: a bad request (ValueError) is a permanent error: no retry.

Each job's attempt history comes from `manager.get_logs(job_id)`.
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import (CallbackNotificationChannel, Job, JobManager, JobStatus,  # noqa: E402
                     RetryableError, current_job)


class PartnerAPI:
    """A stand-in for a remote service whose behaviour the script controls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()   # guards calls and invoices_up: jobs run on two threads
        self.calls: dict[str, int] = {}
        self.invoices_up = False

    def call(self, endpoint: str) -> int:
        with self._lock:
            self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
            return self.calls[endpoint]


api = PartnerAPI()
_print_lock = threading.Lock()   # jobs run on two threads, and both print


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def sync(endpoint: str) -> dict:
    """Fetch one endpoint of the partner API; how it fails depends on the endpoint."""
    call = api.call(endpoint)
    attempt = current_job().attempt
    say(f"    {endpoint}: attempt {attempt} calls the API (call #{call})")
    if endpoint == "orders" and call <= 2:
        raise ConnectionError("connection reset by peer")            # transient: retried
    if endpoint == "prices" and call == 1:
        raise RetryableError("429 Too Many Requests", delay=0.5)     # retried after 0.5 s
    if endpoint == "invoices" and not api.invoices_up:
        raise ConnectionError("partner API unavailable (503)")       # transient, until retries run out
    if endpoint == "customers":
        raise ValueError("customer id 'abc' is not a number")        # permanent: no retry
    records = 10 * call
    current_job().log(f"fetched {records} records from /{endpoint}")   # shows in get_logs
    return {"endpoint": endpoint, "records": records}


def show_history(manager: JobManager, job_id: str) -> None:
    result = manager.poll(job_id)
    print(f"  {result.name}: {result.status.value}, {result.attempts} attempt(s)"
          + (f", error {result.error_type}: {result.error}" if result.error_type else ""))
    for entry in manager.get_logs(job_id):
        print(f"    {entry.timestamp:%H:%M:%S.%f}"[:-3] + f"  {entry.level:<5}  {entry.message}")


def main() -> None:
    path = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "flaky.db")
    print(f"database: {path}")
    with JobManager(path, max_workers=2) as manager:
        manager.register_function("partner.sync", sync)
        # Channels are called on their own thread, shortly after the job settled; this
        # one hands the events to the main thread through a queue.
        dead_letters: queue.Queue = queue.Queue()
        manager.add_notification_channel(CallbackNotificationChannel(
            dead_letters.put, events=["job.dead_lettered"]))

        def job(endpoint: str, **options) -> Job:
            return Job(function_name="partner.sync", args=(endpoint,), name=f"sync-{endpoint}", **options)

        print("\n1-4. four jobs against a flaky API (retry_delay=0.2 s, retry_backoff=2):")
        ids = {
            "orders": manager.enqueue(job("orders", max_retries=4, retry_delay=0.2, retry_backoff=2.0)),
            "prices": manager.enqueue(job("prices", max_retries=2)),
            "invoices": manager.enqueue(job("invoices", max_retries=2, retry_delay=0.2)),
            "customers": manager.enqueue(job("customers", max_retries=3)),
        }
        for job_id in ids.values():
            manager.wait(job_id, timeout=30)

        print("\nnotifications received (CallbackNotificationChannel, event job.dead_lettered):")
        for _ in range(2):
            event = dead_letters.get(timeout=10)
            print(f"  {event['name']}: attempts={event['attempts']},"
                  f" {event['error_type']}: {event['error']}")

        print("\nattempt history (manager.get_logs):")
        for job_id in ids.values():
            show_history(manager, job_id)

        print("\ndead-letter queue (manager.get_dead_letter_queue):")
        for dead, result in manager.get_dead_letter_queue():
            print(f"  {result.name}: {result.error_type}: {result.error}"
                  f" (attempts {result.attempts}, max_retries {dead.max_retries})")

        print("\nthe invoices endpoint is back; re-queue that job from the dead-letter queue:")
        api.invoices_up = True
        requeued = manager.retry(ids["invoices"])
        say(f"  manager.retry(invoices job) -> {requeued}")
        result = manager.wait(ids["invoices"], timeout=30)
        assert result.status is JobStatus.COMPLETED
        show_history(manager, ids["invoices"])
        print(f"  result: {result.result}")
        print(f"\nstill in the dead-letter queue: {[r.name for _, r in manager.get_dead_letter_queue()]}")


if __name__ == "__main__":
    main()
