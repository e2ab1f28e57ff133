"""Level 1 of resolution: which volumes exist and which hosts see them.

LUN masking: a volume's ``hosts`` lists the host identities it is presented
to (``vv volume present|hide``); an empty list means it is presented to
nobody in particular, that is, to every host.  A host is known by a set of
identities (a node uses its host id and its hostname) and sees a volume if
any one of them is in the volume's list.  Identities are compared as exact
strings; none is special.

A host's mount and its NBD exports list only the volumes visible to it
(``vvfs.node.fs``); what a host does not see it cannot open.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import NamedTuple

from metadata.model import Pool, Volume

__all__ = ["Attributes", "attributes", "valid_id", "visible", "visible_volumes"]

#: Highest uid or gid a volume file may show (2**32 - 1 is (uid_t) -1);
#: the same bound as ``mapper.placement.MAX_ID``.
MAX_ID = (1 << 32) - 2
#: What a value that is not valid shows instead: root's, and no access for others.
SAFE_OWNER = SAFE_GROUP = 0
SAFE_MODE = 0o600


class Attributes(NamedTuple):
    """Owner, group and mode a volume file shows, and the fields that were not valid."""

    owner: int
    group: int
    mode: int
    bad: tuple[str, ...]


def attributes(volume: Volume) -> Attributes:
    """The owner, group and permission bits that *volume*'s file shows.

    A value read from media that is not valid (not an integer, a uid or gid
    outside 0 to :data:`MAX_ID`, a mode with bits beyond 0o7777) shows as
    :data:`SAFE_OWNER`, :data:`SAFE_GROUP` or :data:`SAFE_MODE` (root-owned,
    0600: never more access than asked for) and is named in ``bad``, so that
    the caller can log it.  Never raises.
    """
    bad = []
    owner, group, mode = volume.owner, volume.group, volume.mode
    if not valid_id(owner):
        bad.append("owner")
        owner = SAFE_OWNER
    if not valid_id(group):
        bad.append("group")
        group = SAFE_GROUP
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        bad.append("mode")
        mode = SAFE_MODE
    return Attributes(owner, group, mode, tuple(bad))


def valid_id(value: object) -> bool:
    """Is *value* an integer uid or gid from 0 to :data:`MAX_ID`?"""
    return type(value) is int and 0 <= value <= MAX_ID


def visible(volume: Volume, host_ids: AbstractSet[str]) -> bool:
    """Is *volume* presented to a host known by the identities *host_ids*?

    True if ``volume.hosts`` is empty (presented to every host, even to one
    with no identities at all), or if ``volume.hosts`` and *host_ids* share
    at least one identity; False otherwise -- in particular, with *host_ids*
    empty only volumes presented to every host are visible.  Duplicates and
    order in ``volume.hosts`` do not matter.  Reads only its arguments and
    never raises.
    """
    return not volume.hosts or not host_ids.isdisjoint(volume.hosts)


def visible_volumes(pool: Pool, host_ids: AbstractSet[str]) -> list[Volume]:
    """The volumes of *pool* that :func:`visible` presents to *host_ids*.

    Returns the sub-list of ``pool.volumes`` that passes :func:`visible`, in
    the pool's order, holding the pool's own :class:`Volume` objects (not
    copies); an empty list for a pool without volumes or when none is
    presented to the host.  Reads only its arguments and never raises.
    """
    return [v for v in pool.volumes if visible(v, host_ids)]
