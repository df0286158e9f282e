"""`SettlesThroughApply`: the single-job settling methods of the storage contract made as
one-settlement `apply` calls, for backends whose `apply` does the real work; it holds no
storage code and does not implement `apply` itself.

`base` re-exports it: backends import it from there, as from `jobcore.repository.base`.
"""

from __future__ import annotations

from typing import Any, Optional

from .values import Cascade, Settlement

__all__ = ["SettlesThroughApply"]


class SettlesThroughApply:
    """For backends whose `apply` does the real work: `complete`, `fail`,
    `finish_cancelled` and `release` as one-settlement `apply` calls. List it before
    `JobRepository` among the bases."""

    def _settle_alone(self, settlement: Settlement, worker_id: str, now: float) -> Optional[Cascade]:
        apply = self.apply  # type: ignore[attr-defined]
        return apply([settlement], [], worker_id, now, now)[0][0]  # type: ignore[no-any-return]

    def complete(self, job_id: str, worker_id: str, attempt: int, result: Any, now: float,
                 note: Optional[str] = None) -> Optional[Cascade]:
        """`JobRepository.complete`, as one `apply` call."""
        return self._settle_alone(Settlement("complete", job_id, attempt, result=result, note=note),
                                  worker_id, now)

    def fail(self, job_id: str, worker_id: str, attempt: int, *, error: str, error_type: str,
             traceback: Optional[str], now: float, retry_at: Optional[float],
             note: Optional[str] = None) -> Optional[Cascade]:
        """`JobRepository.fail`, as one `apply` call."""
        settlement = Settlement("fail" if retry_at is None else "retry", job_id, attempt, error=error,
                                error_type=error_type, traceback=traceback, retry_at=retry_at, note=note)
        return self._settle_alone(settlement, worker_id, now)

    def finish_cancelled(self, job_id: str, worker_id: str, attempt: int, now: float) -> Optional[Cascade]:
        """`JobRepository.finish_cancelled`, as one `apply` call."""
        return self._settle_alone(Settlement("cancel", job_id, attempt), worker_id, now)

    def release(self, job_id: str, worker_id: str, attempt: int, now: float) -> bool:
        """`JobRepository.release`, as one `apply` call."""
        return self._settle_alone(Settlement("release", job_id, attempt), worker_id, now) is not None
