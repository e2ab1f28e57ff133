# cython: language_level=3
"""The native half of the driver: threads that read FUSE requests and serve I/O from tables.

See :mod:`vvfs.driver` for the design.  Each thread owns one clone of the
session's /dev/fuse descriptor (FUSE_DEV_IOC_CLONE), a request buffer and
an aligned data buffer allocated once, and loops without the GIL:

    poll(clone, stop) -> read(clone) -> READ/WRITE/FSYNC/FLUSH of a
    registered file handle whose table is native -> device calls -> reply
    on the clone; anything else -> hand the request's bytes and the clone's
    fd to Python (``submit``), which answers on that fd.

A request is served natively only when it is fully served: a device call
that fails or comes up short hands the whole request to Python (writes are
idempotent, so the Python path may write again what native code wrote),
which is the reference for semantics (path failover, events, errors).

Tables (:class:`Table`) are built by the engine from a volume's map and
hold their own duplicates of the device descriptors, so a descriptor the
node closes or reopens never changes what a table reaches.  A thread holds
the table's read lock for the whole request; :meth:`Driver.unregister` and
:meth:`Table.retire` take the write lock, so once they return no request
uses the table, and a retired table that wrote since its last fsync is
fdatasync'ed first (a later fsync through Python would not know).
"""

from libc.errno cimport errno, EINTR, EAGAIN, ENOENT, ENODEV
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.unistd cimport close, read, write, dup, fdatasync, pread, pwrite
from posix.fcntl cimport open as c_open, O_RDWR, O_CLOEXEC

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum: EFD_CLOEXEC

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4,
              unsigned long a5)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_rwlock_t:
        pass
    int pthread_create(pthread_t *t, const void *attr, void *(*fn)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_rwlock_init(pthread_rwlock_t *lk, const void *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *lk)
    int pthread_rwlock_rdlock(pthread_rwlock_t *lk)
    int pthread_rwlock_wrlock(pthread_rwlock_t *lk)
    int pthread_rwlock_unlock(pthread_rwlock_t *lk)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **p, size_t align, size_t size)

cdef extern from "<linux/fuse.h>" nogil:
    struct fuse_in_header:
        uint32_t len
        uint32_t opcode
        uint64_t unique
        uint64_t nodeid
        uint32_t uid
        uint32_t gid
        uint32_t pid
        uint16_t total_extlen
        uint16_t padding
    struct fuse_out_header:
        uint32_t len
        int32_t error
        uint64_t unique
    struct fuse_read_in:
        uint64_t fh
        uint64_t offset
        uint32_t size
    struct fuse_write_in:
        uint64_t fh
        uint64_t offset
        uint32_t size
    struct fuse_write_out:
        uint32_t size
        uint32_t padding
    struct fuse_fsync_in:
        uint64_t fh
    struct fuse_flush_in:
        uint64_t fh
    enum:
        FUSE_READ
        FUSE_WRITE
        FUSE_FSYNC
        FUSE_FLUSH
    unsigned long FUSE_DEV_IOC_CLONE

cdef extern from *:
    """
    #define atomic_add(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
    #define atomic_load(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define atomic_max(p, v) do { uint64_t _o = __atomic_load_n((p), __ATOMIC_RELAXED); \
        while (_o < (v) && !__atomic_compare_exchange_n((p), &_o, (v), 0, \
               __ATOMIC_RELEASE, __ATOMIC_RELAXED)) ; } while (0)
    """
    void atomic_add(uint64_t *p, uint64_t v) nogil
    uint64_t atomic_load(uint64_t *p) nogil
    void atomic_max(uint64_t *p, uint64_t v) nogil

DEF PR_SET_IO_FLUSHER = 57
DEF ALIGN = 4096
#: request buffer: the largest write (1 MiB, FUSE_MAX_MAX_PAGES) and its headers
DEF REQ_BUF = (1 << 20) + 65536
DEF DATA_BUF = 1 << 20
DEF SLOTS = 65536
DEF MAX_THREADS = 64


cdef struct seg_t:
    uint64_t start
    uint64_t end
    uint64_t unit
    int stripes
    int *fd        # per column: buffered descriptor
    int *dfd       # per column: O_DIRECT descriptor, or -1
    uint64_t *base  # per column: device byte of the area's start


cdef struct table_t:
    pthread_rwlock_t lock
    int native      # 0: hand everything to Python
    int writable    # 0: hand writes to Python (a read-only mount answers EROFS there)
    int retired
    uint64_t size
    int nseg
    seg_t *segs
    int nfds
    int *fds        # every descriptor the table owns (closed when freed)
    uint64_t written   # native writes completed (only grows)
    uint64_t durable   # the first this-many are on stable storage (a native fsync)
    uint64_t reads, writes, fsyncs, bytes_read, bytes_written, handed, fsync_errors


cdef struct slot_t:
    uint64_t fh
    table_t *t


cdef struct driver_t:
    pthread_rwlock_t lock   # the slots
    slot_t *slots
    int stopfd
    int nthreads
    int fds[MAX_THREADS]
    pthread_t threads[MAX_THREADS]
    int io_flusher_errno
    uint64_t served, handed, io_errors
    void *submit             # a Python callable (a borrowed reference kept alive by Driver)


cdef struct worker_t:
    driver_t *d
    int fd
    char *req
    char *data


# -- tables -------------------------------------------------------------------

cdef seg_t *find_seg(table_t *t, uint64_t off) noexcept nogil:
    cdef int lo = 0, hi = t.nseg - 1, mid
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if t.segs[mid].start <= off:
            lo = mid
        else:
            hi = mid - 1
    return &t.segs[lo]


cdef int piece(table_t *t, uint64_t off, uint64_t left, uint64_t *n, int *fd, int *dfd,
               uint64_t *at) noexcept nogil:
    """Where volume byte *off* lives: device byte *at* on *fd*/*dfd*, *n* bytes on from there."""
    cdef seg_t *s = find_seg(t, off)
    cdef uint64_t rel, k, within, row, column
    if off < s.start or off >= s.end:
        return -1
    rel = off - s.start
    if s.stripes == 1:
        n[0] = min(left, s.end - off)
        fd[0] = s.fd[0]
        dfd[0] = s.dfd[0]
        at[0] = s.base[0] + rel
        return 0
    k = rel // s.unit
    within = rel % s.unit
    row = k // <uint64_t> s.stripes
    column = k % <uint64_t> s.stripes
    n[0] = min(min(left, s.unit - within), s.end - off)
    fd[0] = s.fd[column]
    dfd[0] = s.dfd[column]
    at[0] = s.base[column] + row * s.unit + within
    return 0


cdef inline bint aligned(uint64_t a, uint64_t b, void *p) noexcept nogil:
    return ((a | b | <uintptr_t> p) & (ALIGN - 1)) == 0


cdef int do_read(table_t *t, char *data, uint64_t off, uint64_t length) noexcept nogil:
    cdef uint64_t done = 0, n, at
    cdef int fd, dfd, use
    cdef ssize_t got
    while done < length:
        if piece(t, off + done, length - done, &n, &fd, &dfd, &at):
            return -1
        use = dfd if dfd >= 0 and aligned(at, n, data + done) else fd
        while n:
            got = pread(use, data + done, n, at)
            if got <= 0:
                return -1
            done += got
            at += got
            n -= got
    return 0


cdef int do_write(table_t *t, const char *src, char *bounce, uint64_t off,
                  uint64_t length) noexcept nogil:
    cdef uint64_t done = 0, n, at
    cdef int fd, dfd
    cdef ssize_t put
    cdef const char *p
    while done < length:
        if piece(t, off + done, length - done, &n, &fd, &dfd, &at):
            return -1
        p = src + done
        if dfd >= 0 and aligned(at, n, NULL):  # through an aligned copy
            memcpy(bounce, p, n)
            p = bounce
            fd = dfd
        while n:
            put = pwrite(fd, p, n, at)
            if put <= 0:
                return -1
            done += put
            at += put
            p += put
            n -= put
    return 0


cdef int do_fsync(table_t *t) noexcept nogil:
    """fdatasync every descriptor; on success every write completed before the call is durable."""
    cdef int i
    cdef uint64_t target = atomic_load(&t.written)
    for i in range(t.nfds):
        if fdatasync(t.fds[i]):
            return -1
    atomic_max(&t.durable, target)
    return 0


cdef void free_table(table_t *t) noexcept nogil:
    cdef int i
    if t == NULL:
        return
    for i in range(t.nfds):
        close(t.fds[i])
    for i in range(t.nseg):
        free(t.segs[i].fd)
        free(t.segs[i].dfd)
        free(t.segs[i].base)
    free(t.segs)
    free(t.fds)
    pthread_rwlock_destroy(&t.lock)
    free(t)


cdef class Table:
    """One volume's resolved map for the native threads (levels 2-3), and its counters.

    *writable* False hands every write to Python (a read-only mount).
    *segments*: ``(start, end, stripes, unit, columns)`` in volume order
    covering ``[0, size)``, *columns* a list of ``(fd, direct_fd, base)``
    (``direct_fd`` -1 without one).  The descriptors are duplicated: the
    table owns its copies.  Raises ValueError for a map it cannot express
    (gaps, no segments) and OSError when a descriptor cannot be duplicated.
    """

    cdef table_t *t

    def __cinit__(self, uint64_t size, segments, bint native=True, bint writable=True):
        cdef table_t *t = <table_t *> calloc(1, sizeof(table_t))
        if t == NULL:
            raise MemoryError()
        pthread_rwlock_init(&t.lock, NULL)
        self.t = t
        t.size = size
        t.native = native
        t.writable = writable
        segments = list(segments)
        if not segments or segments[0][0] != 0 or segments[-1][1] < size:
            raise ValueError("a table must cover its volume from byte 0")
        t.segs = <seg_t *> calloc(len(segments), sizeof(seg_t))
        ncols = sum(len(s[4]) for s in segments)
        t.fds = <int *> calloc(2 * ncols + 1, sizeof(int))
        if t.segs == NULL or t.fds == NULL:
            raise MemoryError()
        dups = {}
        for i, (start, end, stripes, unit, columns) in enumerate(segments):
            if i and segments[i - 1][1] != start:
                raise ValueError(f"segment {i} does not continue segment {i - 1}")
            if stripes != len(columns) or (stripes > 1 and unit <= 0):
                raise ValueError(f"segment {i}: {stripes} stripes, {len(columns)} columns")
            t.nseg = i + 1
            t.segs[i].start = start
            t.segs[i].end = end
            t.segs[i].unit = unit
            t.segs[i].stripes = stripes
            t.segs[i].fd = <int *> calloc(stripes, sizeof(int))
            t.segs[i].dfd = <int *> calloc(stripes, sizeof(int))
            t.segs[i].base = <uint64_t *> calloc(stripes, sizeof(uint64_t))
            if t.segs[i].fd == NULL or t.segs[i].dfd == NULL or t.segs[i].base == NULL:
                raise MemoryError()
            for c, (fd, dfd, base) in enumerate(columns):
                t.segs[i].fd[c] = self._dup(dups, fd)
                t.segs[i].dfd[c] = self._dup(dups, dfd) if dfd >= 0 else -1
                t.segs[i].base[c] = base

    cdef int _dup(self, dict dups, int fd) except -1:
        cdef int new
        if fd in dups:
            return dups[fd]
        new = dup(fd)
        if new < 0:
            raise OSError(errno, f"cannot duplicate descriptor {fd}")
        self.t.fds[self.t.nfds] = new
        self.t.nfds += 1
        dups[fd] = new
        return new

    def __dealloc__(self):
        if self.t != NULL:
            with nogil:
                self._quiesce_and_sync()
            free_table(self.t)
            self.t = NULL

    cdef int _quiesce_and_sync(self) noexcept nogil:
        cdef int rc = 0
        pthread_rwlock_wrlock(&self.t.lock)
        if atomic_load(&self.t.durable) < atomic_load(&self.t.written):
            rc = do_fsync(self.t)
        pthread_rwlock_unlock(&self.t.lock)
        return rc

    def retire(self):
        """Hand every later request to Python; return once none is served natively.

        Waits for the requests in flight (the write lock) and fdatasyncs
        the devices if the table wrote since its last fsync.  Raises
        OSError if that flush fails.  Blocks: call it in a worker thread.
        """
        cdef int rc
        with nogil:
            pthread_rwlock_wrlock(&self.t.lock)
            self.t.native = 0
            self.t.retired = 1
            pthread_rwlock_unlock(&self.t.lock)
            rc = self._quiesce_and_sync()
        if rc:
            raise OSError(errno, "flushing the devices of a retired table failed")

    @property
    def native(self):
        return bool(self.t.native)

    def statistics(self):
        t = self.t
        return {"native_reads": t.reads, "native_writes": t.writes,
                "native_fsyncs": t.fsyncs, "native_bytes_read": t.bytes_read,
                "native_bytes_written": t.bytes_written, "handed_to_python": t.handed,
                "native_fsync_errors": t.fsync_errors}


# -- the threads --------------------------------------------------------------

cdef table_t *take(driver_t *d, uint64_t fh) noexcept nogil:
    """The table of file handle *fh*, read-locked; NULL if none or not native."""
    cdef slot_t *s
    cdef table_t *t = NULL
    pthread_rwlock_rdlock(&d.lock)
    s = &d.slots[fh % SLOTS]
    if s.fh == fh and s.t != NULL:
        t = s.t
        pthread_rwlock_rdlock(&t.lock)
        if not t.native:
            pthread_rwlock_unlock(&t.lock)
            atomic_add(&t.handed, 1)
            t = NULL
    pthread_rwlock_unlock(&d.lock)
    return t


cdef int reply(int fd, uint64_t unique, int error, void *body, size_t n) noexcept nogil:
    cdef fuse_out_header h
    cdef iovec iov[2]
    h.len = sizeof(fuse_out_header) + n
    h.error = error
    h.unique = unique
    iov[0].iov_base = &h
    iov[0].iov_len = sizeof(fuse_out_header)
    iov[1].iov_base = body
    iov[1].iov_len = n
    return 0 if writev(fd, iov, 2 if n else 1) >= 0 else -1


cdef int serve_io(worker_t *w, fuse_in_header *h, ssize_t got) noexcept nogil:
    """Serve one I/O request natively; 0 when answered, -1 to hand it to Python."""
    cdef driver_t *d = w.d
    cdef table_t *t
    cdef fuse_read_in *rin = NULL
    cdef fuse_write_in *win = NULL
    cdef fuse_write_out wout
    cdef uint64_t fh, off, n
    cdef int rc = -1
    cdef char *body = w.req + sizeof(fuse_in_header)
    if h.opcode == FUSE_READ:
        rin = <fuse_read_in *> body
        fh = rin.fh
    elif h.opcode == FUSE_WRITE:
        win = <fuse_write_in *> body
        fh = win.fh
    elif h.opcode == FUSE_FSYNC:
        fh = (<fuse_fsync_in *> body).fh
    else:
        fh = (<fuse_flush_in *> body).fh
    t = take(d, fh)
    if t == NULL:
        return -1
    if h.opcode == FUSE_READ:
        off = rin.offset
        n = 0 if off >= t.size else min(<uint64_t> rin.size, t.size - off)
        if n <= DATA_BUF and do_read(t, w.data, off, n) == 0:
            rc = reply(w.fd, h.unique, 0, w.data, n)
            atomic_add(&t.reads, 1)
            atomic_add(&t.bytes_read, n)
    elif h.opcode == FUSE_WRITE:
        off = win.offset
        n = win.size
        if (t.writable and off < t.size and n <= DATA_BUF
                and sizeof(fuse_in_header) + sizeof(fuse_write_in) + n <= <uint64_t> got):
            n = min(n, t.size - off)
            if do_write(t, body + sizeof(fuse_write_in), w.data, off, n) == 0:
                atomic_add(&t.written, 1)
                wout.size = <uint32_t> n
                wout.padding = 0
                rc = reply(w.fd, h.unique, 0, &wout, sizeof(wout))
                atomic_add(&t.writes, 1)
                atomic_add(&t.bytes_written, n)
    elif h.opcode == FUSE_FSYNC:
        # answered here either way: after a failed fdatasync the Python path
        # could not know that native writes are not durable (a flush it
        # thinks it need not do would say yes)
        if do_fsync(t) == 0:
            rc = reply(w.fd, h.unique, 0, NULL, 0)
            atomic_add(&t.fsyncs, 1)
        else:
            atomic_add(&t.fsync_errors, 1)
            atomic_add(&d.io_errors, 1)
            rc = reply(w.fd, h.unique, -5, NULL, 0)  # -EIO
    else:  # FLUSH: writes are on the devices already (as VolumeFS.flush)
        rc = reply(w.fd, h.unique, 0, NULL, 0)
    if rc:
        atomic_add(&t.handed, 1)
    pthread_rwlock_unlock(&t.lock)
    return rc


cdef void hand_up(worker_t *w, ssize_t got) noexcept nogil:
    with gil:
        try:
            (<object> w.d.submit)(w.fd, w.req[:got])
        except BaseException as exc:  # the engine logs; the request must not vanish
            import logging
            logging.getLogger("vvfs.driver").error("cannot hand a request to Python: %r", exc)
            reply(w.fd, (<fuse_in_header *> w.req).unique, -5, NULL, 0)


cdef void *worker(void *arg) noexcept nogil:
    cdef worker_t *w = <worker_t *> arg
    cdef driver_t *d = w.d
    cdef pollfd fds[2]
    cdef ssize_t got
    cdef fuse_in_header *h
    if prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0):
        d.io_flusher_errno = errno
    while True:
        fds[0].fd = w.fd
        fds[0].events = POLLIN
        fds[1].fd = d.stopfd
        fds[1].events = POLLIN
        if poll(fds, 2, -1) < 0:
            if errno == EINTR:
                continue
            break
        if fds[1].revents:
            break
        got = read(w.fd, w.req, REQ_BUF)
        if got < 0:
            if errno == EINTR or errno == EAGAIN or errno == ENOENT:
                continue
            break  # ENODEV: unmounted
        if got < <ssize_t> sizeof(fuse_in_header):
            continue
        h = <fuse_in_header *> w.req
        if (h.opcode == FUSE_READ or h.opcode == FUSE_WRITE or h.opcode == FUSE_FSYNC
                or h.opcode == FUSE_FLUSH) and serve_io(w, h, got) == 0:
            atomic_add(&d.served, 1)
            continue
        atomic_add(&d.handed, 1)
        hand_up(w, got)
    return NULL


cdef class Driver:
    """N threads serving one FUSE session from its clones (see the module docstring).

    *submit(fd, request_bytes)* is called, with the GIL, from a driver
    thread for every request served in Python; it must not block.
    """

    cdef driver_t *d
    cdef object submit
    cdef worker_t *workers
    cdef int started
    cdef dict tables

    def __cinit__(self, int session_fd, int threads, submit):
        if not 0 < threads <= MAX_THREADS:
            raise ValueError(f"driver threads must be 1 to {MAX_THREADS}, not {threads}")
        self.d = <driver_t *> calloc(1, sizeof(driver_t))
        self.workers = <worker_t *> calloc(threads, sizeof(worker_t))
        if self.d == NULL or self.workers == NULL:
            raise MemoryError()
        self.d.slots = <slot_t *> calloc(SLOTS, sizeof(slot_t))
        if self.d.slots == NULL:
            raise MemoryError()
        pthread_rwlock_init(&self.d.lock, NULL)
        self.submit = submit
        self.tables = {}
        self.d.submit = <void *> submit
        self.d.stopfd = eventfd(0, EFD_CLOEXEC)
        if self.d.stopfd < 0:
            raise OSError(errno, "eventfd failed")
        for i in range(threads):
            fd = c_open(b"/dev/fuse", O_RDWR | O_CLOEXEC)
            if fd < 0:
                raise OSError(errno, "cannot open /dev/fuse")
            self.d.fds[i] = fd
            self.d.nthreads = i + 1
            if ioctl(fd, FUSE_DEV_IOC_CLONE, &session_fd) < 0:
                raise OSError(errno, f"FUSE_DEV_IOC_CLONE of descriptor {session_fd} failed")
            self.workers[i].d = self.d
            self.workers[i].fd = fd
            if (posix_memalign(<void **> &self.workers[i].req, ALIGN, REQ_BUF)
                    or posix_memalign(<void **> &self.workers[i].data, ALIGN, DATA_BUF)):
                raise MemoryError()

    def start(self):
        """Start the threads (once)."""
        if self.started:
            raise RuntimeError("the driver has started already")
        for i in range(self.d.nthreads):
            if pthread_create(&self.d.threads[i], NULL, worker, &self.workers[i]):
                raise OSError(errno, "pthread_create failed")
            self.started = i + 1

    def stop(self):
        """Ask every thread to end after the request it is serving."""
        cdef uint64_t one = 1
        write(self.d.stopfd, &one, 8)

    def join(self):
        """Wait for every thread to end (after stop(), or once unmounted). Blocks."""
        cdef int i
        with nogil:
            for i in range(self.started):
                pthread_join(self.d.threads[i], NULL)
        self.started = 0

    def register(self, uint64_t fh, Table table):
        """Serve file handle *fh* from *table* (False: its slot is taken; Python serves it)."""
        cdef slot_t *s
        cdef bint ok
        with nogil:
            pthread_rwlock_wrlock(&self.d.lock)
            s = &self.d.slots[fh % SLOTS]
            ok = s.t == NULL or s.fh == fh
            if ok:
                s.fh = fh
                s.t = table.t
            pthread_rwlock_unlock(&self.d.lock)
        if ok:
            self.tables[fh] = table  # the threads hold its pointer: keep it alive
        return ok

    def unregister(self, uint64_t fh):
        """Stop serving *fh*; return once no thread can find its table any more."""
        cdef slot_t *s
        with nogil:
            pthread_rwlock_wrlock(&self.d.lock)
            s = &self.d.slots[fh % SLOTS]
            if s.fh == fh:
                s.t = NULL
                s.fh = 0
            pthread_rwlock_unlock(&self.d.lock)
        self.tables.pop(fh, None)

    @property
    def fds(self):
        return [self.d.fds[i] for i in range(self.d.nthreads)]

    def statistics(self):
        return {"threads": self.d.nthreads, "served_natively": self.d.served,
                "handed_to_python": self.d.handed, "io_errors": self.d.io_errors,
                "io_flusher_errno": self.d.io_flusher_errno}

    def close(self):
        """Close the clones and free the buffers (after join())."""
        if self.started:
            raise RuntimeError("close() before join()")
        for i in range(self.d.nthreads):
            if self.d.fds[i] >= 0:
                close(self.d.fds[i])
                self.d.fds[i] = -1
            free(self.workers[i].req)
            free(self.workers[i].data)
            self.workers[i].req = self.workers[i].data = NULL
        if self.d.stopfd >= 0:
            close(self.d.stopfd)
            self.d.stopfd = -1

    def __dealloc__(self):
        if self.d != NULL and not self.started:
            self.close()
            free(self.d.slots)
            pthread_rwlock_destroy(&self.d.lock)
            free(self.d)
            free(self.workers)
            self.d = NULL
