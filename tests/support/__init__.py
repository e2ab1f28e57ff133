"""Helpers shared by the test tiers (fixtures are in tests/conftest.py).

- :mod:`.mountutil`: pools on sparse files, real nodes and mounts, loop devices, fio
- :mod:`.fsck_support`: small Manager-made pools, the vvfsck CLI in-process, crash images
- :mod:`.faultfs`: a fault-injecting FUSE file system (``python -m tests.support.faultfs``)
- :mod:`.util`: sparse files and a device that crashes after a write budget
"""
