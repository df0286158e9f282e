"""Document processing with priorities: user uploads (HIGH) jump ahead of batch work (LOW).

Run it from a fresh clone:  python examples/batch_documents.py

A batch of 10 documents is queued at LOW priority and starts running on two worker
threads. Half a second later three users upload documents at HIGH priority. The uploads
start before every batch document still waiting; within one priority, jobs start in the
order they were enqueued (FIFO). Jobs already running when the uploads arrive are not
interrupted: each upload takes the next free worker. The script prints each start as it
happens, then the start order.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobcore import Job, JobManager, JobPriority  # noqa: E402

T0 = time.monotonic()
_print_lock = threading.Lock()   # guards started and stdout: two worker threads print
started: list[str] = []


def say(text: str) -> None:
    with _print_lock:
        print(f"  t={time.monotonic() - T0:5.2f}s  {text}", flush=True)


def process_document(filename: str, pages: int, progress_callback=None) -> dict:
    """Pretend to OCR and index a document, one page at a time."""
    with _print_lock:
        started.append(filename)
    say(f"start  {filename:<22} ({threading.current_thread().name})")
    for page in range(1, pages + 1):
        time.sleep(0.1)  # the real work would go here
        progress_callback(page / pages, f"page {page} of {pages}")
    return {"file": filename, "pages": pages}


def main() -> None:
    path = os.environ.get("JOBCORE_DB") or os.path.join(tempfile.mkdtemp(), "documents.db")
    print(f"database: {path}")
    with JobManager(path, max_workers=2) as manager:
        manager.register_function("documents.process", process_document)

        batch = [Job(function_name="documents.process", args=(f"archive-{n:02d}.pdf", 4),
                     name=f"batch archive-{n:02d}", priority=JobPriority.LOW, tags={"batch"})
                 for n in range(1, 11)]
        batch_ids = manager.enqueue_many(batch)   # one transaction for the whole batch
        say(f"queued {len(batch_ids)} batch documents at LOW priority")

        time.sleep(0.5)
        uploads = [("ann", "invoice-ann.pdf"), ("bob", "contract-bob.pdf"), ("cho", "scan-cho.pdf")]
        upload_ids = [manager.enqueue(Job(function_name="documents.process", args=(filename, 2),
                                          name=f"upload {filename}", priority=JobPriority.HIGH,
                                          owner=user, tags={"upload"}))
                      for user, filename in uploads]
        with _print_lock:
            arrived_after = len(started)
        say(f"{len(upload_ids)} users uploaded documents at HIGH priority")

        for job_id in batch_ids + upload_ids:
            result = manager.wait(job_id, timeout=30)
            assert result.succeeded, result.error

    upload_files = [filename for _, filename in uploads]
    first_upload = min(started.index(filename) for filename in upload_files)
    reserved = started[arrived_after:first_upload]
    print()
    print("start order:")
    for position, filename in enumerate(started, 1):
        kind = "HIGH  upload" if filename in upload_files else "LOW   batch "
        note = "  <- already claimed when the uploads arrived" if filename in reserved else ""
        print(f"  {position:2d}. {kind}  {filename}{note}")
    print()
    after_uploads = started[first_upload:]
    uploads_first = after_uploads[:len(upload_files)] == upload_files
    batch_in_order = [f for f in started if f not in upload_files] == sorted(
        f for f in started if f not in upload_files)
    print(f"{arrived_after} batch documents had started before the uploads arrived;"
          f" {len(reserved)} more started before the first upload (each upload waits only"
          " for a worker to finish what it is running).")
    print(f"uploads started before every batch document still waiting, in upload order: {uploads_first}")
    print(f"batch documents started in the order they were enqueued (FIFO): {batch_in_order}")

if __name__ == "__main__":
    main()
