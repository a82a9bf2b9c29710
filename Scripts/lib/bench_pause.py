"""Scripts/lib/bench_pause.py — the driver behind Scripts/bench-pause.

A redis server (Debian's redis-tools; redis-server is redis-check-rdb run
under that name) runs in a crsnap container; a client process outside it
holds one connection and sends GET every 2 ms, recording when each request
went out and when its answer came (across reconnects). The driver fills the
server to each memory size and, round after round in rotating order, runs
`crsnap take`, a bare CRIU dump (`crsnap _bench-dump`: CRIU freezes the
cgroup itself), `crsnap rollback`, `crsnap rollback --lazy` and a bare CRIU
restore (`crsnap _bench-restore`), marking each window. Afterwards every
window is matched with the client's samples: the longest wait of a request
that was outstanding in it and, for the rollbacks and the restore, the time
from the command's start until the first answer that is the snapshot's and
the outage before it (from the last answer before it).

Run through Scripts/bench-pause (it checks root, memory and disk, builds
crsnap and picks the store); `python3 bench_pause.py --client PORT FILE` is
the client.
"""

import argparse
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

REDIS = "/usr/bin/redis-check-rdb"
VALUE = 1 << 20  # bytes per key filled in
FILES_CHUNK = 64 << 20


def now_ns():
    return time.monotonic_ns()


# --- RESP, just enough -------------------------------------------------------

def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Reply:
    """Reads one RESP reply at a time from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError("redis: " + rest.decode(errors="replace"))
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(max(65536, n + 2 - len(self.buf)))
                if not chunk:
                    raise ConnectionError("server closed the connection")
                self.buf += chunk
            value, self.buf = self.buf[:n], self.buf[n + 2:]
            return value
        raise RuntimeError("unexpected reply %r" % line[:40])


def connect(port, timeout=None, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def call(port, *args, host="127.0.0.1"):
    with connect(port, timeout=30, host=host) as s:
        s.sendall(command(*args))
        return Reply(s).read()


# --- the client --------------------------------------------------------------

def client(port, path, period_ns=2_000_000, host="127.0.0.1"):
    """One connection, GET epoch every period (right after a late answer).
    Each line: sent_ns, answered_ns, reconnects, value. A lost connection is
    made again (every millisecond until the server listens) and the request
    sent again; its wait counts from the first send."""
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    out = open(path, "w", buffering=1 << 20)
    out.write("sent_ns,answered_ns,reconnects,value\n")
    sock = None
    reader = None
    request = command("GET", "epoch")
    next_send = now_ns()
    while not stop:
        t = now_ns()
        if t < next_send:
            time.sleep((next_send - t) / 1e9)
        sent = now_ns()
        next_send = sent + period_ns
        reconnects = 0
        while not stop:
            try:
                if sock is None:
                    sock = connect(port, timeout=10, host=host)
                    reader = Reply(sock)
                sock.sendall(request)
                value = reader.read()
                break
            except (OSError, ConnectionError):
                if sock is not None:
                    sock.close()
                sock = None
                reconnects += 1
                time.sleep(0.001)
        else:
            break
        out.write("%d,%d,%d,%s\n" % (sent, now_ns(), reconnects, (value or b"").decode(errors="replace")))
    out.close()


# --- the driver --------------------------------------------------------------

def stop_clients(clients):
    """Ends the clients ({key: (process, samples file)}) so that they write
    out their samples; returns {key: samples file}."""
    paths = {}
    for key, (proc, path) in clients.items():
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        paths[key] = path
    return paths


def kill_clients(clients):
    """Ends the clients at once, after a failure (their samples are not needed)."""
    for proc, _ in clients.values():
        proc.kill()
        proc.wait()


def run_and_record(bench, me, key, fields, csv_path):
    """Runs `bench` (its run() gives rows and the clients' sample files,
    cleanup() always follows, SIGTERM and SIGINT stop it), matches each
    row with the samples of its client (`row[key]`), writes the rows as
    CSV; returns them."""
    def on_signal(signum, _):
        raise SystemExit("%s: stopped by signal %d" % (me, signum))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        rows, paths = bench.run()
    finally:
        bench.cleanup()
    samples = {k: load_samples(path) for k, path in paths.items()}
    for r in rows:
        client_figures(r, samples[r[key]])
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print("%s: samples: %s (per operation), %s (every request)" % (me, csv_path, " ".join(paths.values())),
          file=sys.stderr)
    return rows


def remove_containers(crsnap, names, me):
    for n in names:
        r = crsnap("rm", "--force", n, check=False)
        if r.returncode != 0:
            print("%s: warning: could not remove %s: %s" % (me, n, r.stderr.strip()), file=sys.stderr)


class Bench:
    def __init__(self, a):
        self.a = a
        self.bin = a.bin
        self.env = dict(os.environ, CRSNAP_STORE=a.store)
        self.name = "bench-pause-%d" % os.getpid()
        self.plain = self.name + "-nofiles"
        self.port = free_port()
        self.port_plain = free_port()
        self.ports = {self.name: self.port, self.plain: self.port_plain}
        self.clients = {}  # container -> (client process, its samples file)
        self.started = []
        self.filled = {}

    def crsnap(self, *args, check=True):
        r = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit("bench-pause: crsnap %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()))
        return r

    def crsnap_measured(self, *args):
        """Runs crsnap, sampling its peak RSS (VmHWM) until it exits."""
        p = subprocess.Popen([self.bin, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def sample():
            while p.poll() is None:
                peak[0] = max(peak[0], peak_rss_kib(p.pid))
                time.sleep(0.002)

        t = threading.Thread(target=sample)
        t.start()
        out, err = p.communicate()
        t.join()
        if p.returncode != 0:
            raise SystemExit("bench-pause: crsnap %s failed (%d): %s" % (" ".join(args), p.returncode, err.strip()))
        return out, peak[0]

    def start(self, name, port):
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--maxmemory", "0", "--daemonize", "no"]
        # redis-server is redis-check-rdb under another name (Debian): exec it so.
        launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        self.crsnap("run", name, "--", "/usr/bin/python3", "-c", launcher, REDIS, *argv)
        self.started.append(name)
        deadline = time.time() + 30
        while True:
            try:
                if call(port, "PING") == b"PONG":
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("bench-pause: redis in %s did not answer within 30 s:\n%s"
                                 % (name, self.crsnap("logs", name, check=False).stdout[-2000:]))
            time.sleep(0.1)

    def fill(self, port, mib):
        """Adds 1 MiB values until the server holds `mib` MiB of them."""
        have = self.filled.get(port, 0)
        block = bytearray(os.urandom(VALUE))
        with connect(port, timeout=60) as s:
            r = Reply(s)
            pending = 0
            for i in range(have, mib):
                block[:8] = i.to_bytes(8, "little")
                s.sendall(command("SET", "fill:%d" % i, bytes(block)))
                pending += 1
                if pending == 16:
                    for _ in range(pending):
                        r.read()
                    pending = 0
            for _ in range(pending):
                r.read()
        self.filled[port] = mib

    def write_files(self, name, mib):
        root = "%s/containers/%s/root/var/lib/bench-pause" % (self.a.store, name)
        os.makedirs(root, exist_ok=True)
        block = os.urandom(FILES_CHUNK)
        for i in range(mib * (1 << 20) // FILES_CHUNK):
            with open("%s/data-%03d" % (root, i), "wb") as f:
                f.write(block)
        os.sync()

    def rss_kib(self, name):
        with open("%s/containers/%s/state.json" % (self.a.store, name)) as f:
            return peak_rss_kib(json.load(f)["monitorPid"])

    # One measured operation each; returns the row (without client figures).
    def op_take(self, size, rnd, name, files, stage="auto"):
        t0 = now_ns()
        out, peak = self.crsnap_measured("take", "--json", "--stage", stage, name)
        t1 = now_ns()
        d = json.loads(out)
        self.crsnap("delete", d["id"])
        s = d["stats"]
        kind = "take-store" if stage == "store" else "take" if files else "take-nofiles"
        return dict(kind=kind, start_ns=t0, end_ns=t1, pause_ms=s.get("pause_ms"), staging_copy_ms=s.get("staging_copy_ms"),
                    fs_snapshot_ms=s.get("fs_snapshot_ms"), checksum_ms=s.get("checksum_ms"),
                    freezing_ms=s.get("freezing_ms"), frozen_ms=s["frozen_ms"], memdump_ms=d["criu"]["memdump_ms"],
                    peak_rss_kib=peak, files_mib=self.a.files_mib if files else 0)

    def op_bare(self, size, rnd, name, files):
        scratch = "%s/bench-pause-scratch-%d" % (self.a.store_root, os.getpid())
        t0 = now_ns()
        out, peak = self.crsnap_measured("_bench-dump", "--scratch", scratch, name)
        t1 = now_ns()
        d = json.loads(out)
        return dict(kind="bare", start_ns=t0, end_ns=t1, freezing_ms=d["freezing_ms"], frozen_ms=d["frozen_ms"],
                    memdump_ms=d["memdump_ms"], peak_rss_kib=peak, files_mib=self.a.files_mib)

    def op_rollback(self, size, rnd, name, files, lazy=False):
        base = self.base[name]
        t0 = now_ns()
        out, peak = self.crsnap_measured("rollback", "--json", *(["--lazy"] if lazy else []), base)
        t1 = now_ns()
        d = json.loads(out)
        if d.get("pre_rollback"):
            self.crsnap("delete", d["pre_rollback"])
        # The live value again, so that the next rollback changes it back.
        call(self.ports[name], "SET", "epoch", "live-%d-%d" % (size, rnd))
        s = d["stats"]
        kind = "rollback-lazy" if lazy else "rollback" if files else "rollback-nofiles"
        return dict(kind=kind, start_ns=t0, end_ns=t1, total_ms=s.get("total_ms"), kill_ms=s.get("kill_ms"),
                    flush_ms=s.get("flush_ms"), fs_ms=s.get("fs_ms"), lazy_pages_ms=s.get("lazy_pages_ms"),
                    restore_ms=s.get("restore_ms"), pre_rollback_ms=s.get("pre_rollback_ms"), peak_rss_kib=peak,
                    monitor_rss_kib=self.rss_kib(name), files_mib=self.a.files_mib, expect="base-%d" % size)

    def op_restore(self, size, rnd, name, files):
        """A bare CRIU restore of the same images: the tasks killed and
        restored, no verification, no pre-rollback snapshot, no files."""
        t0 = now_ns()
        out, peak = self.crsnap_measured("_bench-restore", self.base[name])
        t1 = now_ns()
        call(self.ports[name], "SET", "epoch", "live-%d-%d" % (size, rnd))
        s = json.loads(out)
        return dict(kind="restore-bare", start_ns=t0, end_ns=t1, total_ms=s.get("total_ms"), kill_ms=s.get("kill_ms"),
                    restore_ms=s.get("restore_ms"), peak_rss_kib=peak, files_mib=self.a.files_mib,
                    expect="base-%d" % size)

    def run(self):
        a = self.a
        self.bandwidth = memcpy_bandwidth()
        print("bench-pause: memory copy bandwidth %.2f GB/s (median of 5 copies of 256 MiB)" % self.bandwidth,
              file=sys.stderr)
        self.start(self.name, self.port)
        self.start(self.plain, self.port_plain)
        if a.files_mib:
            print("bench-pause: writing %d MiB of files into %s" % (a.files_mib, self.name), file=sys.stderr)
            self.write_files(self.name, a.files_mib)
        for name, port, tag in ((self.name, self.port, "files"), (self.plain, self.port_plain, "nofiles")):
            path = os.path.join(a.outdir, "bench-pause-client-%s.csv" % tag)
            self.clients[name] = (subprocess.Popen([sys.executable, __file__, "--client", str(port), path]), path)
        time.sleep(0.5)
        rows = []
        self.base = {}
        for size in a.sizes:
            print("bench-pause: %d MiB: filling" % size, file=sys.stderr)
            self.fill(self.port, size)
            take_store = lambda size, rnd, name, files: self.op_take(size, rnd, name, files, stage="store")
            lazy = lambda size, rnd, name, files: self.op_rollback(size, rnd, name, files, lazy=True)
            ops = [("take", self.op_take, self.name, True), ("bare", self.op_bare, self.name, True),
                   ("rollback", self.op_rollback, self.name, True), ("take-store", take_store, self.name, True),
                   ("rollback-lazy", lazy, self.name, True), ("restore-bare", self.op_restore, self.name, True)]
            names = [self.name]
            if size == a.sizes[0]:
                # The same server without files, with the same history (it is
                # rolled back too): what files add to a take's pause.
                self.fill(self.port_plain, size)
                ops += [("take-nofiles", self.op_take, self.plain, False),
                        ("rollback-nofiles", self.op_rollback, self.plain, False)]
                names.append(self.plain)
            # The snapshot every rollback of this size goes back to.
            for name in names:
                call(self.ports[name], "SET", "epoch", "base-%d" % size)
                old = self.base.get(name)
                self.base[name] = self.crsnap("take", name).stdout.strip()
                if old:
                    self.crsnap("delete", old)
                call(self.ports[name], "SET", "epoch", "live-%d" % size)
            # One warm-up of each, not recorded; then rounds in rotating order.
            for _, op, name, files in ops:
                op(size, 0, name, files)
            for rnd in range(1, a.rounds + 1):
                k = rnd % len(ops)
                for kind, op, name, files in ops[k:] + ops[:k]:
                    row = op(size, rnd, name, files)
                    row.update(size_mib=size, round=rnd, container=name)
                    rows.append(row)
                    time.sleep(0.3)
                print("bench-pause: %d MiB: round %d of %d" % (size, rnd, a.rounds), file=sys.stderr)
        time.sleep(0.5)
        paths = stop_clients(self.clients)
        self.clients = {}
        return rows, paths

    def cleanup(self):
        kill_clients(self.clients)
        remove_containers(self.crsnap, self.started, "bench-pause")
        scratch = "%s/bench-pause-scratch-%d" % (self.a.store_root, os.getpid())
        if os.path.isdir(scratch):
            subprocess.run(["rm", "-rf", "--one-file-system", "--", scratch])


def peak_rss_kib(pid):
    """VmHWM of `pid` in KiB, 0 once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memcpy_bandwidth(mib=256, times=5):
    """GB/s of a plain memory copy (memcpy through memoryview), median of `times`."""
    src = bytearray(os.urandom(1 << 20)) * mib
    dst = bytearray(len(src))
    took = []
    for _ in range(times):
        t = time.perf_counter()
        memoryview(dst)[:] = memoryview(src)
        took.append(time.perf_counter() - t)
    return len(src) / statistics.median(took) / 1e9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_samples(path):
    out = []
    with open(path) as f:
        for r in csv.DictReader(f):
            out.append((int(r["sent_ns"]), int(r["answered_ns"]), int(r["reconnects"]), r["value"]))
    return out


def client_figures(row, samples):
    """The longest wait of a request outstanding during the window, the
    requests in it, and (rollback, restore) the time from the start until the
    first answer with the snapshot's value and the outage that answer ended:
    the time since the answer before it (the server was stopped in between;
    a rollback's pre-rollback snapshot pauses it earlier, a shorter gap).
    Without a value to wait for (`expect`), the outage is the longest time
    without an answer that overlaps the window."""
    t0, t1 = row["start_ns"], row["end_ns"]
    waits = [(a - s) / 1e6 for s, a, _, _ in samples if a >= t0 and s <= t1]
    row["longest_wait_ms"] = max(waits) if waits else None
    row["requests"] = len(waits)
    if row.get("expect"):
        first = next((a for s, a, _, v in samples if a >= t0 and v == row["expect"]), None)
        row["correct_after_ms"] = (first - t0) / 1e6 if first else None
        # The longest wait can end after the command returned (the restored
        # server answers later): follow the samples to the first correct one.
        if first:
            waits = [(a - s) / 1e6 for s, a, _, _ in samples if a >= t0 and s <= first]
            row["longest_wait_ms"] = max(waits)
            before = [a for _, a, _, _ in samples if a < first]
            row["outage_ms"] = (first - max(before)) / 1e6 if before else None
    else:
        # Nothing tells the answers before from those after (a service that
        # moved with its data): the outage is the longest time without an
        # answer that overlaps the window.
        answers = sorted(a for _, a, _, _ in samples)
        gaps = [b - a for a, b in zip(answers, answers[1:]) if b >= t0 and a <= t1]
        row["outage_ms"] = max(gaps) / 1e6 if gaps else None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, f="%.1f"):
    return "-" if x is None else f % x


def report(rows, a):
    kinds = ["take", "take-store", "bare", "rollback", "take-nofiles"]
    print()
    print("client's longest wait (ms) per operation: median [min-max] of %d rounds; redis in a container, GET every 2 ms"
          % a.rounds)
    print("%-7s %-22s %-22s %-22s %-22s %-22s" % ("MiB", "crsnap take", "take --stage store", "bare CRIU dump",
                                                  "crsnap rollback", "take, no files"))
    for size in a.sizes:
        cells = []
        for k in kinds:
            w = [r["longest_wait_ms"] for r in rows if r["size_mib"] == size and r["kind"] == k and r["longest_wait_ms"]]
            cells.append("%s [%s-%s]" % (fmt(med(w)), fmt(min(w)), fmt(max(w))) if w else "-")
        print("%-7d %-22s %-22s %-22s %-22s %-22s" % (size, *cells))
    print()
    print("%-9s %9s %9s %10s %10s %10s %12s %12s %10s" % ("MiB", "pause", "freezing", "frozen", "bare frz", "take/bare",
                                                          "wait/frozen", "rb correct", "rb total"))
    goals = []
    for size in a.sizes:
        sel = lambda k: [r for r in rows if r["size_mib"] == size and r["kind"] == k]
        take, bare, rb = sel("take"), sel("bare"), sel("rollback")
        wt, wb = med([r["longest_wait_ms"] for r in take]), med([r["longest_wait_ms"] for r in bare])
        ratio = wt / wb if wt and wb else None
        per_take = med([r["longest_wait_ms"] / r["frozen_ms"] for r in take if r["longest_wait_ms"] and r["frozen_ms"]])
        print("%-9d %9s %9s %10s %10s %10s %12s %12s %10s" % (
            size, fmt(med([r["pause_ms"] for r in take])), fmt(med([r["freezing_ms"] for r in take]), "%.2f"),
            fmt(med([r["frozen_ms"] for r in take])), fmt(med([r["freezing_ms"] for r in bare])), fmt(ratio, "%.2fx"),
            fmt(per_take, "%.2fx"), fmt(med([r.get("correct_after_ms") for r in rb])),
            fmt(med([r.get("total_ms") for r in rb]))))
        if size == a.sizes[0]:
            goals.append(("take's wait <= 0.75x bare CRIU's at %d MiB" % size, ratio, ratio is not None and ratio <= 0.75))
        goals.append(("take's wait <= 1.10x CRIU's frozen_ms (%d MiB, median per take)" % size, per_take,
                      per_take is not None and per_take <= 1.10))
    freezing = [r["freezing_ms"] for r in rows if r["kind"] in ("take", "take-nofiles") and r["freezing_ms"] is not None]
    goals.append(("freezing_ms <= 5 ms in every take (max)", max(freezing) if freezing else None,
                  bool(freezing) and max(freezing) <= 5))
    s0 = a.sizes[0]
    wf = med([r["longest_wait_ms"] for r in rows if r["size_mib"] == s0 and r["kind"] == "take"])
    wn = med([r["longest_wait_ms"] for r in rows if r["size_mib"] == s0 and r["kind"] == "take-nofiles"])
    flat = wf / wn if wf and wn else None
    goals.append(("take's wait with %d MiB of files <= 1.05x without (%d MiB)" % (a.files_mib, s0), flat,
                  flat is not None and flat <= 1.05))
    for key in ("fs_snapshot_ms", "memdump_ms"):
        f = med([r.get(key) for r in rows if r["size_mib"] == s0 and r["kind"] == "take"])
        n = med([r.get(key) for r in rows if r["size_mib"] == s0 and r["kind"] == "take-nofiles"])
        print("%d MiB, median %s: with %d MiB of files %s, without %s" % (s0, key, a.files_mib, fmt(f, "%.2f"),
                                                                          fmt(n, "%.2f")))
    rss = max([r["peak_rss_kib"] for r in rows if r["kind"] in ("take", "rollback", "rollback-lazy")] or [0]) / 1024
    mon = max([r.get("monitor_rss_kib") or 0 for r in rows]) / 1024
    goals.append(("crsnap's peak RSS <= 50 MiB (take, rollback; the monitor)", max(rss, mon), max(rss, mon) <= 50))
    print()
    print("where the frozen time goes, medians (ms): CRIU's memdump with the images staged in memory (take) and written to")
    print("the store (take --stage store), and what copying the server's memory once costs at %.2f GB/s (memcpy, this run)"
          % a.bandwidth)
    print("%-9s %11s %11s %11s %11s %11s %11s" % ("MiB", "memdump mem", "memdump sto", "pause mem", "pause sto",
                                                   "mem/store", "memcpy floor"))
    for size in a.sizes:
        tm = [r for r in rows if r["size_mib"] == size and r["kind"] == "take"]
        ts = [r for r in rows if r["size_mib"] == size and r["kind"] == "take-store"]
        pm, ps = med([r["pause_ms"] for r in tm]), med([r["pause_ms"] for r in ts])
        print("%-9d %11s %11s %11s %11s %11s %11s" % (
            size, fmt(med([r["memdump_ms"] for r in tm])), fmt(med([r["memdump_ms"] for r in ts])), fmt(pm), fmt(ps),
            fmt(pm / ps if pm and ps else None, "%.2fx"), fmt(size * (1 << 20) / a.bandwidth / 1e6)))
    print()
    print("rollback, medians (ms): the client's longest wait and its outage (from the last answer before the first")
    print("correct one) beside the parts; rollback --lazy; a bare CRIU restore of the same images (tasks killed, restored)")
    print("%-5s %-14s %9s %9s %9s %9s %9s %9s %9s %9s %9s" % ("MiB", "", "wait", "outage", "pre-rb", "flush", "kill", "fs",
                                                              "restore", "lazy", "total"))
    largest = a.sizes[-1]
    for size in a.sizes:
        outage = {}
        for kind in ("rollback", "rollback-lazy", "restore-bare"):
            rb = [r for r in rows if r["size_mib"] == size and r["kind"] == kind]
            outage[kind] = med([r.get("outage_ms") for r in rb])
            print("%-5d %-14s %9s %9s %9s %9s %9s %9s %9s %9s %9s" % (size, kind, *(fmt(med([r.get(k) for r in rb])) for k in (
                "longest_wait_ms", "outage_ms", "pre_rollback_ms", "flush_ms", "kill_ms", "fs_ms", "restore_ms",
                "lazy_pages_ms", "total_ms"))))
        eager, lazy, bare = outage["rollback"], outage["rollback-lazy"], outage["restore-bare"]
        ratio = eager / bare if eager and bare else None
        goals.append(("rollback's outage <= 1.25x a bare CRIU restore's (%d MiB)" % size, ratio,
                      ratio is not None and ratio <= 1.25))
        if size == largest:
            lr = lazy / eager if lazy and eager else None
            goals.append(("rollback --lazy's outage <= 0.33x rollback's (%d MiB)" % size, lr, lr is not None and lr <= 0.33))
    print()
    print("peak RSS: crsnap take/rollback %.1f MiB, the container's monitor %.1f MiB" % (rss, mon))
    print()
    for what, value, ok in goals:
        v = "-" if value is None else ("%.2f" % value)
        print("%-64s %8s  %s" % (what, v, "met" if ok else "NOT MET"))


def chart(rows, a, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        print("bench-pause: no chart: python3-matplotlib is missing (Scripts/testenv installs it)", file=sys.stderr)
        return
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    styles = [("take", "crsnap take", "o-"), ("take-store", "crsnap take --stage store", "o:"),
              ("bare", "bare CRIU dump", "s--")]

    def spread(ax, kind, key, label, style):
        xs, ys, lo, hi = [], [], [], []
        for size in a.sizes:
            w = [r[key] for r in rows if r["size_mib"] == size and r["kind"] == kind and r.get(key)]
            if w:
                m = statistics.median(w)
                xs.append(size), ys.append(m), lo.append(m - min(w)), hi.append(max(w) - m)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=label)

    for kind, label, style in styles:
        spread(ax1, kind, "longest_wait_ms", label, style)
    def axes(ax, ylabel, title):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(a.sizes, [str(s) for s in a.sizes])
        ax.set_xlabel("memory of the server (MiB)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()

    axes(ax1, "client's longest wait (ms)", "pause a client sees (median, min-max)")
    parts = [("pause_ms", "crsnap's pause"), ("frozen_ms", "CRIU frozen"), ("freezing_ms", "crsnap freezing")]
    for key, label in parts:
        ys = [med([r.get(key) for r in rows if r["size_mib"] == s and r["kind"] == "take"]) for s in a.sizes]
        ax2.plot(a.sizes, ys, "o-", label=label)
    ys = [med([r.get("freezing_ms") for r in rows if r["size_mib"] == s and r["kind"] == "bare"]) for s in a.sizes]
    ax2.plot(a.sizes, ys, "s--", label="CRIU freezing (bare dump)")
    axes(ax2, "ms (median)", "where a take's pause goes")
    for kind, label, style in [("rollback", "crsnap rollback", "^-"), ("rollback-lazy", "crsnap rollback --lazy", "v-"),
                               ("restore-bare", "bare CRIU restore", "s--")]:
        spread(ax3, kind, "outage_ms", label, style)
    axes(ax3, "client's outage (ms)", "rollback: stopped until the first correct answer")
    fig.suptitle("crsnap take vs a bare CRIU dump; rollback vs a bare CRIU restore; redis + %d MiB of files, %d rounds"
                 % (a.files_mib, a.rounds))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("bench-pause: chart: %s" % path, file=sys.stderr)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), sys.argv[3])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--store-root", dest="store_root", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--files-mib", dest="files_mib", type=int, required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    a = p.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    b = Bench(a)
    fields = ["size_mib", "files_mib", "kind", "round", "start_ns", "end_ns", "requests", "longest_wait_ms",
              "correct_after_ms", "pause_ms", "freezing_ms", "frozen_ms", "memdump_ms", "fs_snapshot_ms", "staging_copy_ms",
              "checksum_ms",
              "outage_ms", "total_ms", "pre_rollback_ms", "flush_ms", "kill_ms", "fs_ms", "restore_ms", "lazy_pages_ms",
              "peak_rss_kib", "monitor_rss_kib"]
    rows = run_and_record(b, "bench-pause", "container", fields, a.csv)
    a.bandwidth = b.bandwidth
    report(rows, a)
    chart(rows, a, a.png)


if __name__ == "__main__":
    main()
