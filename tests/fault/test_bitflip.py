"""A random bit flip anywhere in the labels or metadata areas: never a traceback,
always a finding naming the device and byte offset -- or a clean open at the same
configuration.  1,000 seeds on memory devices with the smallest metadata areas;
every tenth seed is also repaired, and must then check clean at the same
configuration.
"""

from __future__ import annotations

import random

import pytest

import vvfsck as fsck
from metadata import format as fmt
from metadata import media

from ..support.fsck_support import MemPool, mem_pool

SEEDS_PER_REGION = 250
REGIONS = ("label A", "area A", "area B", "label B")


@pytest.fixture(scope="module")
def pool() -> MemPool:
    return mem_pool(3, generations=11)  # the 8-slot ring has wrapped


def region(mp: MemPool, dev: int, name: str) -> tuple[int, int]:
    g = mp.labels[dev].geometry
    return {
        "label A": (fmt.LABEL_A_OFFSET, fmt.LABEL_SIZE),
        "area A": (g.area_a, g.area_size),
        "area B": (g.area_b, g.area_size),
        "label B": (g.label_b, fmt.LABEL_SIZE),
    }[name]


def opens_clean(mp: MemPool, expect: dict) -> bool:
    choice = media.choose_generation([media.scan_device(d) for d in mp.devs])
    return choice.pool.to_dict() == expect


@pytest.mark.parametrize("where", REGIONS)
def test_random_bit_flip(pool, where):
    expect = pool.pool.to_dict()
    clean = pool.snapshot()
    for seed in range(SEEDS_PER_REGION):
        rng = random.Random(f"{where}/{seed}")
        dev = rng.randrange(len(pool.devs))
        start, length = region(pool, dev, where)
        offset = start + rng.randrange(length)
        pool.devs[dev].flip_bit(offset, rng.randrange(8))
        try:
            checker = fsck.Checker(fsck.GivenDevices(pool.devs), emit=lambda line: None)
            findings = checker.check()
            ctx = f"seed {seed}: bit flipped at byte {offset} of {pool.devs[dev].name}"
            if findings:
                named = [f for f in findings if f.where == pool.devs[dev].name]
                assert named and all(f.offset is not None for f in named), ctx
                assert all(f.repairable for f in findings), ctx
            else:
                assert opens_clean(pool, expect), ctx
            if seed % 10 == 0:
                rc = fsck.Checker(fsck.GivenDevices(pool.devs), emit=lambda line: None).run(
                    repair=True, confirm=lambda q: True)
                assert rc == (fsck.EXIT_FOUND if findings else fsck.EXIT_CLEAN), ctx
                assert not fsck.Checker(fsck.GivenDevices(pool.devs),
                                        emit=lambda line: None).check(), ctx
                assert opens_clean(pool, expect), ctx
        finally:
            pool.restore(clean)
