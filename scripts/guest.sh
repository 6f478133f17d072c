#!/bin/bash
# guest.sh: a tiny Linux guest for exercising a vhost-user-blk backend with a real virtio driver.
#
#   scripts/guest.sh build                 build (once) and print the cached kernel and initramfs
#   scripts/guest.sh run SOCK [SCRIPT]     boot QEMU against the vhost-user-blk socket SOCK; the
#                                          guest runs SCRIPT (default: mkfs + fsync'd write +
#                                          checksum) and powers off; exit status is the guest's
#
# Nothing lands in git: the kernel and initramfs are cached in $TAPDISK_GUEST_DIR
# (default /var/cache/tapdisk-guest). The kernel comes from Debian's linux-image-cloud-amd64
# dependency, downloaded and extracted with dpkg -x (never installed). The initramfs holds
# busybox-static, mke2fs/e2fsck with the libraries ldd lists, and the virtio modules the cloud
# kernel builds as modules. A per-run script is appended as a second cpio archive (the kernel
# unpacks concatenated newc archives in order), so the cached base image never changes.
#
# QEMU is killed with SIGKILL after $TAPDISK_GUEST_TIMEOUT seconds: a callers' blocked SIGTERM
# (signal masks survive exec) must not keep it alive, and an abrupt kill is the point of a short
# timeout (tests use one to disconnect a guest in the middle of its I/O).
#
# $TAPDISK_GUEST_CHARDEV is appended to the vhost-user -chardev options: ",reconnect=1" makes
# QEMU (7.2; "reconnect-ms=1000" on 9.2+) reconnect to a back-end that died or restarted.
#
# $TAPDISK_GUEST_FILES (space-separated paths) are copied next to the script into the guest's
# root, e.g. a static binary the script runs. $TAPDISK_GUEST_DISK replaces the vhost-user-blk
# -chardev/-device pair with other QEMU options (SOCK is then unused), e.g. an NBD disk:
#   "-blockdev driver=nbd,node-name=d,server.type=unix,server.path=P,reconnect-delay=5
#    -device virtio-blk-pci,drive=d"
#
# The guest prints TAPDISK-GUEST-BEGIN / TAPDISK-GUEST-END rc=N markers on ttyS0; `run`
# scans them to produce its exit status, and also fails when the markers are missing.
set -euo pipefail

DIR=${TAPDISK_GUEST_DIR:-/var/cache/tapdisk-guest}
MEM=${TAPDISK_GUEST_MEM:-512}
TIMEOUT=${TAPDISK_GUEST_TIMEOUT:-300}

need_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    [ -x /bin/busybox ] && /bin/busybox --list | grep -qx ash || missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v mke2fs >/dev/null || missing+=(e2fsprogs)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # busybox (the dynamic one) may shadow busybox-static's binary name; insist on a static one.
    if ldd /bin/busybox >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
    fi
}

build_kernel() {
    [ -s "$DIR/vmlinuz" ] && [ -d "$DIR/modules" ] && return 0
    local work pkg
    work=$(mktemp -d)
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "guest.sh: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
    (cd "$work" && apt-get download "$pkg" >/dev/null)
    dpkg -x "$work"/"$pkg"_*.deb "$work/x"
    cp "$work"/x/boot/vmlinuz-* "$DIR/vmlinuz"
    rm -rf "$DIR/modules"
    mkdir -p "$DIR/modules"
    # Order matters: each module's symbols must already be present. Missing ones are builtin.
    local m path
    : >"$DIR/modules/order"
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
        path=$(find "$work/x/lib/modules" -name "$m.ko*" | head -1)
        if [ -z "$path" ]; then
            echo "guest.sh: $m not a module (builtin?)" >&2
            continue
        fi
        case "$path" in
        *.xz) xz -dc "$path" >"$DIR/modules/$m.ko" ;;
        *.zst) zstd -qdc "$path" >"$DIR/modules/$m.ko" ;;
        *) cp "$path" "$DIR/modules/$m.ko" ;;
        esac
        echo "$m" >>"$DIR/modules/order"
    done
    echo "$pkg" >"$DIR/kernel-package"
    rm -rf "$work"
}

copy_with_libs() {  # copy_with_libs ROOT BINARY...
    local root=$1 bin lib
    shift
    for bin in "$@"; do
        install -D "$bin" "$root$bin"
        for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*'); do
            [ -e "$root$lib" ] || install -D "$lib" "$root$lib"
        done
    done
}

build_initrd() {
    [ -s "$DIR/initrd.cpio" ] && return 0
    local root
    root=$(mktemp -d)
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules,etc}
    cp /bin/busybox "$root/bin/busybox"
    copy_with_libs "$root" /sbin/mke2fs /sbin/e2fsck
    ln -sf mke2fs "$root/sbin/mkfs.ext4"
    cp "$DIR"/modules/*.ko "$DIR/modules/order" "$root/lib/modules/"
    cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
    cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "TAPDISK-GUEST-BEGIN uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ ! -b /dev/vda ]; then
    echo "TAPDISK-GUEST-END rc=98 (no /dev/vda)"
elif [ -x /guest-script.sh ]; then
    /guest-script.sh
    echo "TAPDISK-GUEST-END rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
else
    echo "TAPDISK-GUEST-END rc=99 (no /guest-script.sh)"
fi
sync
poweroff -f
EOF
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet) >"$DIR/initrd.cpio"
    rm -rf "$root"
}

default_script() {
    cat <<'EOF'
#!/bin/sh
set -e
cat /sys/block/vda/size /sys/block/vda/queue/logical_block_size
echo "serial=$(cat /sys/block/vda/serial 2>/dev/null)"
mkfs.ext4 -q -F /dev/vda
mount -t ext4 /dev/vda /mnt
dd if=/dev/urandom of=/mnt/data bs=64k count=64 conv=fsync 2>/dev/null
sum1=$(md5sum /mnt/data | cut -d' ' -f1)
umount /mnt
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/vda /mnt
sum2=$(md5sum /mnt/data | cut -d' ' -f1)
umount /mnt
e2fsck -fn /dev/vda >/dev/null
echo "checksum written=$sum1 reread=$sum2"
[ "$sum1" = "$sum2" ]
EOF
}

build() {
    mkdir -p "$DIR"
    need_packages
    build_kernel
    build_initrd
    echo "kernel=$DIR/vmlinuz initrd=$DIR/initrd.cpio ($(cat "$DIR/kernel-package"))"
}

run() {
    local sock=$1 script=${2:-} work initrd log rc start end
    build >/dev/null
    work=$(mktemp -d)
    mkdir -p "$work/root"
    if [ -n "$script" ]; then cp "$script" "$work/root/guest-script.sh"; else default_script >"$work/root/guest-script.sh"; fi
    chmod +x "$work/root/guest-script.sh"
    initrd="$work/initrd"
    cp "$DIR/initrd.cpio" "$initrd"
    local extra f
    for f in ${TAPDISK_GUEST_FILES:-}; do cp "$f" "$work/root/"; done
    extra=$(cd "$work/root" && ls)
    (cd "$work/root" && echo "$extra" | cpio -o -H newc --quiet) >>"$initrd"
    log="$work/console.log"
    start=$(date +%s.%N)
    local disk=(-chardev "socket,id=c,path=$sock${TAPDISK_GUEST_CHARDEV:-}" -device vhost-user-blk-pci,chardev=c)
    # shellcheck disable=SC2206 # word splitting is the point: QEMU options, no spaces inside
    if [ -n "${TAPDISK_GUEST_DISK:-}" ]; then disk=(${TAPDISK_GUEST_DISK}); fi
    set +e
    # no_timer_check: on a starved host, TCG's timer can miss the kernel's IO-APIC timer check,
    # and the guest panics at 0.06 s ("IO-APIC + timer doesn't work!"); seen under TSan.
    timeout -s KILL "$TIMEOUT" qemu-system-x86_64 -accel tcg -smp 1 -m "$MEM" \
        -object memory-backend-memfd,id=mem,size="${MEM}M",share=on -numa node,memdev=mem \
        ${disk[@]+"${disk[@]}"} \
        -kernel "$DIR/vmlinuz" -initrd "$initrd" -append 'console=ttyS0 panic=-1 quiet no_timer_check' \
        -nographic -no-reboot </dev/null 2>&1 | tr -d '\r' | tee "$log"
    set -e
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "guest.sh: wall time %.1f s\n", e - s }'
    rc=$(sed -n 's/^TAPDISK-GUEST-END rc=\([0-9]*\).*/\1/p' "$log" | tail -1)
    rm -rf "$work"
    [ -n "$rc" ] || { echo "guest.sh: no end marker (guest crashed or timed out)" >&2; return 97; }
    return "$rc"
}

case "${1:-}" in
build) build ;;
run)
    [ $# -ge 2 ] || { echo "usage: $0 run SOCK [SCRIPT]" >&2; exit 2; }
    run "$2" "${3:-}"
    ;;
*)
    echo "usage: $0 build | run SOCK [SCRIPT]" >&2
    exit 2
    ;;
esac
