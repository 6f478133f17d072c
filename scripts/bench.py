#!/usr/bin/env python3
"""tapdiskd against fio on the same image, in the same run (called by scripts/bench.sh).

For every case, each round runs fio (--ioengine=libaio --direct=1) and then `tapdiskd bench`
against one long-running daemon, alternating, and the table reports medians over the rounds:
IOPS of both, the ratio, p50/p99 latency, and the daemon's CPU seconds per 1,000 I/Os
(utime+stime from /proc/PID/stat over the tapdiskd case). Placement: `colocated` leaves all
processes to the scheduler; `split` pins the daemon to CPU 0 (--cpu 0) and both load
generators (fio, tapdiskd bench) to CPU 1 (taskset); `pinN` pins the daemon and both load
generators to CPU N. At QD1 the placement decides the latency (docs/performance.md, "QD1 writes:
where the extra latency goes"): compare cases only within one placement.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

CASES = {
    "randread-4k-qd1": ("randread", "4k", 1),
    "randread-4k-qd32": ("randread", "4k", 32),
    "randwrite-4k-qd1": ("randwrite", "4k", 1),
    "randwrite-4k-qd32": ("randwrite", "4k", 32),
    "read-44k-qd8": ("read", "44k", 8),
    "write-44k-qd8": ("write", "44k", 8),
    "read-1m-qd4": ("read", "1m", 4),
    "write-1m-qd4": ("write", "1m", 4),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def fio(image, rw, bs, depth, seconds, ramp, pin):
    cmd = pin + ["fio", "--name=x", f"--filename={image}", "--ioengine=libaio", "--direct=1", f"--rw={rw}",
                 f"--bs={bs}", f"--iodepth={depth}", f"--runtime={seconds}", f"--ramp_time={ramp}",
                 "--time_based", "--output-format=json"]
    job = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["jobs"][0]
    side = job["read" if "read" in rw else "write"]
    if job.get("error", 0) or side.get("total_ios", 0) == 0:
        sys.exit(f"fio failed: {job.get('error')}")
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "mibs": side["bw_bytes"] / 1048576, "p50": pct.get("50.000000", 0) / 1e3, "p99": pct.get("99.000000", 0) / 1e3}


def bench(tapdiskd, socket, rw, bs, depth, seconds, ramp, pin, daemon_pid):
    before = cpu_ticks(daemon_pid)
    cmd = pin + [tapdiskd, "bench", "--socket", socket, "--rw", rw, "--bs", bs, "--iodepth", str(depth),
                 "--seconds", str(seconds), "--ramp", str(ramp), "--json"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ticks = cpu_ticks(daemon_pid) - before
    if not r["ok"] or r["errors"]:
        sys.exit(f"tapdiskd bench failed: {r}")
    ios = r["completed"]
    hz = os.sysconf("SC_CLK_TCK")
    # CPU over the whole case (ramp included) per 1,000 I/Os of the measured part, scaled to it.
    cpu_per_k = (ticks / hz) * (seconds / (seconds + ramp)) / ios * 1000 if ios else 0
    return {"iops": r["iops"], "mibs": r["mib-per-s"], "p50": r["lat-us"]["p50"], "p99": r["lat-us"]["p99"], "cpu_per_k": cpu_per_k}


def placement(name):
    """(daemon --cpu, load generator prefix, description) of a placement name."""
    if name == "colocated":
        return None, [], "no pinning: daemon, fio and `tapdiskd bench` where the scheduler puts them"
    if name == "split":
        return 0, ["taskset", "-c", "1"], "daemon on CPU 0 (`--cpu 0`), fio and `tapdiskd bench` on CPU 1 (taskset)"
    if name.startswith("pin") and name[3:].isdigit():
        return int(name[3:]), ["taskset", "-c", name[3:]], \
            f"daemon, fio and `tapdiskd bench` all on CPU {name[3:]} (`--cpu`, taskset)"
    sys.exit(f"unknown placement {name!r}: colocated, split or pinN")


def start_daemon(tapdiskd, image, socket, poll_us, daemon_cpu, logpath):
    args = [tapdiskd, "--image", image, "--socket", socket, "--cache", "none", "--log-level", "warning",
            "--poll-us", str(poll_us)]
    if daemon_cpu is not None:
        args += ["--cpu", str(daemon_cpu)]
    p = subprocess.Popen(args, stdout=open(logpath, "w"), stderr=subprocess.STDOUT)
    for _ in range(200):
        if os.path.exists(socket):
            return p
        if p.poll() is not None:
            sys.exit("tapdiskd exited: " + open(logpath).read())
        time.sleep(0.05)
    sys.exit("tapdiskd did not listen")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tapdiskd", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--ramp", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll-us", type=int, default=0)
    ap.add_argument("--placement", default="colocated,split")
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    placements = [(name, placement(name)) for name in a.placement.split(",")]
    work = tempfile.mkdtemp(prefix="tapdisk-bench.")
    socket = os.path.join(work, "d.sock")
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", os.path.dirname(a.image)],
                        capture_output=True, text=True).stdout.strip()
    print(f"Image: 1 GiB at `{a.image}` ({fs}, fully written), kernel {os.uname().release}, {os.cpu_count()} CPUs; "
          f"{a.seconds:g} s per case after {a.ramp:g} s ramp; medians of {a.rounds} alternating rounds; "
          f"daemon `--cache none --poll-us {a.poll_us}`.\n")
    for placement_name, (daemon_cpu, pin, where) in placements:
        daemon = start_daemon(a.tapdiskd, a.image, socket, a.poll_us, daemon_cpu, os.path.join(work, "d.log"))
        results = {c: {"fio": [], "td": []} for c in a.cases.split(",")}
        try:
            for rnd in range(a.rounds):
                for c in results:
                    rw, bs, depth = CASES[c]
                    f = fio(a.image, rw, bs, depth, a.seconds, a.ramp, pin)
                    t = bench(a.tapdiskd, socket, rw, bs, depth, a.seconds, a.ramp, pin, daemon.pid)
                    results[c]["fio"].append(f)
                    results[c]["td"].append(t)
                    log(f"[{placement_name} round {rnd + 1}] {c}: fio {f['iops']:.0f} tapdiskd {t['iops']:.0f} "
                        f"ratio {t['iops'] / f['iops']:.2f} cpu/1k {t['cpu_per_k'] * 1000:.1f} ms")
        finally:
            daemon.terminate()
            daemon.wait()
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        print(f"### Placement: {placement_name} ({where})\n")
        print("| case | fio IOPS | tapdiskd IOPS | ratio (median of per-round) | fio p50/p99 µs | tapdiskd p50/p99 µs "
              "| daemon CPU ms per 1k I/O |")
        print("|---|---|---|---|---|---|---|")
        for c, r in results.items():
            ratios = [t["iops"] / f["iops"] for f, t in zip(r["fio"], r["td"])]
            print(f"| {c} | {med(r['fio'], 'iops'):.0f} | {med(r['td'], 'iops'):.0f} | "
                  f"**{statistics.median(ratios):.2f}** ({', '.join(f'{x:.2f}' for x in ratios)}) | "
                  f"{med(r['fio'], 'p50'):.0f} / {med(r['fio'], 'p99'):.0f} | "
                  f"{med(r['td'], 'p50'):.0f} / {med(r['td'], 'p99'):.0f} | {med(r['td'], 'cpu_per_k') * 1000:.1f} |")
        print()
    os.unlink(socket) if os.path.exists(socket) else None


if __name__ == "__main__":
    main()
