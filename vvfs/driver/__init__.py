"""The virtualization driver: FUSE requests served from downloaded map tables.

The seed's Figure 7: management computes the map and downloads tables to
the driver, which turns each host request into device requests and
collects their completions; management is not on the I/O path.

* :mod:`vvfs.driver._native` (Cython, built at install when a compiler is
  there): threads that each read requests from a clone of the session's
  /dev/fuse descriptor (FUSE_DEV_IOC_CLONE) and serve READ, WRITE, FSYNC
  and FLUSH of the file handles whose tables they have, without the GIL;
  every other request goes up to Python with the descriptor it came on.
* :mod:`vvfs.driver.protocol`: the FUSE kernel protocol in Python, for the
  requests handed up: decoded, passed to the pyfuse3 operations object,
  answered on the same descriptor.
* :mod:`vvfs.driver.engine`: the native engine (``-o engine=native``): the
  threads, which volumes get tables, and when tables change.

pyfuse3 still mounts and answers INIT; the Python data path
(:mod:`vvfs.data`) stays the reference for semantics and serves whatever a
table cannot express.  This room imports the data path, io, mapper and
metadata, never the node (the operations object is passed in).
"""
