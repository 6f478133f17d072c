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
# Swift itself is expected at /opt/swift or on PATH; this script does not install it.
set -euo pipefail

packages=(libaio-dev e2fsprogs fio util-linux mount systemd groff-base)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "setup.sh: need root to install: ${missing[*]}" >&2
        exit 1
    fi
else
    sudo=()
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup.sh: installing ${missing[*]}" >&2
# One `apt-get update` per run, and only because something is missing. If the lists are fresh
# enough the install works on the first try; otherwise update once and retry.
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -qq >/dev/null
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
