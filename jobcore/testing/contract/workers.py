"""Contract tests for the worker registry and `change_token`; the jobs workers hold are `running`'s."""

from __future__ import annotations

import threading

import pytest

from ...repository.base import JobRepository
from .support import LEASE, NOW, make_record


class _WorkersContract:
    """The worker registry and change detection."""

    def test_worker_registry_records_beats_reaps_and_forgets(self, repository: JobRepository) -> None:
        # given two registered workers
        repository.register_worker("w1", "host-a", 101, NOW)
        repository.register_worker("w2", "host-b", 202, NOW + 1)
        first, second = repository.list_workers()
        assert (first.worker_id, first.host, first.pid, first.started_at, first.heartbeat_at,
                tuple(first.running)) == ("w1", "host-a", 101, NOW, NOW, ())
        assert second.worker_id == "w2"
        # when w1 beats with its running jobs, and an unknown worker beats
        assert repository.beat_worker("w1", ["job-b", "job-a"], NOW + 5) is not False
        # (False: a worker whose entry is gone registers again; None: the backend cannot tell)
        assert repository.beat_worker("ghost", ["job-c"], NOW + 5) in (False, None)
        # then w1 is refreshed and the ghost is not registered
        beaten = repository.list_workers()[0]
        assert (beaten.heartbeat_at, sorted(beaten.running), beaten.started_at) == (
            NOW + 5, ["job-a", "job-b"], NOW)
        assert [w.worker_id for w in repository.list_workers()] == ["w1", "w2"]
        # when workers silent since before NOW + 3 are reaped, then only w2 goes
        assert repository.reap_workers(NOW + 3) == ["w2"]
        assert [w.worker_id for w in repository.list_workers()] == ["w1"]
        # and unregistering forgets w1; unregistering again is harmless
        repository.unregister_worker("w1")
        repository.unregister_worker("w1")
        assert repository.list_workers() == []

    def test_registering_a_worker_again_replaces_it(self, repository: JobRepository) -> None:
        repository.register_worker("w1", "host-a", 101, NOW)
        repository.beat_worker("w1", ["job-a"], NOW + 1)
        repository.register_worker("w1", "host-a", 102, NOW + 10)
        (worker,) = repository.list_workers()
        assert (worker.pid, worker.started_at, worker.heartbeat_at, tuple(worker.running)) == (
            102, NOW + 10, NOW + 10, ())

    def test_change_token_moves_when_another_thread_commits(self, repository: JobRepository) -> None:
        before = repository.change_token()
        if before is None:
            pytest.skip("this backend cannot tell when the store changed")
        assert repository.change_token() == before          # nothing happened: same token
        writer = threading.Thread(target=repository.insert, args=([make_record()], NOW),
                                  name="contract-change-writer")
        writer.start()
        writer.join(10)
        assert repository.change_token() != before

    def test_an_exact_change_token_moves_at_claims_and_completions_too(self, repository: JobRepository) -> None:
        if not repository.change_token_sees_every_write:
            pytest.skip("this backend's token moves only when work is added")
        record = make_record()
        repository.insert([record], NOW)
        for write in (lambda: repository.claim(record.id, "w1", NOW, NOW + LEASE),
                      lambda: repository.complete(record.id, "w1", 1, None, NOW)):
            before = repository.change_token()
            writer = threading.Thread(target=write, name="contract-change-writer")
            writer.start()
            writer.join(10)
            assert repository.change_token() != before
