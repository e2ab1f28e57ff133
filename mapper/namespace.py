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

from metadata.model import Pool, Volume

__all__ = ["visible", "visible_volumes"]


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
