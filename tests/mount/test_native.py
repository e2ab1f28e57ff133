"""The native driver (``-o engine=native``) on a real mount."""

from __future__ import annotations

import json

import pytest

from ..support.mountutil import MiB, TestPool, fio, mounted, require

pytestmark = pytest.mark.slow


def _fio_verify(path: str, bs: str) -> None:
    fio("--name=verify", f"--filename={path}", "--rw=randwrite", f"--bs={bs}",
        "--size=32M", "--direct=1", "--ioengine=libaio", "--iodepth=16",
        "--verify=crc32c", "--verify_fatal=1", "--do_verify=1")


@pytest.mark.parametrize("bs", ["4k", "1M"])
def test_fio_verify_native(fresh_pool: TestPool, bs: str) -> None:
    require("fio")
    fresh_pool.create_volume("lin", 64 * MiB)
    fresh_pool.create_volume("str", 64 * MiB, stripes=2, stripe_size=64 * 1024)
    with mounted(fresh_pool, "engine=native", "driver_threads=2") as node:
        for name in ("lin", "str"):
            _fio_verify(fresh_pool.volume_path(name), bs)
        status = json.loads(fresh_pool.vv("status", "--json").stdout)
        print(json.dumps(status.get("engine"), indent=1))
        node.umount()
