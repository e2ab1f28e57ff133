# vvfs — two commands for a fresh Debian machine:
#   make demo   set everything up and run the main job (see README.md)
#   make test   set everything up and run the test suite
# Everything else here is what those two stand on.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= $(CURDIR)/demo

# Debian packages the product, the demo and the tests use (program -> package).
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config fio e2fsprogs xfsprogs btrfs-progs \
                gdisk fdisk util-linux mdadm lvm2 kmod groff-base python3-venv postgresql-15 \
                gcc python3-dev patch
# (the tests start a PostgreSQL server of their own for the shared catalog:
# initdb and pg_ctl, which Debian keeps off $PATH)
DEB_PROGRAMS := fusermount3:fuse3 pkg-config:pkg-config fio:fio mkfs.ext4:e2fsprogs \
                mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs sgdisk:gdisk sfdisk:fdisk wipefs:util-linux mdadm:mdadm groff:groff-base \
                pvcreate:lvm2 /usr/lib/postgresql/15/bin/initdb:postgresql-15 \
                gcc:gcc patch:patch

.PHONY: all deps venv pyfuse3 native mount-helper test test-fast demo demo-stop bench lint clean

all: venv
	@$(MAKE) --no-print-directory mount-helper

deps:
	@missing=""; \
	for pair in $(DEB_PROGRAMS); do \
	  prog=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$prog >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	pkg-config --exists fuse3 2>/dev/null || missing="$$missing libfuse3-dev"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; os.stat(sysconfig.get_paths()["include"] + "/Python.h")' \
	  2>/dev/null || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# pyfuse3 with a fallocate handler and get_session_fd() (tools/patches/pyfuse3.patch):
# the release has none, and without it a loop device over a volume file can
# neither discard nor write zeroes.  Built from the release's sdist, patched.
PYFUSE3_VERSION := 3.5.0
PYFUSE3_PATCH := tools/patches/pyfuse3.patch
PYFUSE3_STAMP := $(VENV)/.pyfuse3-patched
PYFUSE3_BUILD := build/pyfuse3

# The project goes in first (it brings trio, which importing pyfuse3 needs, and
# the stock pyfuse3); the patched build then replaces pyfuse3 alone.
$(STAMP): setup.cfg pyproject.toml | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

$(PYFUSE3_STAMP): $(PYFUSE3_PATCH) $(STAMP)
	rm -rf $(PYFUSE3_BUILD) && mkdir -p $(PYFUSE3_BUILD)
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(PYFUSE3_BUILD) \
	  pyfuse3==$(PYFUSE3_VERSION)
	tar -xzf $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3_VERSION).tar.gz -C $(PYFUSE3_BUILD)
	patch -s -p1 -d $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3_VERSION) < $(PYFUSE3_PATCH)
	$(PY) -m pip install -q --force-reinstall --no-deps $(PYFUSE3_BUILD)/pyfuse3-$(PYFUSE3_VERSION)
	$(PY) -c 'import pyfuse3; assert hasattr(pyfuse3.Operations, "fallocate") and hasattr(pyfuse3, "get_session_fd")'
	touch $@

pyfuse3: $(PYFUSE3_STAMP)

# The native driver (vvfs/driver/_native.pyx), built in place so that the
# editable install imports it; rebuilt when its source changes.  Without a
# compiler the node serves everything in Python (and says so in its log).
NATIVE_STAMP := $(VENV)/.native-driver

$(NATIVE_STAMP): vvfs/driver/_native.pyx setup.py $(STAMP)
	$(PY) -c 'import Cython' 2>/dev/null || $(PY) -m pip install -q 'Cython>=3.0'
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c 'from vvfs.driver import _native'
	touch $@

native: $(NATIVE_STAMP)

venv: deps $(STAMP) $(PYFUSE3_STAMP) $(NATIVE_STAMP)

# `mount -t fuse.vvfs` and fstab lines: mount(8) runs SBINDIR/mount.fuse.vvfs
# and looks in no other directory; without it, mount.fuse3 runs a program
# "vvfs" from its default PATH, where .venv/bin is not.  So a venv install
# needs this link (a system-wide pip install puts "vvfs" on that PATH).
# A file there that is not a vvfs link is left alone.
SBINDIR ?= /sbin
MOUNT_HELPER := $(SBINDIR)/mount.fuse.vvfs
MOUNT_HELPER_TARGET ?= $(CURDIR)/$(VENV)/bin/mount.fuse.vvfs

mount-helper:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make mount-helper: run as root to link $(MOUNT_HELPER)" >&2; exit 0; fi; \
	test -x "$(MOUNT_HELPER_TARGET)" || { \
	  echo "make mount-helper: $(MOUNT_HELPER_TARGET) missing (run make first)" >&2; exit 1; }; \
	if [ -e "$(MOUNT_HELPER)" ] || [ -L "$(MOUNT_HELPER)" ]; then \
	  case "$$(readlink "$(MOUNT_HELPER)")" in \
	    */mount.fuse.vvfs|*/mount.vvfs) ;; \
	    *) echo "make mount-helper: $(MOUNT_HELPER) is not a vvfs link; not touching it" >&2; \
	       exit 1;; \
	  esac; \
	fi; \
	ln -sfn "$(MOUNT_HELPER_TARGET)" "$(MOUNT_HELPER)"; \
	echo "linked $(MOUNT_HELPER) -> $(MOUNT_HELPER_TARGET)"

# The lint runs first: a broken layer contract or a type error fails `make test`.
test: venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/pytest -q -m 'not slow' $(PYTEST_ARGS)

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH DEMO_DIR=$(DEMO_DIR) bash tools/demo.sh start

demo-stop:
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH DEMO_DIR=$(DEMO_DIR) bash tools/demo.sh stop

# The peers the benchmark runs beside vvfs (program:Debian package); Debian 12
# ships qemu-storage-daemon in qemu-system-common.
BENCH_PROGRAMS := qemu-storage-daemon:qemu-system-common nbdkit:nbdkit nbdfuse:libnbd-bin

bench: venv
	@missing=""; \
	for pair in $(BENCH_PROGRAMS); do \
	  prog=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$prog >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make bench: run as root to install$$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PY) -c 'import matplotlib' 2>/dev/null && test -x $(VENV)/bin/py-spy || \
	  $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

# ruff on everything, mypy on the product packages (pyproject.toml), and the
# import contracts of the rooms (setup.cfg [importlinter], docs/architecture.md).
lint: venv
	$(VENV)/bin/ruff check metadata mapper vvfs vvfsck tools tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(PYFUSE3_BUILD) *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache .import_linter_cache build vvfs/driver/_native.c vvfs/driver/*.so
