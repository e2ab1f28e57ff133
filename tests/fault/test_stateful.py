"""A stateful property test of the Manager on real (sparse) devices.

Hypothesis drives create / grow / shrink / remove of volumes, add / remove of
devices, and crash-and-reopen: one of those changes run under a Recorder and
cut at a random write, each device's unflushed writes cut independently,
then ``vvfsck --repair``.  After every step: no extent used twice, used +
free = capacity on every device, mirror legs on distinct devices, the
catalog equal to the media, and vvfsck clean.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mapper
import vvfsck as fsck
from metadata.errors import ConfigError
from metadata.model import Pool
from vvfs.api import Manager
from vvfs.errors import ApiError
from vvfs.testing.faultdev import Cut

from ..support.fsck_support import catalog_pool, make_env, media_choice, record_op

MiB = 1 << 20
Op = Callable[[Manager], object]
CUTS = st.sampled_from([Cut("none"), Cut("all"), Cut("all", torn=1), Cut("prefix", 1),
                        Cut("subset", seed=1), Cut("subset", seed=2, torn=0)])


def refusals_allowed(op: Op) -> Op:
    """A change the Manager refuses (no space, device in use) is no failure."""
    def run(mgr: Manager) -> object:
        try:
            return op(mgr)
        except (ConfigError, ApiError):
            return None
    return run


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.tmp = Path(tempfile.mkdtemp(prefix="vvfs-stateful-", dir=base))
        self.env = make_env(self.tmp, n=3, volumes=0, spare=2)
        self.counter = 0

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what there is -----------------------------------------------------

    def pool(self) -> Pool:
        return media_choice(self.env.paths).pool

    def volumes(self) -> list[str]:
        return [v.name for v in self.pool().volumes]

    def spares(self) -> list[str]:
        used = {p for d in self.pool().devices for p in d.paths}
        return [p for p in self.env.paths if p not in used]

    def run(self, op: Op) -> None:
        with self.env.manager() as mgr:
            refusals_allowed(op)(mgr)

    # -- changes, as operations so that crash_and_reopen can use them too ----

    def op_create(self, data: st.DataObject) -> Op:
        self.counter += 1
        spec = mapper.VolumeSpec(name="", size=data.draw(st.integers(1, 6), "MiB") * MiB,
                                 mirrors=data.draw(st.integers(1, 2), "mirrors"),
                                 stripes=data.draw(st.integers(1, 2), "stripes"))
        name = f"tank/v{self.counter}"
        return lambda mgr: mgr.create_volume(name, spec)

    def op_grow(self, data: st.DataObject) -> Op:
        vol = self.pool().volume(data.draw(st.sampled_from(self.volumes()), "volume"))
        size = vol.size + data.draw(st.integers(1, 4), "grow MiB") * MiB
        return lambda mgr: mgr.resize_volume(f"tank/{vol.name}", size)

    def op_shrink(self, data: st.DataObject) -> Op:
        vol = self.pool().volume(data.draw(st.sampled_from(self.volumes()), "volume"))
        size = data.draw(st.integers(1, max(1, vol.size // MiB)), "new MiB") * MiB
        return lambda mgr: mgr.resize_volume(f"tank/{vol.name}", size, allow_shrink=True)

    def op_remove(self, data: st.DataObject) -> Op:
        name = data.draw(st.sampled_from(self.volumes()), "volume")
        return lambda mgr: mgr.remove_volume(f"tank/{name}")

    def op_add_device(self, data: st.DataObject) -> Op:
        path = data.draw(st.sampled_from(self.spares()), "spare")
        return lambda mgr: mgr.add_device("tank", path)

    def op_remove_device(self, data: st.DataObject) -> Op:
        name = data.draw(st.sampled_from([d.name for d in self.pool().devices]), "device")
        return lambda mgr: mgr.remove_device("tank", name)

    # -- rules -------------------------------------------------------------

    @rule(data=st.data())
    def create_volume(self, data: st.DataObject) -> None:
        self.run(self.op_create(data))

    @precondition(lambda self: self.volumes())
    @rule(data=st.data())
    def grow_volume(self, data: st.DataObject) -> None:
        self.run(self.op_grow(data))

    @precondition(lambda self: self.volumes())
    @rule(data=st.data())
    def shrink_volume(self, data: st.DataObject) -> None:
        self.run(self.op_shrink(data))

    @precondition(lambda self: self.volumes())
    @rule(data=st.data())
    def remove_volume(self, data: st.DataObject) -> None:
        self.run(self.op_remove(data))

    @precondition(lambda self: self.spares())
    @rule(data=st.data())
    def add_device(self, data: st.DataObject) -> None:
        self.run(self.op_add_device(data))

    @rule(data=st.data())
    def remove_device(self, data: st.DataObject) -> None:
        self.run(self.op_remove_device(data))

    @rule(data=st.data())
    def crash_and_reopen(self, data: st.DataObject) -> None:
        makers = [self.op_create, self.op_remove_device]
        if self.volumes():
            makers += [self.op_grow, self.op_shrink, self.op_remove]
        if self.spares():
            makers.append(self.op_add_device)
        op = data.draw(st.sampled_from(makers), "operation")(data)
        rec = record_op(self.env, refusals_allowed(op))
        points = rec.recorder.crash_points()
        if not points:
            return  # refused: nothing was written
        at = data.draw(st.sampled_from(points), "crash after write")
        cuts = {key: data.draw(CUTS, f"cut {key}") for key in rec.recorder.device_keys()}
        rec.crash(self.env, rec.recorder.crash_writes(at, cuts))
        opened = self.pool().to_dict()
        assert opened in (rec.before.to_dict(), rec.after.to_dict()), "a mix of generations"
        event("crash: opens at the " + ("new" if opened == rec.after.to_dict() else "old")
              + " generation")
        fixed = self.env.repair()
        assert fixed.rc in (fsck.EXIT_CLEAN, fsck.EXIT_FOUND), fixed.out + fixed.err
        event(f"crash: vvfsck --repair exits {fixed.rc}")
        assert self.pool().to_dict() == opened

    # -- invariants ----------------------------------------------------------

    @invariant()
    def no_extent_used_twice_and_used_plus_free_is_capacity(self) -> None:
        pool = self.pool()
        used: dict[str, set[int]] = {d.uuid: set() for d in pool.devices}
        for v in pool.volumes:
            for s in v.segments:
                for leg in s.areas:
                    for a in leg:
                        run = set(range(a.start, a.start + s.area_length))
                        assert not run & used[a.device], f"extent used twice ({v.name})"
                        used[a.device] |= run
        for d in pool.devices:
            u = mapper.usage(pool)[d.uuid]
            assert u.used == len(used[d.uuid])
            assert u.used + u.free == u.total == d.extent_count

    @invariant()
    def legs_on_distinct_devices(self) -> None:
        for v in self.pool().volumes:
            for s in v.segments:
                devs = [a.device for leg in s.areas for a in leg]
                assert len(set(devs)) == len(devs), f"volume {v.name} shares a device"

    @invariant()
    def catalog_equals_media(self) -> None:
        assert catalog_pool(self.env).to_dict() == self.pool().to_dict()

    @invariant()
    def vvfsck_is_clean(self) -> None:
        run = self.env.check()
        assert run.rc == fsck.EXIT_CLEAN, run.out + run.err


PoolMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=15, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_pool_machine = PoolMachine.TestCase
