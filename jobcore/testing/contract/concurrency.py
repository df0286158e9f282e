"""Contract tests with many threads on one repository; single-threaded promises are the other modules'."""

from __future__ import annotations

from ...models import JobStatus
from ...repository.base import JobRepository
from .support import claim_race


class _ConcurrencyContract:
    """Many threads at once on one repository."""

    def test_concurrent_inserts_and_claims_claim_every_job_exactly_once(self, repository: JobRepository) -> None:
        # given 8 threads inserting 100 jobs each while 4 threads claim what is ready
        inserted, claimed = claim_race(repository, [repository])
        # then every job was claimed, and none twice
        assert len(claimed) == len(set(claimed)) == len(inserted) == 800
        assert set(claimed) == set(inserted)
        assert repository.count_by_status()[JobStatus.RUNNING] == 800
        seqs = {r.seq for r in repository.list(limit=None)}
        assert len(seqs) == 800
