#!/usr/bin/env python3
"""QoS accuracy (issue 17 §2), called by scripts/qos-bench.sh.

Each case starts one `tapdiskd --cache writeback --limit ...` daemon on an image that is in the
page cache (so the limit, not the disk, sets the pace), drives it with `tapdiskd bench`, and
prints Markdown tables on stdout:

- rate: the achieved rate as `tapdiskd bench` measured it (after --ramp), against the limit;
- latency: p50 at QD1 with no limit and with a limit twice the unlimited rate (so the load stays
  below it), alternating, medians over the rounds;
- change: a limit changed in the middle of a run with `set-limits`: the daemon's own
  `limits-effective-us` (from applying the new limit to the first request consumed under it)
  and the consumption rate from `stats`' read-requests, sampled every few ms, before and after.
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Control:
    """One SOCK_SEQPACKET control connection (docs/protocol.md §2)."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.connect(path)
        self.tag = 0

    def call(self, cmd, **args):
        self.tag += 1
        self.s.send(json.dumps({"cmd": cmd, "tag": self.tag, **args}).encode())
        while True:
            r = json.loads(self.s.recv(65536))
            if "event" in r:
                continue
            if not r.get("ok"):
                sys.exit(f"{cmd}: {r}")
            return r


def start(tapdiskd, image, directory, limit):
    sock = os.path.join(directory, "qos.sock")
    args = [tapdiskd, "--image", image, "--socket", sock, "--cache", "writeback", "--log-level", "warning"]
    if limit:
        args += ["--limit", limit]
    p = subprocess.Popen(args, stderr=open(os.path.join(directory, "daemon.log"), "a"))
    for _ in range(500):
        if os.path.exists(sock):
            try:
                Control(sock).call("info")
                return p, sock
            except OSError:
                pass
        time.sleep(0.01)
    sys.exit("the daemon did not start")


def stop(p):
    p.terminate()
    p.wait(timeout=30)


def bench_cmd(tapdiskd, sock, rw, bs, depth, seconds, ramp):
    return [tapdiskd, "bench", "--socket", sock, "--rw", rw, "--bs", bs, "--iodepth", str(depth),
            "--seconds", str(seconds), "--ramp", str(ramp), "--json"]


def bench(tapdiskd, sock, rw, bs, depth, seconds, ramp):
    r = json.loads(subprocess.run(bench_cmd(tapdiskd, sock, rw, bs, depth, seconds, ramp), check=True,
                                  capture_output=True, text=True).stdout)
    if not r["ok"] or r["errors"]:
        sys.exit(f"tapdiskd bench failed: {r}")
    return r


def size(bs):
    return int(bs[:-1]) * 1024 if bs.endswith("k") else int(bs)


def rates(a):
    out = []
    for limit, rw, bs, depth in [("iops-total=200", "randread", "4k", 32), ("iops-total=2000", "randread", "4k", 32),
                                 ("bps-total=10000000", "randread", "64k", 8),
                                 ("bps-total=100000000", "randread", "128k", 8),
                                 ("iops-write=2000", "randwrite", "4k", 32)]:
        p, sock = start(a.tapdiskd, a.image, a.dir, limit)
        try:
            log(f"rate: {limit}, {rw} {bs} QD{depth}, {a.seconds} s")
            r = bench(a.tapdiskd, sock, rw, bs, depth, a.seconds, a.ramp)
        finally:
            stop(p)
        target = int(limit.split("=")[1])
        if limit.startswith("bps"):
            got, unit = r["completed"] * size(bs) / r["seconds"], "B/s"
        else:
            got, unit = r["iops"], "IOPS"
        out.append((limit, f"{rw} {bs} QD{depth}", target, got, unit, r["lat-us"]["p50"]))
    print(f"\n### Achieved rate over {a.seconds} s (after {a.ramp} s of ramp)\n")
    print("| limit | load (`tapdiskd bench`) | limit | achieved | error | p50 (µs) |")
    print("|---|---|---:|---:|---:|---:|")
    for limit, load, target, got, unit, p50 in out:
        scale, u = (1e6, "MB/s") if unit == "B/s" else (1, "IOPS")
        print(f"| `{limit}` | {load} | {target / scale:g} {u} | {got / scale:.1f} {u} | "
              f"{(got - target) / target * 100:+.2f} % | {p50:.0f} |")


def latency(a):
    rows = {"none": [], "limited": []}
    iops = {"none": [], "limited": []}
    p, sock = start(a.tapdiskd, a.image, a.dir, None)
    try:
        base = bench(a.tapdiskd, sock, "randread", "4k", 1, 3, 1)["iops"]
    finally:
        stop(p)
    limit = f"iops-total={int(base * 2)}"
    log(f"latency: unlimited QD1 runs at {base:.0f} IOPS; limit {limit}")
    for rnd in range(a.rounds):
        for name, lim in [("none", None), ("limited", limit)]:
            p, sock = start(a.tapdiskd, a.image, a.dir, lim)
            try:
                r = bench(a.tapdiskd, sock, "randread", "4k", 1, a.seconds, a.ramp)
                c = Control(sock).call("stats")["counters"]
            finally:
                stop(p)
            rows[name].append(r["lat-us"]["p50"])
            iops[name].append(r["iops"])
            log(f"  round {rnd + 1} {name}: p50 {r['lat-us']['p50']:.1f} µs, {r['iops']:.0f} IOPS, "
                f"delayed {c.get('throttle-delayed-requests')}")
    n, l = statistics.median(rows["none"]), statistics.median(rows["limited"])
    print(f"\n### p50 below the limit: randread 4k QD1, {a.seconds} s x {a.rounds} rounds, medians\n")
    print("| limit | IOPS | p50 (µs) | p50 per round (µs) |")
    print("|---|---:|---:|---|")
    print(f"| none | {statistics.median(iops['none']):.0f} | {n:.1f} | {', '.join(f'{x:.1f}' for x in rows['none'])} |")
    print(f"| `{limit}` (2x the unlimited rate) | {statistics.median(iops['limited']):.0f} | {l:.1f} "
          f"({(l - n) / n * 100:+.1f} %) | {', '.join(f'{x:.1f}' for x in rows['limited'])} |")


def sample(ctl, until, out):
    while time.monotonic() < until:
        c = ctl.call("stats")["counters"]
        out.append((time.monotonic(), c["read-requests"]))
        time.sleep(0.002)


def rate_between(samples, t0, t1):
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def change(a):
    print(f"\n### A limit changed mid-run: randread 4k QD32, `set-limits` every 3 s\n")
    print("| change | daemon: set-limits to first consumption | rate 1 s before | rate 0-10 ms after | "
          "rate 0-100 ms after | rate 100 ms-1 s after | rate 1-2 s after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    p, sock = start(a.tapdiskd, a.image, a.dir, "iops-total=200")
    try:
        b = subprocess.Popen(bench_cmd(a.tapdiskd, sock, "randread", "4k", 32, 16, 0), stdout=subprocess.PIPE)
        ctl = Control(sock)
        samples = []
        t = time.monotonic()
        sample(ctl, t + 3, samples)  # the bench runs 16 s: 3 s, then 4 changes 3 s apart
        for new in ["iops-total=2000", "iops-total=200", "iops-total=20000", "iops-total=2000"]:
            key, value = new.split("=")
            before = time.monotonic()
            ctl.call("set-limits", limits={key: int(value)})
            replied = time.monotonic()
            sample(ctl, replied + 0.05, samples)
            eff = ctl.call("status")["limits-effective-us"]
            sample(ctl, replied + 2.9, samples)
            print(f"| to `{new}` | {eff} µs | {rate_between(samples, before - 1, before):.0f} | "
                  f"{rate_between(samples, replied, replied + 0.01):.0f} | "
                  f"{rate_between(samples, replied, replied + 0.1):.0f} | "
                  f"{rate_between(samples, replied + 0.1, replied + 1):.0f} | "
                  f"{rate_between(samples, replied + 1, replied + 2):.0f} |")
        b.wait(timeout=60)
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tapdiskd", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--ramp", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="rate,latency,change")
    a = ap.parse_args()
    a.dir = tempfile.mkdtemp(prefix="qos-bench-")
    parts = a.parts.split(",")
    if "rate" in parts:
        rates(a)
    if "latency" in parts:
        latency(a)
    if "change" in parts:
        change(a)


if __name__ == "__main__":
    main()
