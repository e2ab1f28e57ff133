"""A small fault-injecting FUSE file system for the tests: a real failing layer.

``python -m tests.support.faultfs SOURCE MNT`` serves the regular files of
directory SOURCE (one level, no subdirectories) at MNT, passing reads, writes and
fsyncs through to them (``direct_io``: nothing is cached at this layer, so a
fault is seen by the very next call).  Faults are set per file by writing
one command per line to ``MNT/.faultctl``:

``fail NAME [read|write|all]``
    calls of that kind on NAME fail with EIO (default all, fsync included)
``vanish NAME``
    NAME disappears: lookups give ENOENT and calls on open handles ENXIO
``delay NAME SECONDS [read|write|all]``
    calls of that kind sleep first (without holding up other requests)
``heal NAME`` / ``heal *``
    remove every fault of NAME / of every file

Reading ``MNT/.faultctl`` returns a JSON document: per file its faults and
the number of reads, writes and errors served.

:func:`faultfs_mounted` starts it for a test and always cleans up: lazy
unmount, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CTL = ".faultctl"
KINDS = ("read", "write", "all")


# ---------------------------------------------------------------------------
# the file system (runs in its own process)


def _serve(source: str, mountpoint: str) -> None:
    import pyfuse3
    import trio
    from pyfuse3 import FUSEError

    ROOT = pyfuse3.ROOT_INODE
    CTL_INO = ROOT + 1

    class FaultFS(pyfuse3.Operations):
        enable_writeback_cache = False

        def __init__(self) -> None:
            super().__init__()
            self.names: dict[str, int] = {}
            self.paths: dict[int, str] = {}
            for name in sorted(os.listdir(source)):
                full = os.path.join(source, name)
                if stat.S_ISREG(os.stat(full).st_mode):
                    ino = CTL_INO + 1 + len(self.names)
                    self.names[name] = ino
                    self.paths[ino] = name
            self.faults: dict[str, dict[str, Any]] = {n: {} for n in self.names}
            self.counts: dict[str, dict[str, int]] = {
                n: {"reads": 0, "writes": 0, "errors": 0} for n in self.names}
            self.fds: dict[int, tuple[int, str]] = {}
            self.next_fh = 1
            self.ctl_out: dict[int, bytes] = {}

        # -- faults ----------------------------------------------------------

        def command(self, line: str) -> None:
            words = line.split()
            if not words:
                return
            verb, args = words[0], words[1:]
            if verb == "heal":
                for n in (self.names if args[0] == "*" else [args[0]]):
                    self.faults[n] = {}
            elif verb == "fail":
                self.faults[args[0]]["fail"] = args[1] if len(args) > 1 else "all"
            elif verb == "vanish":
                self.faults[args[0]]["vanish"] = True
            elif verb == "delay":
                self.faults[args[0]]["delay"] = (float(args[1]),
                                                 args[2] if len(args) > 2 else "all")
            else:
                raise FUSEError(errno.EINVAL)

        async def check(self, name: str, kind: str) -> None:
            f = self.faults[name]
            if "delay" in f and f["delay"][1] in (kind, "all"):
                await trio.sleep(f["delay"][0])
            if f.get("vanish"):
                self.counts[name]["errors"] += 1
                raise FUSEError(errno.ENXIO)
            if f.get("fail") in (kind, "all"):
                self.counts[name]["errors"] += 1
                raise FUSEError(errno.EIO)

        # -- names -----------------------------------------------------------

        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            e = pyfuse3.EntryAttributes()
            e.st_ino = ino
            e.entry_timeout = e.attr_timeout = 0
            if ino == ROOT:
                e.st_mode = stat.S_IFDIR | 0o755
                e.st_nlink = 2
            elif ino == CTL_INO:
                e.st_mode = stat.S_IFREG | 0o600
                e.st_nlink = 1
                e.st_size = 1 << 20
            else:
                st = os.stat(os.path.join(source, self.paths[ino]))
                e.st_mode = stat.S_IFREG | 0o600
                e.st_nlink = 1
                e.st_size = st.st_size
                e.st_blocks = st.st_blocks
            e.st_blksize = 4096
            return e

        async def lookup(self, parent: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
            n = name.decode()
            if n == CTL:
                return self._attr(CTL_INO)
            if n not in self.names or self.faults[n].get("vanish"):
                raise FUSEError(errno.ENOENT)
            return self._attr(self.names[n])

        async def getattr(self, ino: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
            if ino in self.paths and self.faults[self.paths[ino]].get("vanish"):
                raise FUSEError(errno.ENXIO)
            return self._attr(ino)

        async def setattr(self, ino: int, attr: Any, fields: Any, fh: Any, ctx: Any
                          ) -> pyfuse3.EntryAttributes:
            return self._attr(ino)

        async def opendir(self, ino: int, ctx: Any) -> int:
            return ino

        async def readdir(self, fh: int, start: int, token: Any) -> None:
            entries = [(CTL_INO, CTL)] + [(ino, n) for n, ino in self.names.items()
                                          if not self.faults[n].get("vanish")]
            for ino, n in entries:
                if ino <= start:
                    continue
                if not pyfuse3.readdir_reply(token, n.encode(), self._attr(ino), ino):
                    break

        async def releasedir(self, fh: int) -> None:
            pass

        async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
            s = pyfuse3.StatvfsData()
            st = os.statvfs(source)
            s.f_bsize, s.f_frsize = st.f_bsize, st.f_frsize
            s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
            s.f_namemax = 255
            return s

        # -- files -----------------------------------------------------------

        async def open(self, ino: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
            fh = self.next_fh
            self.next_fh += 1
            if ino == CTL_INO:
                doc = {n: {"faults": self.faults[n], **self.counts[n]} for n in self.names}
                self.ctl_out[fh] = json.dumps(doc).encode()
                return pyfuse3.FileInfo(fh=fh, direct_io=True)
            name = self.paths[ino]
            if self.faults[name].get("vanish"):
                raise FUSEError(errno.ENOENT)
            fd = os.open(os.path.join(source, name), os.O_RDWR | os.O_CLOEXEC)
            self.fds[fh] = (fd, name)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            if fh in self.ctl_out:
                return self.ctl_out[fh][off:off + size]
            fd, name = self.fds[fh]
            await self.check(name, "read")
            self.counts[name]["reads"] += 1
            return await trio.to_thread.run_sync(os.pread, fd, size, off)

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            if fh in self.ctl_out:
                for line in buf.decode().splitlines():
                    self.command(line)
                return len(buf)
            fd, name = self.fds[fh]
            await self.check(name, "write")
            self.counts[name]["writes"] += 1
            return await trio.to_thread.run_sync(os.pwrite, fd, buf, off)

        async def fsync(self, fh: int, datasync: bool) -> None:
            if fh in self.ctl_out:
                return
            fd, name = self.fds[fh]
            await self.check(name, "write")
            await trio.to_thread.run_sync(os.fdatasync, fd)

        async def flush(self, fh: int) -> None:
            pass

        async def release(self, fh: int) -> None:
            self.ctl_out.pop(fh, None)
            entry = self.fds.pop(fh, None)
            if entry is not None:
                os.close(entry[0])

    fs = FaultFS()
    pyfuse3.init(fs, mountpoint, ["fsname=faultfs", "subtype=faultfs"])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


# ---------------------------------------------------------------------------
# the test side


class FaultFS:
    """A running faultfs: its mount point, and the commands it takes."""

    def __init__(self, mnt: Path, proc: subprocess.Popen[bytes]) -> None:
        self.mnt = mnt
        self.proc = proc

    def path(self, name: str) -> str:
        return str(self.mnt / name)

    def command(self, line: str) -> None:
        with open(self.mnt / CTL, "w") as f:
            f.write(line + "\n")

    def fail(self, name: str, kind: str = "all") -> None:
        self.command(f"fail {name} {kind}")

    def vanish(self, name: str) -> None:
        self.command(f"vanish {name}")

    def delay(self, name: str, seconds: float, kind: str = "all") -> None:
        self.command(f"delay {name} {seconds} {kind}")

    def heal(self, name: str = "*") -> None:
        self.command(f"heal {name}")

    def state(self) -> dict[str, Any]:
        with open(self.mnt / CTL) as f:
            return json.loads(f.read())


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@contextlib.contextmanager
def faultfs_mounted(source: Path, mnt: Path) -> Iterator[FaultFS]:
    """Serve *source* at *mnt* with faultfs; unmount and stop it afterwards, whatever happens."""
    mnt.mkdir(exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.faultfs", str(source),
                             str(mnt)], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not _mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None \
                    else ""
                raise RuntimeError(f"faultfs did not mount on {mnt}: {err}")
            time.sleep(0.05)
        yield FaultFS(mnt, proc)
    finally:
        if _mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                           check=False)
        if _mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
