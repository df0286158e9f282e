"""Contract tests for the worker registry and `change_token`; the jobs workers hold are `running`'s."""

from __future__ import annotations

import threading

import pytest

from ...repository.base import JobRepository, takes_argument
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

    def test_each_worker_is_reaped_by_its_own_lease(self, repository: JobRepository) -> None:
        # given workers with different leases sharing the store (a long-job pool with a
        # 60 s lease beating every few seconds, a fast pool with 1.5 s), and an entry
        # that recorded no lease (an older jobcore), all last beating at NOW
        if not (takes_argument(repository.register_worker, "lease_timeout")
                and takes_argument(repository.reap_workers, "now")):
            pytest.skip("this backend records no worker leases (written before they were added)")
        repository.register_worker("slow", "host-a", 101, NOW, lease_timeout=60.0)
        repository.register_worker("fast", "host-a", 102, NOW, lease_timeout=1.5)
        repository.register_worker("old", "host-a", 103, NOW)
        assert [(w.worker_id, w.lease_timeout) for w in repository.list_workers()] == [
            ("fast", 1.5), ("old", None), ("slow", 60.0)]
        # when a worker whose own lease is 1.5 s reaps, 10 s later, then the slow worker,
        # silent for 10 s of its 60, stays; the fast one goes by its own lease, the old
        # one by the reaper's
        assert sorted(repository.reap_workers(NOW + 10 - 1.5, now=NOW + 10)) == ["fast", "old"]
        assert [w.worker_id for w in repository.list_workers()] == ["slow"]
        # and once it is silent past its own lease, it goes too
        assert repository.reap_workers(NOW + 61 - 1.5, now=NOW + 61) == ["slow"]
        # while without `now`, every entry is judged by `before` alone, as before leases
        repository.register_worker("slow", "host-a", 101, NOW, lease_timeout=60.0)
        assert repository.reap_workers(NOW + 1) == ["slow"]

    def test_registering_a_worker_again_replaces_it(self, repository: JobRepository) -> None:
        leases = takes_argument(repository.register_worker, "lease_timeout")
        repository.register_worker("w1", "host-a", 101, NOW, **({"lease_timeout": 5.0} if leases else {}))
        repository.beat_worker("w1", ["job-a"], NOW + 1)
        repository.register_worker("w1", "host-a", 102, NOW + 10, **({"lease_timeout": 7.0} if leases else {}))
        (worker,) = repository.list_workers()
        assert (worker.pid, worker.started_at, worker.heartbeat_at, tuple(worker.running)) == (
            102, NOW + 10, NOW + 10, ())
        assert worker.lease_timeout == (7.0 if leases else None)

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
