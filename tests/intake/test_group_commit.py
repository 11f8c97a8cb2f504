"""Issue 23: the group commit under real threads. A lone caller commits at once, alone; callers arriving while a
commit is in flight are committed together by the next one; a failing commit fails every caller it covered and
leaves the next commit free to run."""

from __future__ import annotations

import threading
import time

import pytest

from ortho_node.intake.group_commit import GroupCommit, GroupCommitFailed


class Journal:
    """A commit function that records each batch and can be made to wait (a slow disk or database)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: str | None = None

    def commit(self, items: list[str]) -> None:
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.fail_on in items:
            raise OSError("the disk went away")


def _submit_in_thread(group: GroupCommit, items: list[str], errors: dict[str, BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            group.submit(items)
        except GroupCommitFailed as exc:
            errors[items[0]] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_queue(group: GroupCommit, count: int) -> None:
    deadline = time.monotonic() + 10
    while group.waiting < count:
        assert time.monotonic() < deadline, "the callers did not queue up"
        time.sleep(0.005)


def test_a_lone_caller_commits_at_once_and_alone():
    journal = Journal()
    group = GroupCommit(journal.commit, limit=64)
    group.submit(["a"])
    group.submit(["b", "c"])
    assert journal.batches == [["a"], ["b", "c"]]


def test_callers_arriving_during_a_commit_share_the_next_one():
    journal = Journal()
    journal.gate.clear()
    group = GroupCommit(journal.commit, limit=64)
    errors: dict[str, BaseException] = {}
    first = _submit_in_thread(group, ["first"], errors)
    assert journal.entered.wait(10)
    later = [_submit_in_thread(group, [name], errors) for name in ("x", "y", "z")]
    _wait_for_queue(group, 3)
    assert all(thread.is_alive() for thread in [first, *later]), "nobody returns before its commit"
    journal.gate.set()
    for thread in [first, *later]:
        thread.join(10)
    assert not errors
    assert journal.batches[0] == ["first"]
    assert sorted(journal.batches[1]) == ["x", "y", "z"] and len(journal.batches) == 2


def test_a_commit_takes_whole_submissions_up_to_its_limit():
    journal = Journal()
    journal.gate.clear()
    group = GroupCommit(journal.commit, limit=3)
    errors: dict[str, BaseException] = {}
    threads = [_submit_in_thread(group, ["first"], errors)]
    assert journal.entered.wait(10)
    for count, items in enumerate((["a1", "a2"], ["b1"], ["c1", "c2"], ["big1", "big2", "big3", "big4"]), 1):
        threads.append(_submit_in_thread(group, items, errors))
        _wait_for_queue(group, count)  # queued in this order
    journal.gate.set()
    for thread in threads:
        thread.join(10)
    assert journal.batches == [["first"], ["a1", "a2", "b1"], ["c1", "c2"], ["big1", "big2", "big3", "big4"]]


def test_a_failed_commit_fails_every_caller_it_covered_and_the_next_commit_runs():
    journal = Journal()
    journal.gate.clear()
    journal.fail_on = "y"
    group = GroupCommit(journal.commit, limit=64)
    errors: dict[str, BaseException] = {}
    first = _submit_in_thread(group, ["first"], errors)
    assert journal.entered.wait(10)
    later = [_submit_in_thread(group, [name], errors) for name in ("x", "y")]
    _wait_for_queue(group, 2)
    journal.gate.set()
    for thread in [first, *later]:
        thread.join(10)
    assert set(errors) == {"x", "y"}
    assert isinstance(errors["x"].__cause__, OSError)
    group.submit(["after"])
    assert journal.batches[-1] == ["after"]
    with pytest.raises(GroupCommitFailed):
        group.submit(["y"])
