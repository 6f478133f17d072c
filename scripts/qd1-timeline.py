#!/usr/bin/env python3
"""Where one QD1 4 KiB I/O spends its time: fio against tapdiskd, reads against writes.

    scripts/qd1-timeline.py --tapdiskd .build/release/tapdiskd --image IMG [--cpu N] [--rounds R]

Run as root, with perf. For each round and each of fio randread, tapdiskd randread, fio randwrite,
tapdiskd randwrite (QD1, 4 KiB, O_DIRECT, libaio), it starts the load, records 0.7 s of scheduler,
interrupt, workqueue, block and syscall tracepoints on all CPUs (`perf record -a`), and follows
every request from `block_rq_issue` to the next one: the device, the completion work (for writes,
ext4 completes O_DIRECT AIO from a `dio` kworker), the wakeup of the process that waits for the
completion (fio, or the daemon), and for tapdiskd the answer to `tapdiskd bench`, its next request
and the kick back to the daemon. It prints a Markdown table of per-step medians in µs (median over
the rounds of each round's median). With --cpu N the daemon (`--cpu N`), fio and `tapdiskd bench`
(taskset) all run on CPU N; without it the scheduler places them, and the table says where they ran.
"""
import argparse, collections, os, re, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (start_daemon)

EVENTS = ("sched:sched_switch,sched:sched_wakeup,irq:irq_handler_entry,workqueue:workqueue_execute_start,"
          "workqueue:workqueue_execute_end,block:block_rq_issue,block:block_rq_complete,"
          "raw_syscalls:sys_enter")
LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
NR_WRITE, NR_IO_SUBMIT = 1, 209  # x86_64
STEPS = [
    ("device: issue → complete", "issue", "complete"),
    ("complete → dio kworker runs", "complete", "wq_start"),
    ("kworker: iomap_dio_complete_work", "wq_start", "wq_end"),
    ("complete → waiter woken", "complete", "w_wake"),
    ("waiter woken → running", "w_wake", "w_run"),
    ("daemon running → notify write", "w_run", "notify"),
    ("notify → bench running", "notify", "c_run"),
    ("bench running → kick write", "c_run", "kick"),
    ("kick → daemon io_submit", "kick", "submit"),
    ("waiter running → io_submit", "w_run", "submit"),
    ("io_submit → next issue", "submit", "next_issue"),
    ("**complete → next issue (software)**", "complete", "next_issue"),
    ("**issue → next issue**", "issue", "next_issue"),
]


def events(data):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,cpu,time,event,trace"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, cpu, t, name, rest = m.groups()
            yield comm, int(pid), int(cpu), float(t) * 1e6, name, rest


def sector(rest):
    return rest.split("()")[1].split("+")[0].strip()


def timeline(data, waiter, client, writes):
    """One dict of timestamps per request issued by `waiter` (None: fio's job, found by its issues)."""
    evs = list(events(data))
    if waiter is None:
        issuers = collections.Counter(pid for comm, pid, _, _, name, _ in evs
                                      if name == "block:block_rq_issue" and comm.startswith("fio"))
        waiter = issuers.most_common(1)[0][0]
    ios, cur = [], None
    for comm, pid, cpu, t, name, rest in evs:
        if name == "block:block_rq_issue" and pid == waiter:
            if cur:
                cur["next_issue"] = t
                ios.append(cur)
            cur = {"issue": t, "sector": sector(rest)}
        elif cur is None:
            continue
        elif "complete" not in cur:
            if name == "block:block_rq_complete" and sector(rest) == cur["sector"]:
                cur["complete"], cur["irq_cpu"] = t, cpu
        elif name.startswith("workqueue:") and "iomap_dio_complete_work" in rest:
            # Only a write's own completion: started before its waiter wakes (the work wakes it),
            # on the interrupt's CPU (the dio workqueue is per CPU); not other processes' writes.
            if writes and cpu == cur["irq_cpu"]:
                if name.endswith("start") and "w_wake" not in cur:
                    cur.setdefault("wq_start", t)
                elif name.endswith("end") and "wq_start" in cur:
                    cur.setdefault("wq_end", t)
        elif name == "sched:sched_wakeup" and f"pid={waiter} " in rest and "w_wake" not in cur:
            cur["w_wake"], cur["w_cpu"] = t, int(rest.split("target_cpu=")[1])
        elif name == "sched:sched_switch" and f"next_pid={waiter} " in rest and "w_wake" in cur:
            cur.setdefault("w_run", t)
        elif name == "raw_syscalls:sys_enter" and pid == waiter and "w_run" in cur:
            nr = int(rest.split()[1])
            if client and nr == NR_WRITE:
                cur.setdefault("notify", t)
            if nr == NR_IO_SUBMIT:
                cur.setdefault("submit", t)
        elif client and name == "sched:sched_wakeup" and f"pid={client} " in rest and "notify" in cur:
            if "c_wake" not in cur:
                cur["c_wake"], cur["c_cpu"] = t, int(rest.split("target_cpu=")[1])
        elif client and name == "sched:sched_switch" and f"next_pid={client} " in rest and "c_wake" in cur:
            cur.setdefault("c_run", t)
        elif client and name == "raw_syscalls:sys_enter" and pid == client and "c_run" in cur:
            if int(rest.split()[1]) == NR_WRITE:
                cur.setdefault("kick", t)
    return [x for x in ios if "complete" in x]


def record(cmd, data, settle=1.2, seconds=0.7):
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    time.sleep(settle)
    subprocess.run(["perf", "record", "-q", "-a", "-o", data, "-e", EVENTS, "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if load.wait() != 0:
        sys.exit(f"{cmd[0]} failed")
    return load.pid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tapdiskd", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tapdisk-timeline.")
    socket, data = os.path.join(work, "d.sock"), os.path.join(work, "perf.data")
    pin = ["taskset", "-c", str(a.cpu)] if a.cpu is not None else []
    daemon = bench.start_daemon(a.tapdiskd, a.image, socket, 0, a.cpu, os.path.join(work, "d.log"))
    columns = [("fio", "randread"), ("tapdiskd", "randread"), ("fio", "randwrite"), ("tapdiskd", "randwrite")]
    medians = {c: collections.defaultdict(list) for c in columns}
    placement = {c: collections.Counter() for c in columns}
    try:
        for rnd in range(a.rounds):
            for tool, rw in columns:
                if tool == "fio":
                    cmd = pin + ["fio", "--name=x", f"--filename={a.image}", "--ioengine=libaio", "--direct=1",
                                 f"--rw={rw}", "--bs=4k", "--iodepth=1", "--runtime=3", "--time_based"]
                    record(cmd, data)
                    ios = timeline(data, None, None, rw.endswith("write"))
                else:
                    cmd = pin + [a.tapdiskd, "bench", "--socket", socket, "--rw", rw, "--seconds", "3"]
                    client = record(cmd, data)
                    ios = timeline(data, daemon.pid, client, rw.endswith("write"))
                for label, start, end in STEPS:
                    xs = [x[end] - x[start] for x in ios if start in x and end in x]
                    if xs:
                        medians[(tool, rw)][label].append(statistics.median(xs))
                placement[(tool, rw)].update((x.get("irq_cpu"), x.get("w_cpu"), x.get("c_cpu")) for x in ios)
                print(f"[round {rnd + 1}] {tool} {rw}: {len(ios)} requests", file=sys.stderr, flush=True)
    finally:
        daemon.terminate()
        daemon.wait()
        for f in (data, data + ".old"):
            if os.path.exists(f):
                os.unlink(f)
    print("| µs, median per request | " + " | ".join(f"{t} {rw}" for t, rw in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, _, _ in STEPS:
        cells = [f"{statistics.median(medians[c][label]):.0f}" if medians[c][label] else "" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nCPUs (interrupt, waiter, bench) per request, most common first:")
    for c in columns:
        top = ", ".join(f"{k}: {n}" for k, n in placement[c].most_common(3))
        print(f"- {c[0]} {c[1]}: {top}")


if __name__ == "__main__":
    main()
