"""vvfsck: offline checks and repairs of a pool, from its media alone.

``tools/vvfsck.py`` only wires the command line to :class:`Checker`.

Where things are
----------------
:mod:`vvfsck.findings`
    :class:`Finding`, the repair stages, the exit statuses, the text of findings.
:mod:`vvfsck.devices`
    where a pass gets its devices: :class:`PathDevices`, :class:`GivenDevices`.
:mod:`vvfsck.inspect`
    what a pass reads: every device scanned, its slots and commit records
    classified, the devices grouped by pool.
:mod:`vvfsck.context`
    :class:`~vvfsck.context.Ctx`: one pool in one pass, as the checks see it.
:mod:`vvfsck.checks`
    the ``check_*`` functions, one module per stage (``labels``,
    ``generations``, ``config``, ``catalog``; ``mirrors`` for ``--deep``);
    :data:`CHECKS` is the order they run in.
:mod:`vvfsck.repairs`
    what writes: generations, labels, a new commit of the pool, ``--rollback``.
:mod:`vvfsck.checker`
    :class:`Checker`: passes, repair stages, summary and exit status,
    ``--rollback`` and ``--dump`` (:mod:`vvfsck.dump`).

How a check runs
----------------
A *pass* opens the devices, scans them (:func:`metadata.media.scan_device`),
groups them by pool, picks the generation each pool opens at
(:func:`metadata.media.choose_generation`) and runs every ``check_*``
function of :data:`CHECKS` on each pool.  A check never prints: it hands each problem
to :meth:`Checker.report` as a :class:`Finding` naming the device and byte
offset, what is wrong, and either the repair (a closure) or what the
administrator must do instead.  Report-only is the default.

With ``--repair`` the checker repairs *stage by stage* and reads everything
again after each stage, because each stage is what the next one stands on:

0. labels and metadata area headers (where everything else is);
1. slots and commit records of existing generations, stale devices,
   interrupted generations, orphaned devices;
2. configuration changes, committed together as one new generation
   (interrupted operations rolled back, stale resync records dropped,
   leaked extents freed);
3. the catalog, re-synced from media (media wins).

While a device the configuration lists is missing, stages 1 and 2 are not
repaired: the missing device might hold what would prove another
generation complete.  Then a last pass reports whatever is left.

What a "leak" is here
---------------------
Free space is not recorded anywhere: an extent is free exactly when no
segment of any volume names it, so "allocated but unreferenced" extents
cannot exist.  What can hold space that nothing can use is

* an extent mapped past what its volume's size needs (an over-mapped
  volume: repair trims the map, as a shrink would have);
* extents reserved by an operation record (``Pool.operations``, e.g. the
  destination of a move) that no running node will ever finish: the
  interrupted-operation check rolls it back;
* a whole device that carries the pool's label but that the configuration
  does not list (an add or a remove interrupted between the claim or
  unclaim and the commit): repair erases its labels and metadata areas.

Interrupted operations are rolled *back*: the volume map still names the
data's old place until the final commit of a move, so dropping the record
loses nothing (a move then restarts from the beginning).  Rolling forward
is the node's job, when it starts and finds the record.

Resync records are the exception: a device brought back or replaced stays
``failed`` in the configuration, with a resync record, until a node has
resynced it (the node's mirror service, ``vvfs/node/mirrors.py``).  Nothing is half done there, so a
well-formed record is a *pending* finding: printed, kept by ``--repair``,
and no problem for the exit status; the next mount finishes it.  Only a
record that names no device of the pool, or a device already ``ok``, is
dropped.

Exit status (see ``man/vvfsck.8``): :data:`EXIT_CLEAN`, :data:`EXIT_FOUND`,
:data:`EXIT_LEFT`, :data:`EXIT_OPERATIONAL`.
"""

from __future__ import annotations

from vvfsck.checker import MAX_PASSES, Checker
from vvfsck.checks import CHECKS
from vvfsck.devices import DeviceSet, GivenDevices, PathDevices
from vvfsck.findings import (
    EXIT_CLEAN,
    EXIT_FOUND,
    EXIT_LEFT,
    EXIT_OPERATIONAL,
    STAGE_CATALOG,
    STAGE_CONFIG,
    STAGE_LABELS,
    STAGE_METADATA,
    Finding,
)

__all__ = [
    "CHECKS",
    "EXIT_CLEAN",
    "EXIT_FOUND",
    "EXIT_LEFT",
    "EXIT_OPERATIONAL",
    "MAX_PASSES",
    "STAGE_CATALOG",
    "STAGE_CONFIG",
    "STAGE_LABELS",
    "STAGE_METADATA",
    "Checker",
    "DeviceSet",
    "Finding",
    "GivenDevices",
    "PathDevices",
]
