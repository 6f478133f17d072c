#!/usr/bin/env python3
"""Two tapdiskd binaries against each other (say, before and after a change), with
scripts/bench.py's own helpers: for each round and case, one `tapdiskd --cache none` daemon of
each binary in turn on the same image (the order alternates between rounds), driven by
`tapdiskd bench`; prints each round to stderr and a Markdown table of medians (IOPS, daemon CPU
per 1,000 I/Os) with every round's IOPS, so the spread can be read next to the difference.

  scripts/bench-ab.py --a OLD --b NEW --image IMG [--seconds 4] [--rounds 8] [--cases randread-4k-qd32,...]

Run as root on a fully written image (scripts/bench.sh writes one); binaries from
`swift build -c release --product tapdiskd` of the two trees. After B's run of each case, B's
own `ctl stats` latency line for that operation is printed beside the bench's p50/p99.
"""
import argparse, os, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--cases", default="randread-4k-qd1,randread-4k-qd32")
    a = p.parse_args()
    binaries = {"A": a.a, "B": a.b}
    cases = a.cases.split(",")
    results = {(c, k): [] for c in cases for k in binaries}
    work = tempfile.mkdtemp(prefix="tapdisk-ab.")
    for r in range(a.rounds):
        for c in cases:
            rw, bs, depth = B.CASES[c]
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for k in order:
                sock = f"{work}/{k}.sock"
                d = B.start_daemon(binaries[k], a.image, sock, 0, None, f"{work}/{k}.log")
                try:
                    t = B.bench(binaries[k], sock, rw, bs, depth, a.seconds, 1, [], d.pid)
                    line = ""
                    if k == "B":
                        op = "read" if "read" in rw else "write"
                        out = subprocess.run([binaries[k], "ctl", "--socket", sock, "stats"], capture_output=True,
                                             text=True).stdout.splitlines()
                        line = " | " + next((l for l in out if l.startswith(f"latency.{op}:")), "no latency line")
                finally:
                    d.terminate()
                    d.wait()
                    if os.path.exists(sock):
                        os.unlink(sock)
                results[(c, k)].append(t)
                B.log(f"round {r} {c} {k}: {t['iops']:.0f} IOPS, p50 {t['p50']} p99 {t['p99']} us, "
                      f"daemon CPU {t['cpu_per_k'] * 1000:.1f} ms per 1k I/O{line}")
    print("| case | A IOPS | B IOPS | A daemon CPU ms per 1k I/O | B | every round, A/B IOPS |")
    print("|---|---|---|---|---|---|")
    for c in cases:
        ra, rb = results[(c, "A")], results[(c, "B")]
        med = lambda xs, key: statistics.median(x[key] for x in xs)
        rounds = ", ".join(f"{x['iops']:.0f}/{y['iops']:.0f}" for x, y in zip(ra, rb))
        print(f"| {c} | {med(ra, 'iops'):.0f} | {med(rb, 'iops'):.0f} | {med(ra, 'cpu_per_k') * 1000:.1f} | "
              f"{med(rb, 'cpu_per_k') * 1000:.1f} | {rounds} |")


if __name__ == "__main__":
    main()
