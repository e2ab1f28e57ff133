"""`mount.vvfs`: the mount(8) helper, so that `mount -t fuse.vvfs` and fstab work.

mount(8) runs, for a file system of type ``fuse.vvfs``, the first of
``/sbin/mount.fuse.vvfs`` and ``/sbin/mount.fuse`` that exists; mount.fuse3
then runs the program ``vvfs`` from its default PATH.  setup.cfg installs
this program under all three names (``mount.vvfs``, ``mount.fuse.vvfs``,
``vvfs``), and ``make mount-helper`` links ``/sbin/mount.fuse.vvfs`` to the
venv's (see man/mount.vvfs.8, INSTALLATION).  It is called as::

    mount.fuse.vvfs POOL[,POOL...] MNT [-sfnv] [-N NS] [-t fuse.vvfs] [-o OPTIONS]

SOURCE names the pools to serve, comma-separated; ``all`` serves every
imported pool.  OPTIONS are those of ``vv mount -o`` (``state_dir=DIR``,
``ro``, ``backing=direct|buffered``, ``io_threads=N``, ``debug``); the
standard ones mount(8) and fstab pass (rw, defaults, noauto, _netdev,
nofail, ...) are accepted and ignored.  The helper returns once the mount is
live, the node running as a daemon (log: STATE_DIR/node.log).

An fstab line::

    tank,db  /vv  fuse.vvfs  defaults,_netdev,state_dir=/var/lib/vvfs  0  0

Exit status: 0 mounted; 1 the node could not start (one line on stderr);
2 usage error.  (With -f, mount(8)'s "fake" mode, nothing is done.)
"""

from __future__ import annotations

import getopt
import sys

from .common import EXIT_FAILED, EXIT_USAGE, QuietError, setup_logging

USAGE = "usage: mount.vvfs POOL[,POOL...]|all MNT [-sfnv] [-N NS] [-t TYPE] [-o OPTIONS]"


def parse_args(argv: list[str]) -> tuple[list[str], str, str, bool, int]:
    """(pools, mount point, option string, fake, verbosity) from mount(8)'s argv."""
    positional: list[str] = []
    options: list[str] = []
    fake, verbose = False, 0
    rest = list(argv)
    while rest:
        try:
            opts, rest = getopt.getopt(rest, "sfnvhN:t:o:")
        except getopt.GetoptError as exc:
            raise QuietError(f"{exc}\n{USAGE}", EXIT_USAGE) from None
        for flag, value in opts:
            if flag == "-o":
                options.append(value)
            elif flag == "-f":
                fake = True
            elif flag == "-v":
                verbose += 1
            elif flag == "-h":
                raise QuietError(USAGE, EXIT_USAGE)
            # -s (sloppy), -n (no mtab), -N (namespace), -t (type): nothing to do
        if rest:
            positional.append(rest.pop(0))
    if len(positional) != 2:
        raise QuietError(USAGE, EXIT_USAGE)
    source, mnt = positional
    pools = [] if source == "all" else [p for p in source.split(",") if p]
    return pools, mnt, ",".join(options), fake, verbose


def main(argv: list[str] | None = None) -> None:
    from .vv_mount import parse_options, start_node

    try:
        pools, mnt, options, fake, verbose = parse_args(sys.argv[1:] if argv is None else argv)
        setup_logging(verbose)
        opts = parse_options(options)
        if not fake:
            start_node(mnt, pools, opts, foreground=False)
    except QuietError as exc:
        print(f"mount.vvfs: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(EXIT_FAILED)
    sys.exit(0)


if __name__ == "__main__":
    main()
