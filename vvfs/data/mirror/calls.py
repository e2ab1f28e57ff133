"""Device calls of the mirrored path: pieces planned into vectored calls, run concurrently.

Writes (:mod:`.writes`), reads (:mod:`.reads`) and resync (:mod:`.resync`)
plan the pieces a volume range resolves to into one call per run of pieces
contiguous on a device (:func:`plan_calls`) and run them all at once
(:func:`run_calls`), which counts the calls that reached each piece and
returns the failures for the caller to judge (fail the device, or raise).

Cancellation: device calls run in worker threads that are never abandoned
(:mod:`vvfs.io.devio`); a cancelled :func:`run_calls` returns only once its
calls have ended.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping

import trio

from mapper.layout import Loc, Piece
from metadata.blockdev import DeviceIOError
from metadata.model import DeviceUUID
from vvfs.io.devio import IOV_MAX, DataDevice


class Call:
    """A device call and the pieces (indices) it carries."""

    __slots__ = ("bufs", "device", "length", "offset", "pieces")

    def __init__(self, device: DeviceUUID, offset: int) -> None:
        self.device = device
        self.offset = offset
        self.bufs: list[memoryview] = []
        self.length = 0
        self.pieces: list[int] = []


def plan_calls(chosen: Iterable[tuple[int, Piece, Loc]], base: int, view: memoryview
               ) -> list[Call]:
    """Device calls for (piece index, piece, leg), merging runs contiguous on a device."""
    calls: list[Call] = []
    open_calls: dict[DeviceUUID, Call] = {}
    for i, p, loc in chosen:
        buf = view[p.offset - base:p.offset - base + p.length]
        call = open_calls.get(loc.device)
        if call is None or call.offset + call.length != loc.offset or len(call.bufs) >= IOV_MAX:
            call = Call(loc.device, loc.offset)
            calls.append(call)
            open_calls[loc.device] = call
        call.bufs.append(buf)
        call.length += p.length
        call.pieces.append(i)
    return calls


async def run_calls(devices: Mapping[DeviceUUID, DataDevice], calls: list[Call], *,
                    read: bool, ok: list[int]) -> list[tuple[Call, DeviceIOError]]:
    """Run *calls* concurrently; count successes per piece in *ok*; return the failures.

    Each call looks its device up in *devices* when it starts: one that is
    not (or no longer) there fails with ENODEV.
    """
    errors: list[tuple[Call, DeviceIOError]] = []

    async def one(call: Call) -> None:
        dev = devices.get(call.device)
        try:
            if dev is None:
                raise DeviceIOError(call.device, call.offset, "device is not open",
                                    errno.ENODEV)
            if read:
                await dev.preadv(call.bufs, call.offset)
            else:
                await dev.pwritev(call.bufs, call.offset)
        except DeviceIOError as exc:
            errors.append((call, exc))
            return
        for i in call.pieces:
            ok[i] += 1

    if len(calls) == 1:
        await one(calls[0])
    else:
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(one, call)
    return errors
