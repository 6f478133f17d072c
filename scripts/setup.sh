#!/usr/bin/env bash
# Installs what building and testing tapdiskd needs on Debian 12, and nothing that is already
# there. Idempotent and quiet: a second run makes no network access and prints nothing.
#
#   libaio-dev   libaio headers and library (CLibAIO links -laio)
#   e2fsprogs    mkfs.ext4 for the loop-mounted test filesystems
#   fio          benchmarks
#   util-linux   findmnt
#   mount        mount, umount, losetup
#   systemd      systemd-analyze (unit verification and the security score test)
#   groff-base   groff (the man page must format without warnings: ManPageTests)
#
# and, for the tests and the demo act that boot a Linux guest under QEMU (scripts/guest.sh):
#
#   qemu-system-x86  qemu-system-x86_64 (vhost-user-blk-pci) and qemu-storage-daemon (the
#                    reference backend of scripts/compare-qsd.sh)
#   busybox-static   the guest's userland (its initramfs must not need shared libraries)
#   cpio             packs the guest's initramfs
#
# Those three are optional: when they cannot be installed this script says so and succeeds,
# and the QEMU suites and the demo's VM act are skipped with that reason. So is, for the test in
# which a real Prometheus scrapes tapdisk-exporter (ExporterPrometheusTests):
#
#   prometheus   prometheus and promtool (Debian's package may also start its own service on
#                :9090; the tests neither use nor stop it)
#
# and, for the NBD suites (Tests/TapDiskTests/NBD), which drive the NBD front with real clients:
#
#   qemu-utils      qemu-img, qemu-io, qemu-nbd (qemu-nbd is the reference server)
#   libnbd-bin      nbdinfo, nbdcopy, nbdsh
#   python3-libnbd  the randomized model test's client (scripts/nbd-model.py)
#   nbdkit          the second reference server of the NBD benchmarks
#
# also optional: each NBD test that lacks its tool is skipped and names the package.
# Swift itself is expected at /opt/swift or on PATH; this script does not install it.
set -euo pipefail

packages=(libaio-dev e2fsprogs fio util-linux mount systemd groff-base)
guest_packages=(qemu-system-x86 busybox-static cpio)
metrics_packages=(prometheus)
nbd_packages=(qemu-utils libnbd-bin python3-libnbd nbdkit)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
missing_guest=()
for p in "${guest_packages[@]}"; do
    installed "$p" || missing_guest+=("$p")
done

missing_metrics=()
for p in "${metrics_packages[@]}"; do
    installed "$p" || missing_metrics+=("$p")
done

missing_nbd=()
for p in "${nbd_packages[@]}"; do
    installed "$p" || missing_nbd+=("$p")
done

if ((${#missing[@]} == 0 && ${#missing_guest[@]} == 0 && ${#missing_metrics[@]} == 0 && ${#missing_nbd[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        if ((${#missing[@]} == 0)); then
            echo "setup.sh: not root, so not installing ${missing_guest[*]} ${missing_metrics[*]} ${missing_nbd[*]}: the QEMU tests, the demo's VM acts, the Prometheus test and the NBD client tests will be skipped" >&2
            exit 0
        fi
        echo "setup.sh: need root to install: ${missing[*]} ${missing_guest[*]} ${missing_metrics[*]} ${missing_nbd[*]}" >&2
        exit 1
    fi
else
    sudo=()
fi

export DEBIAN_FRONTEND=noninteractive
updated=no
# One `apt-get update` per run, and only because something is missing. If the lists are fresh
# enough the install works on the first try; otherwise update once and retry.
install() {
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; then
        if [[ $updated == no ]]; then
            updated=yes
            "${sudo[@]}" apt-get update -qq >/dev/null || true
        fi
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}

if ((${#missing[@]} > 0)); then
    echo "setup.sh: installing ${missing[*]}" >&2
    install "${missing[@]}"
fi
if ((${#missing_guest[@]} > 0)); then
    echo "setup.sh: installing ${missing_guest[*]}" >&2
    if ! install "${missing_guest[@]}"; then
        echo "setup.sh: could not install ${missing_guest[*]}: the QEMU tests and the demo's VM act will be skipped" >&2
    fi
fi
if ((${#missing_metrics[@]} > 0)); then
    echo "setup.sh: installing ${missing_metrics[*]}" >&2
    if ! install "${missing_metrics[@]}"; then
        echo "setup.sh: could not install ${missing_metrics[*]}: the Prometheus test will be skipped" >&2
    fi
fi
if ((${#missing_nbd[@]} > 0)); then
    echo "setup.sh: installing ${missing_nbd[*]}" >&2
    if ! install "${missing_nbd[@]}"; then
        echo "setup.sh: could not install ${missing_nbd[*]}: the NBD client tests that need them will be skipped" >&2
    fi
fi
