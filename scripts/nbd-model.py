#!/usr/bin/python3
"""nbd-model.py: a randomized model test of an NBD server, through libnbd (python3-libnbd).

    scripts/nbd-model.py --uri 'nbd+unix:///?socket=SOCK' [--connections 4] [--depth 16]
                         [--ops 4000] [--seed 1] [--allow-errors EIO,ENOSPC] [--image PATH]

Opens several connections to one export (multi-conn) and keeps up to DEPTH commands in flight on
each: reads, writes (some with FUA), flushes, trims and write-zeroes at random 512-byte-aligned
offsets drawn from SEED. A shadow model holds what every byte must read back as. Commands that
could race (a write, trim or zero overlapping anything in flight, a read overlapping a write in
flight) are never in flight together, across all connections, so the model is exact.

The export must be all zeroes when the run starts (a fresh sparse image).

Checked:
  - every command gets exactly one completion (libnbd would also drop a connection that saw a
    reply to a handle it did not send: that ends the run as a failure);
  - every read returns what the model holds, on every byte the model knows;
  - a command that fails fails with an errno named in --allow-errors (none by default); a failed
    write, zero or trim leaves its range unknown, since the server may have written part of it;
    a trimmed range is unknown too (NBD leaves its content unspecified);
  - at the end, after a flush on every connection: the whole export read back through NBD, and the
    image file (--image) read directly, equal the model on every known byte.

Prints one JSON object on stdout (counts of commands and of errors by operation and errno name),
diagnostics on stderr. Exit status 0 when every check held, 1 otherwise, 2 on a usage error.
"""
import argparse
import errno
import json
import random
import select
import sys

import nbd

SECTOR = 512


def errno_name(e):
    """The errno name of an nbd.Error (python3-libnbd gives the name; numbers are mapped)."""
    if isinstance(e.errno, str):
        return e.errno
    return errno.errorcode.get(e.errno or 0, "errno=%s" % e.errno)


class Command:
    __slots__ = ("op", "offset", "length", "data", "buffer", "completions", "error", "connection")

    def __init__(self, op, offset, length, connection):
        self.op = op
        self.offset = offset
        self.length = length
        self.connection = connection
        self.data = None
        self.buffer = None
        self.completions = 0
        self.error = 0


class Model:
    def __init__(self, size):
        self.size = size
        self.data = bytearray(size)
        # One flag per sector: 1 when the content is unknown.
        self.unknown = bytearray(size // SECTOR)

    def set(self, offset, data):
        self.data[offset : offset + len(data)] = data
        self.mark(offset, len(data), 0)

    def mark(self, offset, length, unknown):
        first, count = offset // SECTOR, length // SECTOR
        self.unknown[first : first + count] = bytes([unknown]) * count

    def mismatch(self, offset, got):
        """The first known sector in [offset, offset+len(got)) whose content differs, or None."""
        for i in range(0, len(got), SECTOR):
            s = (offset + i) // SECTOR
            if self.unknown[s]:
                continue
            if got[i : i + SECTOR] != self.data[offset + i : offset + i + SECTOR]:
                return offset + i
        return None

    def unknown_bytes(self):
        return sum(self.unknown) * SECTOR


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-bytes", type=int, default=256 * 1024)
    ap.add_argument("--allow-errors", default="")
    ap.add_argument("--image")
    args = ap.parse_args()
    allowed = {name for name in args.allow_errors.split(",") if name}
    rng = random.Random(args.seed)
    failures = []

    def fail(message):
        if len(failures) < 20:
            print("nbd-model: " + message, file=sys.stderr)
        failures.append(message)

    handles = []
    for i in range(args.connections):
        h = nbd.NBD()
        h.set_handle_name("model-%d" % i)
        h.connect_uri(args.uri)
        handles.append(h)
    h0 = handles[0]
    size = h0.get_size()
    if args.connections > 1 and not h0.can_multi_conn():
        fail("the server does not advertise CAN_MULTI_CONN")
    can_fua, can_trim, can_zero = h0.can_fua(), h0.can_trim(), h0.can_zero()
    model = Model(size)
    max_len = max(SECTOR, min(args.max_bytes, size) // SECTOR * SECTOR)

    in_flight = []  # Commands issued and not yet completed, all connections.
    issued = []
    counts = {}  # "op" -> n; "op:ERRNO" -> n

    def count(key):
        counts[key] = counts.get(key, 0) + 1

    def conflicts(op, offset, length):
        end = offset + length
        for c in in_flight:
            if c.op == "flush" or c.offset >= end or offset >= c.offset + c.length:
                continue
            if op == "read" and c.op == "read":
                continue
            return True
        return False

    def complete(command, error):
        command.completions += 1
        command.error = error
        if command.completions != 1:
            fail("%s at %d: %d completions" % (command.op, command.offset, command.completions))
            return 1
        in_flight.remove(command)
        op = command.op
        if error:
            name = errno.errorcode.get(error, str(error))
            count("%s:%s" % (op, name))
            if name not in allowed:
                fail("%s of %d at %d failed with %s" % (op, command.length, command.offset, name))
            if op in ("write", "zero", "trim"):
                model.mark(command.offset, command.length, 1)
            return 1
        if op == "read":
            got = command.buffer.to_bytearray()
            at = model.mismatch(command.offset, got)
            if at is not None:
                fail("read of %d at %d differs from the model at byte %d" % (command.length, command.offset, at))
        elif op == "write":
            model.set(command.offset, command.data)
        elif op == "zero":
            model.set(command.offset, bytes(command.length))
        elif op == "trim":
            model.mark(command.offset, command.length, 1)
        return 1

    def issue(index, h):
        roll = rng.random()
        if roll < 0.40:
            op = "read"
        elif roll < 0.80:
            op = "write"
        elif roll < 0.86:
            op = "flush"
        elif roll < 0.93:
            op = "zero" if can_zero else "write"
        else:
            op = "trim" if can_trim else "write"
        if op == "flush":
            command = Command("flush", 0, 0, index)
        else:
            for _ in range(8):
                length = rng.randrange(1, max_len // SECTOR + 1) * SECTOR
                offset = rng.randrange(0, (size - length) // SECTOR + 1) * SECTOR
                if not conflicts(op, offset, length):
                    break
            else:
                return False
            command = Command(op, offset, length, index)
        in_flight.append(command)
        issued.append(command)
        count(op)
        done = lambda err, c=command: complete(c, err.value)
        if op == "read":
            command.buffer = nbd.Buffer(length)
            h.aio_pread(command.buffer, offset, completion=done)
        elif op == "write":
            command.data = rng.randbytes(length)
            command.buffer = nbd.Buffer.from_bytearray(bytearray(command.data))
            flags = nbd.CMD_FLAG_FUA if can_fua and rng.random() < 0.1 else 0
            h.aio_pwrite(command.buffer, offset, completion=done, flags=flags)
        elif op == "zero":
            h.aio_zero(length, offset, completion=done)
        elif op == "trim":
            h.aio_trim(length, offset, completion=done)
        else:
            h.aio_flush(completion=done)
        return True

    def pump(timeout):
        """One round of select over every connection with work, then let libnbd read/write."""
        readers, writers = {}, {}
        for h in handles:
            direction = h.aio_get_direction()
            fd = h.aio_get_fd()
            if direction & nbd.AIO_DIRECTION_READ:
                readers[fd] = h
            if direction & nbd.AIO_DIRECTION_WRITE:
                writers[fd] = h
        r, w, _ = select.select(list(readers), list(writers), [], timeout)
        for fd in r:
            readers[fd].aio_notify_read()
        for fd in w:
            writers[fd].aio_notify_write()

    while len(issued) < args.ops or in_flight:
        for index, h in enumerate(handles):
            while len(issued) < args.ops and h.aio_in_flight() < args.depth:
                if not issue(index, h):
                    break
        if in_flight:
            pump(30)
        for h in handles:
            if h.aio_is_dead():
                fail("connection %s died: %s" % (h.get_handle_name(), nbd.get_error()))
                print(json.dumps({"failures": len(failures), "counts": counts}))
                return 1

    # Make everything durable on every connection, then read the whole export back.
    for h in handles:
        try:
            h.flush()
        except nbd.Error as e:
            name = errno_name(e)
            count("final-flush:%s" % name)
            if name not in allowed:
                fail("final flush on %s: %s" % (h.get_handle_name(), e))
    chunk = 4 << 20
    for offset in range(0, size, chunk):
        try:
            got = h0.pread(min(chunk, size - offset), offset)
        except nbd.Error as e:
            # An injected fault may hit the read-back too; the image file is still compared.
            name = errno_name(e)
            count("final-read:%s" % name)
            if name not in allowed:
                fail("final read of %d: %s" % (offset, e))
            continue
        at = model.mismatch(offset, got)
        if at is not None:
            fail("final read back through NBD differs from the model at byte %d" % at)
            break
    for h in handles:
        h.shutdown()
    if args.image:
        with open(args.image, "rb") as f:
            image = f.read()
        if len(image) != size:
            fail("the image holds %d bytes, the export %d" % (len(image), size))
        else:
            at = model.mismatch(0, image)
            if at is not None:
                fail("the image file differs from the model at byte %d" % at)

    multiple = [c for c in issued if c.completions != 1]
    summary = {
        "seed": args.seed,
        "connections": args.connections,
        "depth": args.depth,
        "size": size,
        "issued": len(issued),
        "completed-once": len(issued) - len(multiple),
        "not-completed-once": len(multiple),
        "unknown-bytes": model.unknown_bytes(),
        "counts": counts,
        "failures": len(failures),
    }
    if multiple:
        fail("%d commands did not complete exactly once" % len(multiple))
        summary["failures"] = len(failures)
    print(json.dumps(summary, sort_keys=True))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
