#!/usr/bin/env python3
"""tapdiskd's NBD front against qemu-nbd and nbdkit, one client for all (called by scripts/bench.sh).

The client is fio's `nbd` engine (libnbd) over a unix socket for every server; the reference is
fio --ioengine=libaio --direct=1 on the same image. Each round runs, for every case, the reference
and then each server, the servers' order rotating by one per round so that none always runs first
after the reference. Every measurement starts its server fresh on the same fully written image and
stops it afterwards (qemu-nbd and tapdiskd lock the image, so two cannot serve it at once).

The tables report medians over the rounds: IOPS and MiB/s of each, the ratio
tapdiskd / max(qemu-nbd, nbdkit) (median of the per-round ratios, each round's in parentheses), and
each server's CPU per 1,000 I/Os (utime+stime of the server process from /proc/PID/stat over the
fio run, ramp included, scaled by runtime / (runtime + ramp), as scripts/bench.py does). A server
that is not installed, or a tapdiskd without `serve --nbd`, is skipped with a message.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

CASES = {
    "randread-4k-qd1": ("randread", "4k", 1),
    "randread-4k-qd32": ("randread", "4k", 32),
    "randwrite-4k-qd1": ("randwrite", "4k", 1),
    "randwrite-4k-qd32": ("randwrite", "4k", 32),
    "read-64k-qd8": ("read", "64k", 8),
    "read-1m-qd4": ("read", "1m", 4),
    "write-1m-qd4": ("write", "1m", 4),
}
SERVERS = ("tapdiskd", "qemu-nbd", "nbdkit")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def server_command(name, tapdiskd, image, sock, work, poll_us):
    """The argv that serves `image` on the unix socket `sock`."""
    if name == "tapdiskd":
        return [tapdiskd, "serve", "--image", image, "--socket", os.path.join(work, "ctl.sock"), "--nbd",
                f"unix:{sock}", "--cache", "none", "--log-level", "warning", "--poll-us", str(poll_us)]
    if name == "qemu-nbd":
        # -t: keep serving after the client leaves; --shared: fio's connection plus spares.
        return ["qemu-nbd", "-t", "-f", "raw", "--cache=none", "--aio=native", "--shared=8", "-k", sock, image]
    if name == "nbdkit":
        # nbdkit 1.32's file plugin knows cache=default|none and fadvise=normal|random|sequential;
        # cache=none is not O_DIRECT there: it evicts the pages it read or wrote (posix_fadvise
        # DONTNEED, after sync_file_range for writes). -f: stay in the foreground, one process.
        return ["nbdkit", "-f", "-U", sock, "file", image, "cache=none"]
    sys.exit(f"unknown server {name!r}")


def available(name, tapdiskd):
    """None if the server can run here, else why not."""
    if name == "tapdiskd":
        if not tapdiskd or not os.access(tapdiskd, os.X_OK):
            return "no tapdiskd binary"
        help_text = subprocess.run([tapdiskd, "serve", "--help"], capture_output=True, text=True)
        if "--nbd" not in help_text.stdout + help_text.stderr:
            return f"{tapdiskd} has no `serve --nbd` (the NBD front is not in this build)"
        return None
    return None if shutil.which(name) else f"{name} is not installed"


def start_server(argv, sock, pin, logpath):
    if os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen(pin + argv, stdout=open(logpath, "w"), stderr=subprocess.STDOUT)
    for _ in range(400):
        if os.path.exists(sock):
            return p
        if p.poll() is not None:
            sys.exit(f"{argv[0]} exited: " + open(logpath).read())
        time.sleep(0.025)
    p.kill()
    sys.exit(f"{argv[0]} did not listen on {sock}")


def stop_server(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def fio(target, rw, bs, depth, seconds, ramp, pin):
    """fio on `target`: a file (libaio, O_DIRECT) or an nbd+unix URI (fio's nbd engine)."""
    if target.startswith("nbd+unix://"):
        how = ["--ioengine=nbd", f"--uri={target}"]
    else:
        how = [f"--filename={target}", "--ioengine=libaio", "--direct=1"]
    cmd = pin + ["fio", "--name=x", *how, f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}",
                 f"--runtime={seconds}", f"--ramp_time={ramp}", "--time_based", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    except ValueError:
        sys.exit(f"fio failed ({' '.join(cmd)}): {out.stderr.strip()}")
    side = job["read" if "read" in rw else "write"]
    if job.get("error", 0) or side.get("total_ios", 0) == 0:
        sys.exit(f"fio failed ({' '.join(cmd)}): error {job.get('error')} {out.stderr.strip()}")
    pct = side["clat_ns"].get("percentile", {})
    return {"iops": side["iops"], "mibs": side["bw_bytes"] / 1048576, "ios": side["total_ios"],
            "p50": pct.get("50.000000", 0) / 1e3, "p99": pct.get("99.000000", 0) / 1e3}


def measure(name, a, case, work, server_pin, client_pin):
    rw, bs, depth = CASES[case]
    sock = os.path.join(work, f"{name}.sock")
    argv = server_command(name, a.tapdiskd, a.image, sock, work, a.poll_us)
    p = start_server(argv, sock, server_pin, os.path.join(work, f"{name}.log"))
    try:
        before = cpu_ticks(p.pid)
        r = fio(f"nbd+unix:///?socket={sock}", rw, bs, depth, a.seconds, a.ramp, client_pin)
        ticks = cpu_ticks(p.pid) - before
    finally:
        stop_server(p)
    hz = os.sysconf("SC_CLK_TCK")
    r["cpu_per_k"] = (ticks / hz) * (a.seconds / (a.seconds + a.ramp)) / r["ios"] * 1000
    return r


def placement(name):
    """(server taskset prefix, client taskset prefix, description) of a placement name."""
    if name == "colocated":
        return [], [], "no pinning: servers and fio where the scheduler puts them"
    if name == "split":
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"], "server on CPU 0, fio on CPU 1 (taskset)"
    sys.exit(f"unknown placement {name!r} for the NBD cases: colocated or split")


def report(results, servers, placement_name, where):
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    cell = lambda xs: f"{med(xs, 'iops'):.0f} ({med(xs, 'mibs'):.1f})"
    others = [s for s in servers if s != "tapdiskd"]
    ratio = "tapdiskd" in servers and others
    print(f"### NBD, placement: {placement_name} ({where})\n")
    head = ["case", "fio libaio direct"] + servers
    if ratio:
        head.append(f"tapdiskd / max({', '.join(others)}) (median of per-round)")
    print("IOPS (MiB/s):\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c, r in results.items():
        row = [c, cell(r["libaio"])] + [cell(r[s]) for s in servers]
        if ratio:
            per_round = [t["iops"] / max(r[s][i]["iops"] for s in others) for i, t in enumerate(r["tapdiskd"])]
            row.append(f"**{statistics.median(per_round):.2f}** ({', '.join(f'{x:.2f}' for x in per_round)})")
        print("| " + " | ".join(row) + " |")
    print("\nServer CPU ms per 1,000 I/Os; completion latency p50 / p99 µs as fio saw it:\n")
    head = ["case"] + [f"{s} CPU" for s in servers] + ["fio libaio p50/p99"] + [f"{s} p50/p99" for s in servers]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c, r in results.items():
        row = [c] + [f"{med(r[s], 'cpu_per_k') * 1000:.1f}" for s in servers]
        row += [f"{med(r[k], 'p50'):.0f} / {med(r[k], 'p99'):.0f}" for k in ["libaio"] + servers]
        print("| " + " | ".join(row) + " |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tapdiskd", default="")
    ap.add_argument("--image", required=True)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--ramp", type=float, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--poll-us", type=int, default=0)
    ap.add_argument("--placement", default="colocated")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    servers = []
    for s in a.servers.split(","):
        why = available(s, a.tapdiskd)
        if why:
            log(f"bench-nbd: skipping {s}: {why}")
        else:
            servers.append(s)
    if not servers:
        log("bench-nbd: no NBD server to measure")
        return
    cases = a.cases.split(",")
    for c in cases:
        if c not in CASES:
            sys.exit(f"unknown NBD case {c!r}: {', '.join(CASES)}")
    work = tempfile.mkdtemp(prefix="tapdisk-bench-nbd.")
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", os.path.dirname(a.image)],
                        capture_output=True, text=True).stdout.strip()
    size = os.stat(a.image).st_size
    print(f"NBD: image {size / 2**30:g} GiB at `{a.image}` ({fs}, fully written), kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {a.seconds:g} s per case "
          f"after {a.ramp:g} s ramp; medians of {a.rounds} rounds, servers alternating (order rotated per round). "
          f"Client for every server: `fio --ioengine=nbd --uri=nbd+unix:///?socket=SOCK` (one connection). "
          f"Servers, each started fresh for every measurement:\n")
    for s in servers:
        argv = server_command(s, a.tapdiskd or "tapdiskd", a.image, "SOCK", "DIR", a.poll_us)
        print(f"- {s}: `{' '.join(argv).replace('DIR/', '')}`")
    print("- reference: `fio --ioengine=libaio --direct=1 --filename=IMAGE` (no server)\n")
    for placement_name in a.placement.split(","):
        server_pin, client_pin, where = placement(placement_name)
        results = {c: {k: [] for k in ["libaio"] + servers} for c in cases}
        for rnd in range(a.rounds):
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for c in cases:
                rw, bs, depth = CASES[c]
                r = {"libaio": fio(a.image, rw, bs, depth, a.seconds, a.ramp, client_pin)}
                for s in order:
                    r[s] = measure(s, a, c, work, server_pin, client_pin)
                for k, v in r.items():
                    results[c][k].append(v)
                log(f"[nbd {placement_name} round {rnd + 1}] {c}: " + ", ".join(
                    f"{k} {v['iops']:.0f}" + (f" cpu/1k {v['cpu_per_k'] * 1000:.1f} ms" if "cpu_per_k" in v else "")
                    for k, v in r.items()))
        report(results, servers, placement_name, where)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
