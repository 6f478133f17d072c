# Sourced by the scripts: Swift from /opt/swift when it is not on PATH, and the sbin folders
# (mkfs.ext4, losetup) that some CI runners leave out of PATH.
if [[ -d /opt/swift/usr/bin && ":$PATH:" != *":/opt/swift/usr/bin:"* ]]; then
    PATH="/opt/swift/usr/bin:$PATH"
fi
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PATH
