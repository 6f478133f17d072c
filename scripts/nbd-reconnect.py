#!/usr/bin/env python3
"""kill -9 an NBD server under a running Linux guest, N times, and count what the guest saw.

    scripts/nbd-reconnect.py [--kills N] [--server tapdiskd|qemu-nbd|nbdkit] [--tapdiskd BIN]
                             [--listen activate|rebind]                     (root; QEMU)

QEMU's NBD client (`-blockdev driver=nbd,...,reconnect-delay=5`) serves the guest's virtio-blk
disk. In the guest, three writers each loop over 16 slots of 256 KiB of /dev/vda: fresh random
data written with O_DIRECT + fsync, read back with O_DIRECT, compared, one line per round (OK, or
FAIL on an I/O error or a mismatch). A supervisor thread here restarts the server as soon as it
dies. With `--listen activate` the supervisor owns the listening socket and hands it to every
server it starts as fd 3 (systemd's LISTEN_FDS protocol), so the client's reconnect waits in the
backlog; with `--listen rebind` each server binds the path itself, and a client that tries while
no one listens must retry (QEMU 7.2 retries after 1 s, then 2, 4, ... s).

The host kills the server at a random point 0.2-1.7 s after the previous kill's recovery, and
measures each stall from QMP `query-blockstats`, polled every 2 ms: from the kill to the first
completed request after the new server started. After the last kill it writes STOP into sector
131000 of the image, which the writers poll; each writer then prints the md5 of what it last
wrote to each slot, and, once QEMU is gone, the script compares those with the image.

Guest-visible errors are counted three ways: FAIL lines, `I/O error` lines in the guest's kernel
log, and QEMU's failed_{rd,wr,flush}_operations. Exit status 0 only if all are 0, every slot
verifies, the guest ended with rc=0 and every kill was followed by a completion.
"""
import argparse, ctypes, fcntl, hashlib, json, os, random, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_MIB = 64
STOP_SECTOR = 131000

GUEST = r"""#!/bin/sh
dmesg -n 1
writer() {
    w=$1; i=0
    while :; do
        dd if=/dev/vda bs=512 skip=131000 count=1 iflag=direct 2>/dev/null | grep -q STOP && break
        s=$((i % 16)); off=$(( w * 64 + s * 4 ))
        dd if=/dev/urandom of=/tmp/w$w bs=64k count=4 2>/dev/null
        if dd if=/tmp/w$w of=/dev/vda bs=64k seek=$off oflag=direct conv=fsync,notrunc 2>/dev/null; then
            cp /tmp/w$w /tmp/w$w.s$s
        else
            echo "FAIL write w$w i$i"; rm -f /tmp/w$w.s$s; touch /tmp/w$w.s$s.bad
        fi
        dd if=/dev/vda of=/tmp/r$w bs=64k skip=$off count=4 iflag=direct 2>/dev/null || echo "FAIL read w$w i$i"
        if cmp -s /tmp/w$w /tmp/r$w; then echo "OK w$w i$i"; else echo "FAIL cmp w$w i$i"; fi
        i=$((i+1))
    done
    for s in $(seq 0 15); do
        [ -f /tmp/w$w.s$s ] && echo "SUM $w $s $(md5sum </tmp/w$w.s$s | cut -d' ' -f1)"
    done
    echo "DONE w$w $i"
}
writer 0 & writer 1 & writer 2 &
wait
echo "DMESG-IO-ERRORS $(dmesg | grep -ci 'i/o error')"
"""


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    """preexec_fn: SIGKILL this child when its parent thread dies, even by SIGKILL (a test's timeout)."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def server_argv(name, a, image, sock, ctl, activate):
    if name == "qemu-nbd":
        listen = [] if activate else ["-k", sock]
        return ["qemu-nbd", "-t", "-f", "raw", "--cache=none", "--aio=native", "--shared=4", *listen, image]
    if name == "nbdkit":
        listen = [] if activate else ["-U", sock]
        return ["nbdkit", "-f", *listen, "file", image, "cache=none"]
    if name == "tapdiskd":
        # Under socket activation tapdiskd serves NBD on the passed fd named `nbd`, no --nbd needed.
        listen = [] if activate else ["--nbd", f"unix:{sock}"]
        return [a.tapdiskd, "serve", "--image", image, "--socket", ctl, *listen, "--cache", "none",
                "--log-level", "info"]
    sys.exit(f"unknown server {name}")


class Supervisor(threading.Thread):
    """Restarts the server whenever it exits, until stopped; with `listener`, passes it as fd 3."""

    def __init__(self, argv, sock, ctl, listener, logpath):
        super().__init__(daemon=True)
        self.argv, self.sock, self.ctl, self.listener = argv, sock, ctl, listener
        self.log = open(logpath, "ab")
        self.lock = threading.Lock()
        self.proc = None
        self.starts = []  # monotonic time of each spawn
        self.stopping = False
        self.failure = None
        self.started = threading.Event()

    def spawn(self):
        if self.listener is None:
            for path in (self.sock, self.ctl):
                if os.path.exists(path):
                    os.unlink(path)
            return subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if os.path.exists(self.ctl):
            os.unlink(self.ctl)
        # bash's $$ is the pid that exec keeps: LISTEN_PID must name the server itself. The
        # listener sits at fd 20 or above, so moving it to 3 never closes what it copies.
        fd = self.listener
        wrapper = ["bash", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=nbd exec "$@" 3<&{fd} {fd}<&-', "bash"]
        return subprocess.Popen(wrapper + self.argv, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                                preexec_fn=die_with_parent)

    def run(self):
        while True:
            with self.lock:
                if self.stopping:
                    return
                self.proc = self.spawn()
                self.starts.append(time.monotonic())
            self.started.set()
            rc = self.proc.wait()
            with self.lock:
                if rc != -signal.SIGKILL and not self.stopping:
                    # Not our kill: a server that cannot start would loop here forever.
                    self.failure = f"{self.argv[0]} exited with {rc} on its own"
                    return

    def pid(self):
        with self.lock:
            return self.proc.pid

    def stop(self):
        with self.lock:
            self.stopping = True
            p = self.proc
        if p:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.join(timeout=10)


class BlockStats(threading.Thread):
    """Polls QMP query-blockstats; keeps (time, completed requests, failed requests) on change."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(500):
            try:
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.02)
        self.f = self.s.makefile("rw")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")
        self.samples = []  # (t, completed, failed)
        self.stopping = False
        self.cond = threading.Condition()

    def cmd(self, name):
        self.f.write(json.dumps({"execute": name}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                return r

    def run(self):
        while not self.stopping:
            try:
                r = self.cmd("query-blockstats")
            except (OSError, ValueError):
                return  # QEMU went away
            st = next(d["stats"] for d in r["return"] if d.get("node-name") == "disk0")
            done = st["rd_operations"] + st["wr_operations"] + st["flush_operations"]
            failed = st["failed_rd_operations"] + st["failed_wr_operations"] + st["failed_flush_operations"]
            now = time.monotonic()
            with self.cond:
                if not self.samples or self.samples[-1][1:] != (done, failed):
                    self.samples.append((now, done, failed))
                    self.cond.notify_all()
            time.sleep(0.002)

    def first_completion_after(self, t, timeout):
        """Monotonic time of the first sample with more completions than at `t`, or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                base = [s for s in self.samples if s[0] <= t]
                base_done = base[-1][1] if base else 0
                later = [s for s in self.samples if s[0] > t and s[1] > base_done]
                if later:
                    return later[0][0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def failed(self):
        with self.cond:
            return self.samples[-1][2] if self.samples else 0


def guest_files(work):
    out = subprocess.run([os.path.join(REPO, "scripts/guest.sh"), "build"], check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"kernel=(\S+) initrd=(\S+)", out)
    kernel, base = m.group(1), m.group(2)
    root = os.path.join(work, "root")
    os.makedirs(root)
    with open(os.path.join(root, "guest-script.sh"), "w") as f:
        f.write(GUEST)
    os.chmod(os.path.join(root, "guest-script.sh"), 0o755)
    initrd = os.path.join(work, "initrd")
    shutil.copy(base, initrd)
    with open(initrd, "ab") as f:
        f.write(subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"guest-script.sh\n", cwd=root,
                               check=True, capture_output=True).stdout)
    return kernel, initrd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--server", default="tapdiskd", choices=["tapdiskd", "qemu-nbd", "nbdkit"])
    ap.add_argument("--tapdiskd", default=os.path.join(REPO, ".build/debug/tapdiskd"))
    ap.add_argument("--listen", default="activate", choices=["activate", "rebind"])
    ap.add_argument("--reconnect-delay", type=int, default=5)
    ap.add_argument("--accel", default="tcg")  # as scripts/guest.sh: KVM hangs in SeaBIOS on this host
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    # A SIGTERM (timeout(1), a test's teardown) must still run the cleanup that kills QEMU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("nbd-reconnect: terminated"))
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="tapdisk-nbd-reconnect-", dir="/var/tmp")
    image, sock, ctl, qmp = (os.path.join(work, n) for n in ("img", "nbd.sock", "ctl.sock", "qmp.sock"))
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    listener = None
    if a.listen == "activate":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock)
        listener.listen(16)
        raw = listener.detach()
        listener = fcntl.fcntl(raw, fcntl.F_DUPFD, 20)
        os.close(raw)
    sup = Supervisor(server_argv(a.server, a, image, sock, ctl, a.listen == "activate"), sock, ctl, listener,
                     os.path.join(work, "server.log"))
    sup.start()
    sup.started.wait()
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    kernel, initrd = guest_files(work)
    console = os.path.join(work, "console")
    qemu = ["qemu-system-x86_64", "-accel", a.accel.split(":")[0]] + \
        (["-accel", a.accel.split(":")[1]] if ":" in a.accel else []) + [
        "-smp", "1", "-m", "512",
        "-blockdev", f"driver=nbd,node-name=disk0,server.type=unix,server.path={sock},"
                     f"reconnect-delay={a.reconnect_delay}",
        "-device", "virtio-blk-pci,drive=disk0,werror=report,rerror=report",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet no_timer_check",
        "-nographic", "-no-reboot"]
    guest = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=open(console, "w"), stderr=subprocess.STDOUT,
                             preexec_fn=die_with_parent)
    stats = BlockStats(qmp)
    stats.start()
    text = lambda: open(console, errors="replace").read().replace("\r", "")
    ok = lambda: text().count("OK w")
    result = 1
    stalls, missed = [], 0
    try:
        deadline = time.monotonic() + 180
        while ok() == 0:
            if guest.poll() is not None or time.monotonic() > deadline:
                sys.exit("the guest did not start writing:\n" + text()[-3000:])
            time.sleep(0.1)
        log(f"{a.server} ({a.listen}): guest writing; killing the server {a.kills} times")
        for k in range(1, a.kills + 1):
            time.sleep(0.2 + rng.random() * 1.5)
            pid = sup.pid()
            starts = len(sup.starts)
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while len(sup.starts) == starts:
                if sup.failure:
                    sys.exit(sup.failure + "; log: " + open(os.path.join(work, "server.log")).read()[-2000:])
                time.sleep(0.001)
            t_restart = sup.starts[-1]
            first = stats.first_completion_after(t_restart, a.reconnect_delay + 30)
            if first is None:
                missed += 1
                log(f"kill {k}: no completion within {a.reconnect_delay + 30} s after the restart")
                continue
            stalls.append(first - t_kill)
            log(f"kill {k}: restarted after {(t_restart - t_kill) * 1000:.0f} ms, "
                f"first completion {stalls[-1] * 1000:.0f} ms after the kill")
        with open(image, "r+b") as f:
            f.seek(STOP_SECTOR * 512)
            f.write(b"STOP".ljust(512, b"\0"))
            os.fsync(f.fileno())
        try:
            guest.wait(timeout=300)
        except subprocess.TimeoutExpired:
            guest.kill()
            guest.wait()
    finally:
        if guest.poll() is None:
            guest.kill()
            guest.wait()
        stats.stopping = True
        sup.stop()
    out = text()
    sums = re.findall(r"^SUM (\d+) (\d+) ([0-9a-f]{32})", out, re.M)
    bad_slots = 0
    with open(image, "rb") as f:
        for w, s, md5 in sums:
            f.seek((int(w) * 64 + int(s) * 4) * 65536)
            if hashlib.md5(f.read(4 * 65536)).hexdigest() != md5:
                bad_slots += 1
    fails = out.count("FAIL")
    dmesg = re.search(r"DMESG-IO-ERRORS (\d+)", out)
    dmesg_errors = int(dmesg.group(1)) if dmesg else -1
    end = re.search(r"TAPDISK-GUEST-END rc=(\d+)", out)
    failed_ops = stats.failed()
    ms = sorted(x * 1000 for x in stalls)
    pct = lambda p: ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))] if ms else float("nan")
    print(f"server: {a.server}, listening socket: {a.listen}, client: QEMU {a.accel.split(':')[0]} "
          f"-blockdev driver=nbd,reconnect-delay={a.reconnect_delay}")
    print(f"kills: {len(stalls) + missed} (no completion after {missed}); rounds verified: {out.count('OK w')}; "
          f"guest-visible errors: FAIL lines {fails}, guest kernel I/O errors {dmesg_errors}, "
          f"QEMU failed ops {failed_ops}; slots verified on the host: {len(sums) - bad_slots}/{len(sums)} "
          f"({bad_slots} corrupted); guest rc={end.group(1) if end else 'none'}")
    if ms:
        print(f"stall from kill -9 to the first completion on the new server (ms): p50 {pct(50):.0f}, "
              f"p90 {pct(90):.0f}, p99 {pct(99):.0f}, max {ms[-1]:.0f}, min {ms[0]:.0f}")
    if fails or dmesg_errors != 0 or failed_ops or bad_slots or missed or not end or end.group(1) != "0" \
            or out.count("DONE w") != 3:
        print(f"FAILED; kept {work}")
        for line in out.splitlines():
            if "FAIL" in line or "error" in line.lower():
                print("  " + line)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
