#!/usr/bin/env python3
"""The idle cost of many disks on one host (issue 17 §3), driven by scripts/many-disks.sh.

Starts N tapdiskd on N sparse images, one after the other, and times each from spawn to the
first answer to `info` on its control socket. With all of them idle it reads RssAnon and the
context switches of every thread from /proc, then scrapes one tapdisk-exporter over all N
sockets. Everything it started is stopped by PID on the way out, and the images are removed.
Prints a Markdown table.
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

BIN = os.environ.get("BIN", ".build/release")
IMAGE_SIZE = os.environ.get("IMAGE_SIZE", "16M")
IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "10"))
SCRAPES = int(os.environ.get("SCRAPES", "5"))


def info(path, timeout=0.5):
    """One `info` on a control socket (AF_UNIX SOCK_SEQPACKET, one JSON object per message)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.send(b'{"cmd":"info","tag":1}')
        return json.loads(s.recv(65536))
    finally:
        s.close()


def status_fields(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def kib(field):
    return int(field.split()[0])


def ctxt_switches(pid):
    """Voluntary + nonvoluntary context switches summed over every thread of the process
    (/proc/PID/status alone counts only the main thread)."""
    total, threads = 0, 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = status_fields(f"{pid}/task/{tid}")
        except FileNotFoundError:
            continue
        total += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
        threads += 1
    return total, threads


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ms(x):
    return f"{x * 1000:.1f} ms"


def main():
    n = int(sys.argv[1])
    workdir = sys.argv[2]
    procs = []
    images = []

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for img in images:
            try:
                os.unlink(img)
            except FileNotFoundError:
                pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    try:
        run(n, workdir, procs, images)
    finally:
        stop()


def run(n, workdir, procs, images):
    load_before = open("/proc/loadavg").read().split()[:3]
    devnull = subprocess.DEVNULL
    for i in range(n):
        img = os.path.join(workdir, f"disk{i}.img")
        subprocess.run([f"{BIN}/tapdiskd", "create", img, "--size", IMAGE_SIZE], check=True, stdout=devnull)
        images.append(img)

    daemons = []  # (Popen, socket path, start-up seconds)
    for i, img in enumerate(list(images)):
        sock = os.path.join(workdir, f"disk{i}.sock")
        t0 = time.monotonic()
        log = os.path.join(workdir, f"disk{i}.log")
        images.append(log)
        with open(log, "w") as logf:
            p = subprocess.Popen([f"{BIN}/tapdiskd", "--image", img, "--socket", sock], stdout=devnull, stderr=logf)
        procs.append(p)
        while True:
            if p.poll() is not None:
                raise SystemExit(f"tapdiskd {i} exited {p.returncode} before answering info: {open(log).read()}")
            try:
                info(sock)
                break
            except (FileNotFoundError, ConnectionRefusedError, socket.timeout, json.JSONDecodeError):
                time.sleep(0.001)
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"tapdiskd {i} did not answer info within 10 s")
        daemons.append((p, sock, time.monotonic() - t0))

    aio_nr = int(open("/proc/sys/fs/aio-nr").read())
    # A daemon that could not set up its image watch says so at start-up and polls instead.
    polling = sum(1 for i in range(n) if "size is polled" in open(os.path.join(workdir, f"disk{i}.log")).read())
    # All idle now: let them settle, then sample.
    time.sleep(2)
    rss_anon = [kib(status_fields(p.pid)["RssAnon"]) for p, _, _ in daemons]
    rss = [kib(status_fields(p.pid)["VmRSS"]) for p, _, _ in daemons]
    fds = [len(os.listdir(f"/proc/{p.pid}/fd")) for p, _, _ in daemons]
    before = [ctxt_switches(p.pid) for p, _, _ in daemons]
    t0 = time.monotonic()
    time.sleep(IDLE_SECONDS)
    after = [ctxt_switches(p.pid) for p, _, _ in daemons]
    elapsed = time.monotonic() - t0
    wakeups = [(a[0] - b[0]) / elapsed for a, b in zip(after, before)]
    threads = [a[1] for a in after]

    port = free_port()
    exporter = subprocess.Popen(
        [f"{BIN}/tapdisk-exporter", "--listen", f"127.0.0.1:{port}", "--sockets", workdir + "/"],
        stdout=devnull, stderr=devnull)
    procs.append(exporter)
    url = f"http://127.0.0.1:{port}/metrics"
    t0 = time.monotonic()
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if exporter.poll() is not None or time.monotonic() - t0 > 10:
                raise SystemExit("tapdisk-exporter did not start listening")
            time.sleep(0.01)
    scrape_s, sizes, ups = [], [], []
    for _ in range(SCRAPES):
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        scrape_s.append(time.monotonic() - t0)
        sizes.append(len(body))
        ups.append(sum(1 for line in body.decode().splitlines()
                       if line.startswith("tapdiskd_up{") and line.endswith(" 1")))
    ex = status_fields(exporter.pid)
    load_after = open("/proc/loadavg").read().split()[:3]

    start_s = [s for _, _, s in daemons]
    med = statistics.median
    print(f"| N = {n} daemons, {IMAGE_SIZE} sparse images | median | max |")
    print("|---|---|---|")
    print(f"| start-up, spawn to first `info` answer (started one after another) | {ms(med(start_s))} | {ms(max(start_s))} |")
    print(f"| RssAnon per idle daemon | {med(rss_anon) / 1024:.2f} MiB | {max(rss_anon) / 1024:.2f} MiB |")
    print(f"| VmRSS per idle daemon (incl. shared text) | {med(rss) / 1024:.2f} MiB | {max(rss) / 1024:.2f} MiB |")
    print(f"| open descriptors per idle daemon | {med(fds):.0f} | {max(fds)} |")
    print(f"| wake-ups/s per idle daemon (ctxt switches, all {med(threads):.0f} threads, over {elapsed:.1f} s) | {med(wakeups):.2f} | {max(wakeups):.2f} |")
    print(f"| wake-ups/s, all {n} idle daemons together | {sum(wakeups):.0f} | |")
    print(f"| daemons polling the image size (no inotify/uevent watch; must be 0) | {polling} | |")
    print(f"| exporter scrape `GET /metrics` over all {n} ({SCRAPES} scrapes) | {ms(med(scrape_s))} | {ms(max(scrape_s))} |")
    print(f"| scrape size | {med(sizes) / 1024:.0f} KiB | {max(sizes) / 1024:.0f} KiB |")
    print(f"| `tapdiskd_up{{...}} 1` lines per scrape (must be {n}) | {med(ups):.0f} | min {min(ups)} |")
    print(f"| exporter RssAnon after the scrapes | {kib(ex['RssAnon']) / 1024:.2f} MiB | |")
    print(f"| exporter VmRSS after the scrapes | {kib(ex['VmRSS']) / 1024:.2f} MiB | |")
    print(f"| /proc/sys/fs/aio-nr with all {n} running (per daemon) | {aio_nr} | {aio_nr / n:.0f} |")
    print(f"| load average 1/5/15 min, before / after the run | {' '.join(load_before)} | {' '.join(load_after)} |")
    if min(ups) != n:
        print(f"\nFAIL: a scrape saw {min(ups)} daemons up, not {n}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
