#!/usr/bin/env bash
# The vvfs demo: `make demo` runs `demo.sh start`, `make demo-stop` runs `demo.sh stop`.
#
# start: a pool on three sparse files, a mirrored and a striped volume, the pool
#        mounted, the striped volume loop-attached with ext4 on it and a file
#        written there; then `vv status` and how to stop.
# stop:  undoes exactly what start made (recorded in $DEMO_DIR/made), in reverse.
set -euo pipefail

DEMO_DIR=${DEMO_DIR:-$PWD/demo}
export VVFS_STATE_DIR="$DEMO_DIR/state"
MNT="$DEMO_DIR/mnt"
FS="$DEMO_DIR/ext4"
MADE="$DEMO_DIR/made"

say() { printf '\n== %s\n' "$*"; }
record() { echo "$*" >> "$MADE"; }

stop() {
    [ -f "$MADE" ] || { echo "demo: nothing to stop in $DEMO_DIR"; return 0; }
    tac "$MADE" | while read -r kind what; do
        case "$kind" in
            fsmount) mountpoint -q "$what" && umount "$what" && echo "unmounted $what" ;;
            loop)    losetup "$what" >/dev/null 2>&1 && losetup -d "$what" && echo "detached $what" ;;
            vvmount) mountpoint -q "$what" && vv umount "$what" && echo "stopped the node on $what" ;;
        esac
    done
    rm -rf "$DEMO_DIR"
    echo "demo: removed $DEMO_DIR"
}

start() {
    if [ -f "$MADE" ]; then
        echo "demo: already running in $DEMO_DIR (make demo-stop first)" >&2
        exit 1
    fi
    [ "$(id -u)" = 0 ] || { echo "demo: needs root (FUSE allow_other, losetup, mount)" >&2; exit 1; }
    mkdir -p "$DEMO_DIR" "$MNT" "$FS"
    : > "$MADE"
    trap 'echo "demo: failed; undoing" >&2; stop' ERR

    say "three sparse 2 GiB backing files"
    for i in 0 1 2; do truncate -s 2G "$DEMO_DIR/disk$i.img"; done
    ls -ls "$DEMO_DIR"/disk*.img

    say "a pool on them"
    vv pool create demo "$DEMO_DIR"/disk0.img "$DEMO_DIR"/disk1.img "$DEMO_DIR"/disk2.img

    say "a mirrored and a striped volume"
    vv volume create demo/mirror --size 512M --mirrors 2
    vv volume create demo/stripe --size 768M --stripes 3 --stripe-size 64K
    vv volume list demo

    say "the pool mounted at $MNT"
    vv mount demo "$MNT"
    record vvmount "$MNT"
    ls -l "$MNT/demo"

    say "the striped volume loop-attached, with ext4 on it"
    loop=$(losetup --direct-io=on -f --show "$MNT/demo/stripe")
    record loop "$loop"
    echo "loop device: $loop"
    mkfs.ext4 -q -F "$loop"
    mount "$loop" "$FS"
    record fsmount "$FS"
    echo "hello from vvfs, $(date -u)" > "$FS/hello.txt"
    sync
    df -h "$FS"
    cat "$FS/hello.txt"

    say "status"
    vv status

    trap - ERR
    cat <<EOF

The demo is running:
  $MNT/demo/mirror   a 2-way mirrored volume (a plain file: read it, write it)
  $MNT/demo/stripe   a 3-way striped volume, attached as $loop, ext4 mounted on $FS
Try:  VVFS_STATE_DIR=$VVFS_STATE_DIR $(command -v vv) volume show demo/stripe
Stop: make demo-stop
EOF
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
