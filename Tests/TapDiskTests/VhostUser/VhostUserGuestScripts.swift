/// The guest side of `VhostUserGuestScenarioTests`: busybox-ash scripts run by
/// `scripts/guest.sh run` inside the guest, with /dev/vda served by the daemon under test.
///
/// Each prints machine-readable lines (`SUM`, `OK`, `FAIL`, `PHASE`, ...) on the console, one
/// `echo` each, that `GuestConsole` parses on the host; kernel messages are kept off the console
/// (`dmesg -n 1`) so they cannot interleave with them, and a scenario prints what it needs from
/// the kernel log itself.
enum VhostUserGuestScripts {
    /// Shared by every script. Busybox's own `mke2fs` applet shadows e2fsprogs' in PATH, hence
    /// /sbin. mkfs writes as little as it can — no inode-table or journal zeroing, no discard,
    /// 1024 inodes, a 4 MiB journal — so it fits on a nearly full host filesystem and the disk's
    /// space goes to the files the scenario counts; `noinit_itable` keeps the kernel from zeroing
    /// the lazy inode tables behind the scenario's back.
    static let prelude = """
        #!/bin/sh
        dmesg -n 1
        mkfs_small() {
            /sbin/mke2fs -t ext4 -q -F -b 4096 -N 1024 -J size=4 \\
                -E lazy_itable_init=1,lazy_journal_init=1,nodiscard /dev/vda
        }
        mount_vda() { mount -t ext4 -o noinit_itable /dev/vda /mnt; }
        record_sums() { (cd /mnt && md5sum f* >/tmp/sums); }
        # Every file read back from the disk, not the page cache, then an fsck: non-zero if not.
        remount_and_check() {
            umount /mnt && echo 3 >/proc/sys/vm/drop_caches && mount_vda &&
                (cd /mnt && md5sum -c /tmp/sums) && umount /mnt && /sbin/e2fsck -fn /dev/vda
        }

        """

    /// Files (name, dd block size, count) of scenario (a): sizes that are and are not multiples
    /// of the 4 KiB block, from 1.5 KiB to 2.3 MiB.
    static let roundTripFiles: [(name: String, blockSize: Int, count: Int)] = [
        ("f1", 4096, 1), ("f2", 65536, 4), ("f3", 1 << 20, 2), ("f4", 12345, 1), ("f5", 65536, 37), ("f6", 512, 3),
    ]

    /// (a) ext4 round trip: fsync'd files, checksums, umount + drop caches + mount, compare,
    /// e2fsck. `set -e`: any failure ends the script non-zero. Prints `SUM name md5 bytes` per
    /// file and `VERIFIED` at the end.
    static var roundTrip: String {
        let specs = roundTripFiles.map { "\"\($0.name) \($0.blockSize) \($0.count)\"" }.joined(separator: " ")
        return prelude + """
            set -e
            mkfs_small
            mount_vda
            for spec in \(specs); do
                set -- $spec
                dd if=/dev/urandom of=/mnt/$1 bs=$2 count=$3 conv=fsync 2>/dev/null
            done
            record_sums
            while read sum name; do echo "SUM $name $sum $(stat -c %s /mnt/$name)"; done </tmp/sums
            remount_and_check
            echo VERIFIED

            """
    }

    /// (b) the seed bug: 1 MiB files written one by one with `dd conv=fsync`, more than the host
    /// can store. `OK name md5` for each one the guest was told is durable, `FAIL name rc=N
    /// message` for each that was refused; it stops after `maxFailures` failures. Then the
    /// kernel's I/O errors between `DMESG-BEGIN` and `DMESG-END`. Exits 0 once it got that far:
    /// what happened is for the host to judge.
    static func fillUntilFailure(files: Int, maxFailures: Int = 3) -> String {
        prelude + """
            mkfs_small || { echo MKFS-FAILED; exit 1; }
            mount_vda || { echo MOUNT-FAILED; exit 1; }
            echo MKFS-DONE
            i=0
            fails=0
            while [ $i -lt \(files) ] && [ $fails -lt \(maxFailures) ]; do
                i=$((i + 1))
                dd if=/dev/urandom of=/mnt/f$i bs=1048576 count=1 conv=fsync 2>/tmp/dd.err
                rc=$?
                if [ $rc -eq 0 ]; then
                    echo "OK f$i $(md5sum /mnt/f$i | cut -d' ' -f1)"
                else
                    echo "FAIL f$i rc=$rc $(tail -n 1 /tmp/dd.err)"
                    fails=$((fails + 1))
                fi
            done
            echo DMESG-BEGIN
            dmesg | grep -i 'i/o error' | head -n 20
            echo DMESG-END
            umount /mnt 2>/dev/null
            exit 0

            """
    }

    /// (c) the same writes under a pause: every one of `files` must succeed (`OK name md5`), then
    /// the files are re-read after umount + drop caches + mount and e2fsck runs; `ALL-VERIFIED`
    /// and exit 0 only if all of that held.
    static func writeAllAndVerify(files: Int) -> String {
        prelude + """
            set -e
            mkfs_small
            mount_vda
            echo MKFS-DONE
            i=0
            while [ $i -lt \(files) ]; do
                i=$((i + 1))
                if ! dd if=/dev/urandom of=/mnt/f$i bs=1048576 count=1 conv=fsync 2>/tmp/dd.err; then
                    echo "FAIL f$i $(tail -n 1 /tmp/dd.err)"
                    exit 1
                fi
                echo "OK f$i $(md5sum /mnt/f$i | cut -d' ' -f1)"
            done
            record_sums
            remount_and_check
            echo "ALL-VERIFIED files=$i"

            """
    }

    /// (d) flushes: `PHASE name` after each step, then a pause so the host can read the
    /// daemon's counters while nothing else happens: `mounted`; `synced` after dirtying the page
    /// cache without fsync and running `sync`; `fsynced` after a `dd conv=fsync`.
    static let flushPhases = ["mounted", "synced", "fsynced"]

    static var flush: String {
        prelude + """
            set -e
            mkfs_small
            mount_vda
            echo "PHASE mounted"
            sleep 2
            dd if=/dev/urandom of=/mnt/dirty bs=65536 count=8 2>/dev/null
            sync
            echo "PHASE synced"
            sleep 2
            dd if=/dev/urandom of=/mnt/durable bs=65536 count=8 conv=fsync 2>/dev/null
            echo "PHASE fsynced"
            sleep 2
            umount /mnt

            """
    }
}

/// The guest's console output and the records the scripts print on it.
struct GuestConsole {
    let text: String

    /// The whitespace-separated fields of every line that starts with `tag` (the tag dropped).
    func records(_ tag: String) -> [[String]] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.first == tag else { return nil }
            return Array(fields.dropFirst())
        }
    }

    /// `OK name md5` records as name → md5 (malformed ones are left out; `okLines` counts all).
    var okFiles: [String: String] {
        var out: [String: String] = [:]
        for r in records("OK") where r.count == 2 && Self.isMD5(r[1]) { out[r[0]] = r[1] }
        return out
    }

    /// The lines between `begin` and `end` markers (exclusive).
    func section(from begin: String, to end: String) -> [Substring] {
        let lines = text.split(separator: "\n")
        guard let b = lines.firstIndex(where: { $0.hasPrefix(begin) }),
            let e = lines[b...].firstIndex(where: { $0.hasPrefix(end) })
        else { return [] }
        return Array(lines[(b + 1)..<e])
    }

    /// Whether the guest reached the end marker with status 0 (guest.sh's own check).
    var endedCleanly: Bool { text.contains("TAPDISK-GUEST-END rc=0") }

    static func isMD5(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }
}
