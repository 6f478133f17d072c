#!/usr/bin/env python3
"""socket-supervisor.py: what systemd does for tapdiskd-vhost@.socket + .service, for tests and
benchmarks on machines where systemd is not PID 1 (containers).

    socket-supervisor.py --control PATH --vhost-user PATH --commands FIFO --events FILE \\
        [--log FILE] -- TAPDISKD ARGS...

It binds and listens on the control socket (SOCK_SEQPACKET) and the vhost-user socket
(SOCK_STREAM) itself and keeps both open for its whole life. The daemon is started with them as
fds 3 and 4 and LISTEN_PID/LISTEN_FDS=2/LISTEN_FDNAMES, as systemd's socket activation passes
them (sd_listen_fds(3)). Commands, one per line on the FIFO:

    restart   SIGTERM, wait for the exit (the daemon drains), start a new daemon
              (`systemctl restart tapdiskd-vhost@NAME.service`)
    kill      SIGKILL; the restart is the one for a daemon that died (below)
    stop      SIGTERM, wait, exit

A daemon that exits without being asked (kill -9, a crash) is started again at once
(Restart=on-failure with no RestartSec= delay), up to 5 deaths within 10 s. Every step is appended to the events file as
"<CLOCK_MONOTONIC seconds> <event> pid=<pid> [status=...]", and the current daemon's pid is in
the file EVENTS.pid. Other listeners (an NBD socket) are added with --listen NAME:TYPE:PATH
(TYPE stream or seqpacket; NAME goes into LISTEN_FDNAMES); --control is optional.
"""
import argparse
import os
import select
import signal
import socket
import sys
import time


def listen(kind, path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    os.chmod(path, 0o600)
    s.listen(64)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control")
    ap.add_argument("--vhost-user")
    ap.add_argument("--listen", action="append", default=[], help="NAME:stream:PATH or NAME:seqpacket:PATH")
    ap.add_argument("--commands", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--log", default="/dev/null")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not argv:
        ap.error("no daemon command")

    sockets = [("control", listen(socket.SOCK_SEQPACKET, a.control))] if a.control else []
    if a.vhost_user:
        sockets.append(("vhost-user", listen(socket.SOCK_STREAM, a.vhost_user)))
    kinds = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}
    for spec in a.listen:
        name, kind, path = spec.split(":", 2)
        sockets.append((name, listen(kinds[kind], path)))
    # Out of the way of 3, 4, ... so dup2 in the child never overwrites a listener it still needs.
    held = [os.dup2(s.fileno(), 100 + i, inheritable=False) for i, (_, s) in enumerate(sockets)]
    names = ":".join(n for n, _ in sockets)

    events = open(a.events, "a", buffering=1)
    pidfile = a.events + ".pid"

    def event(what, pid, extra=""):
        events.write(f"{time.monotonic():.6f} {what} pid={pid}{extra}\n")

    def start():
        log = os.open(a.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(log, 1)
                os.dup2(log, 2)
                for i, fd in enumerate(held):
                    os.dup2(fd, 3 + i)  # inheritable, as systemd passes them
                os.closerange(3 + len(held), 1024)
                env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(held)), LISTEN_FDNAMES=names)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        os.close(log)
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{pid}\n")
        os.rename(pidfile + ".tmp", pidfile)
        event("started", pid)
        return pid

    # SIGCHLD wakes the select below at once: a crashed daemon is restarted without polling delay.
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    commands = os.open(a.commands, os.O_RDWR | os.O_NONBLOCK)  # RDWR: never EOF when writers leave
    pending = b""
    deaths = []
    pid = start()

    def stop(p):
        event("sigterm", p)
        os.kill(p, signal.SIGTERM)
        _, status = os.waitpid(p, 0)
        event("exited", p, f" status={status}")

    while True:
        try:
            ready, _, _ = select.select([rfd, commands], [], [])
        except InterruptedError:
            continue
        if rfd in ready:
            try:
                os.read(rfd, 4096)
            except BlockingIOError:
                pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            event("died", pid, f" status={status}")
            # StartLimitBurst=5 within 10 s, as systemd's default: a daemon that cannot start
            # is not restarted forever.
            deaths = [t for t in deaths if time.monotonic() - t < 10] + [time.monotonic()]
            if len(deaths) >= 5:
                print(f"socket-supervisor: {argv[0]} died 5 times within 10 s; giving up", file=sys.stderr)
                return 1
            pid = start()
        if commands in ready:
            try:
                pending += os.read(commands, 4096)
            except BlockingIOError:
                pass
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode().strip()
                if cmd == "restart":
                    stop(pid)
                    pid = start()
                elif cmd == "kill":
                    event("sigkill", pid)
                    os.kill(pid, signal.SIGKILL)
                elif cmd == "stop":
                    stop(pid)
                    for path in [a.control, a.vhost_user] + [s.split(":", 2)[2] for s in a.listen]:
                        if path and os.path.exists(path):
                            os.unlink(path)
                    return 0
                elif cmd:
                    print(f"socket-supervisor: unknown command {cmd!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
