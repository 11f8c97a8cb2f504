"""Group commit: concurrent callers' items made durable by one call (one folder fsync, one transaction) instead of one
call each, every caller still waiting for the call that covers its own items.

No caller waits for company: one that finds no commit in flight commits at once, alone if it is alone. Callers that
arrive while a commit is in flight queue up; when it ends, one of them (the leader) commits everything queued, up to
a limit, for all of them. Under load the batches grow by themselves; a single sender pays nothing for it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class GroupCommitFailed(RuntimeError):
    """The commit that covered a caller's items raised (in the leader's thread): nothing is known to be durable."""


class _Submission(Generic[Item]):
    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.done = False
        self.error: BaseException | None = None


class GroupCommit(Generic[Item]):
    """Runs ``commit`` over the items of concurrent :meth:`submit` calls together (whole submissions, up to ``limit``
    items unless a single submission is larger). ``commit`` records each item's outcome on the item itself."""

    def __init__(self, commit: Callable[[list[Item]], None], *, limit: int) -> None:
        if limit < 1:
            raise ValueError("a group commit takes at least one item")
        self._commit = commit
        self._limit = limit
        self._changed = threading.Condition()
        self._queued: deque[_Submission[Item]] = deque()
        self._leading = False

    @property
    def waiting(self) -> int:
        """Submissions queued for the next commit (its batch, when one is in flight)."""
        with self._changed:
            return len(self._queued)

    def submit(self, items: list[Item]) -> None:
        """Returns once a commit that covered ``items`` has ended; raises :class:`GroupCommitFailed` when that
        commit raised (in whichever caller's thread ran it)."""
        mine = _Submission(items)
        with self._changed:
            self._queued.append(mine)
        while True:
            with self._changed:
                while not mine.done and self._leading:
                    self._changed.wait()
                if mine.done:
                    break
                self._leading = True
                batch = self._take()
            self._lead(batch)  # the batch may not hold ``mine`` when older submissions filled it: then again
        if mine.error is not None:
            raise GroupCommitFailed("the group commit covering these items failed") from mine.error

    def _take(self) -> list[_Submission[Item]]:
        """The oldest submissions, whole, up to the limit (always at least one)."""
        taken, count = [], 0
        while self._queued and (not taken or count + len(self._queued[0].items) <= self._limit):
            submission = self._queued.popleft()
            taken.append(submission)
            count += len(submission.items)
        return taken

    def _lead(self, batch: list[_Submission[Item]]) -> None:
        # Until the commit returns, its items count as failed: an interruption must not read as success.
        error: BaseException | None = GroupCommitFailed("the group commit was interrupted")
        try:
            self._commit([item for submission in batch for item in submission.items])
            error = None
        except Exception as exc:  # noqa: BLE001 - handed to every caller in the batch; none acknowledges
            error = exc
        finally:
            with self._changed:
                for submission in batch:
                    submission.done, submission.error = True, error
                self._leading = False
                self._changed.notify_all()
