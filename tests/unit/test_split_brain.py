"""A pool used in two parts (split brain) as the metadata layer sees it.

Two devices on sparse files: each half commits without the other, as two
hosts importing one half each do.  Which half a host keeps, what of the
other half is "written apart", and what discarding it leaves.
"""

from __future__ import annotations

from metadata import media
from metadata.model import Pool

from .test_format import committed_pool, next_gen


def _failing(pool: Pool, gen: int, failed: str) -> Pool:
    new = next_gen(pool, gen)
    new.device(failed).state = "failed"
    new.device(failed).failed_at = gen
    return new


def _split(tmp_path):
    """d0 goes on alone at generation 2; d1 alone at 2 and 3 (each failing the other)."""
    pool, (t0, t1) = committed_pool(tmp_path, n=2)
    media.commit_generation([t0], _failing(pool, 2, "d1"))
    other = _failing(pool, 2, "d0")
    media.commit_generation([t1], other)
    media.commit_generation([t1], next_gen(other, 3))
    return t0, t1


def _scans(*targets):
    return [media.scan_device(t.dev) for t in targets]


def test_the_highest_generation_wins_without_a_preference(tmp_path):
    t0, t1 = _split(tmp_path)
    choice = media.choose_generation(_scans(t0, t1))
    assert choice.generation == 3
    assert choice.pool.device("d0").state == "failed"


def test_among_opens_at_the_half_those_devices_hold(tmp_path):
    t0, t1 = _split(tmp_path)
    s0, s1 = _scans(t0, t1)
    choice = media.choose_generation([s0, s1], among=[s0])
    assert choice.generation == 2 and choice.pool.device("d1").state == "failed"
    assert choice.max_seen == 3  # the next commit is above both halves
    assert choice.scans == [s0, s1] and not choice.behind and not choice.rolled_back
    assert media.diverged(s1, choice) is not None
    assert media.diverged(s0, choice) is None


def test_the_apart_generations_are_those_from_the_failure_on(tmp_path):
    t0, t1 = _split(tmp_path)
    s0, s1 = _scans(t0, t1)
    choice = media.choose_generation([s0, s1], among=[s0])
    assert media.apart_generations(s1, choice) == [2, 3]
    assert media.apart_generations(s0, choice) == []


def test_erasing_the_apart_generations_leaves_the_shared_history(tmp_path):
    t0, t1 = _split(tmp_path)
    s0, s1 = _scans(t0, t1)
    choice = media.choose_generation([s0, s1], among=[s0])
    media.erase_generations(t1.dev, t1.label, media.apart_generations(s1, choice))
    s0, s1 = _scans(t0, t1)
    assert sorted(s1.slots) == [1] and sorted(s1.commits) == [1]
    choice = media.choose_generation([s0, s1])
    assert choice.generation == 2
    assert media.diverged(s1, choice) is None and media.diverged(s0, choice) is None


def test_a_device_the_pool_committed_to_again_is_not_apart(tmp_path):
    """Rejoined (both hold the newest commit): an older, different generation is history."""
    t0, t1 = _split(tmp_path)
    choice = media.choose_generation(_scans(t0))  # d0's half: d1 failed
    healed = next_gen(choice.pool, 4)
    healed.device("d1").state = "ok"
    media.commit_generation([t0, t1], healed)
    s0, s1 = _scans(t0, t1)
    choice = media.choose_generation([s0, s1])
    assert choice.generation == 4
    assert s0.commits[2].digest != s1.commits[2].digest
    assert media.diverged(s0, choice) is None and media.diverged(s1, choice) is None
