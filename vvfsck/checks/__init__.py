"""The checks, one ``check_*`` function per invariant, in the order they run.

Each takes the pool's :class:`~vvfsck.context.Ctx` and hands what it finds to
``ctx.report``; it never prints and never writes (a repair is a closure in
the finding).  One module per stage of repair; :data:`CHECKS` runs them in
this order on every pool, each pass.  ``man/vvfsck.8`` (CHECKS) documents
every one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from vvfsck.checks import catalog, config, generations, labels, mirrors
from vvfsck.context import Ctx

Check = Callable[[Ctx], None]

#: stage 0: labels and metadata area headers
LABELS: tuple[Check, ...] = (
    labels.check_unsupported,
    labels.check_duplicate_uuids,
    labels.check_labels,
    labels.check_lost_labels,
    labels.check_area_headers,
)

#: stage 1: slots, commit records, stale, missing and orphaned devices
GENERATIONS: tuple[Check, ...] = (
    generations.check_generation,
    generations.check_interrupted_generations,
    generations.check_missing_devices,
    generations.check_stale_devices,
    generations.check_split_brain,
    generations.check_metadata_copies,
    generations.check_damaged_metadata,
    generations.check_orphan_devices,
)

#: stage 2: the configuration (extents, leaks, operation records)
CONFIG: tuple[Check, ...] = (
    config.check_extent_ranges,
    config.check_extent_overlaps,
    config.check_leg_devices,
    config.check_leaked_extents,
    config.check_interrupted_operations,
    config.check_configuration,
)

#: stage 3: the catalog
CATALOG: tuple[Check, ...] = (catalog.check_catalog, catalog.check_catalog_paths)

#: --deep only: the data of mirror legs
DEEP: tuple[Check, ...] = (mirrors.check_mirrors,)

CHECKS: tuple[Check, ...] = LABELS + GENERATIONS + CONFIG + CATALOG + DEEP
