"""Scripts/lib/bench_migrate.py — the driver behind Scripts/bench-migrate.

What moving a live service costs its client, beside the stop on one
machine. Debian's redis holding SIZE MiB runs in a crsnap container in the
host's network; a client holds one connection and sends GET every 2 ms (the
client of Scripts/lib/bench_pause.py), reconnecting when the connection
ends. Round after round, in alternating order:

  stop-resume  `crsnap take --stop` then `crsnap resume` in the same store
               (the baseline: a stop that goes nowhere);
  migrate      `crsnap migrate` to the other store (on another btrfs
               filesystem); the next migrate moves it back.

For each: the client's outage (from its last answer before until its first
answer after, matched from its samples), crsnap's own downtime figures, and
for migrate the bytes of the two sends (the first whole: the store it goes
to holds nothing of it; the second incremental on the first).
"""

import argparse
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pause import REDIS, Reply, call, client, command, connect, fmt, med, now_ns, run_and_record, stop_clients  # noqa: E402

VALUE = 1 << 20


class Bench:
    def __init__(self, a):
        self.a = a
        self.name = "bench-migrate-%d" % os.getpid()
        self.stores = [a.store, a.store2]
        self.here = 0  # index of the store holding the container
        self.clients = {}

    def crsnap(self, *args, store=None, check=True):
        env = dict(os.environ, CRSNAP_STORE=store or self.stores[self.here])
        r = subprocess.run([self.a.bin, *args], env=env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit("bench-migrate: crsnap %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()))
        return r

    def start(self):
        port = self.a.port
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--maxmemory", "0", "--daemonize", "no"]
        launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        self.crsnap("run", self.name, "--", "/usr/bin/python3", "-c", launcher, REDIS, *argv)
        deadline = now_ns() + 30 * 10**9
        while True:
            try:
                if call(port, "PING") == b"PONG":
                    break
            except OSError:
                pass
            if now_ns() > deadline:
                raise SystemExit("bench-migrate: redis did not answer within 30 s")
        block = bytearray(os.urandom(VALUE))
        with connect(port, timeout=60) as s:
            r = Reply(s)
            for i in range(self.a.size):
                block[:8] = i.to_bytes(8, "little")
                s.sendall(command("SET", "fill:%d" % i, bytes(block)))
                r.read()
            s.sendall(command("SET", "epoch", "moved"))
            r.read()

    def op_stop_resume(self, rnd):
        t0 = now_ns()
        taken = json.loads(self.crsnap("take", "--stop", "--json", self.name).stdout)
        self.crsnap("resume", self.name)
        t1 = now_ns()
        self.crsnap("delete", taken["id"])
        return dict(kind="stop-resume", round=rnd, start_ns=t0, end_ns=t1, wall_ms=(t1 - t0) / 1e6,
                    pause_ms=taken["stats"].get("pause_ms"))

    def op_migrate(self, rnd):
        there = 1 - self.here
        t0 = now_ns()
        d = json.loads(self.crsnap("migrate", self.name, "--to", self.stores[there], "--json").stdout)
        t1 = now_ns()
        self.here = there
        # Its snapshots there are not needed again: the next move starts whole.
        for sid in (d["first"], d["second"]):
            self.crsnap("delete", sid)
        row = dict(kind="migrate", round=rnd, start_ns=t0, end_ns=t1, wall_ms=(t1 - t0) / 1e6)
        for k in ("downtime_ms", "stop_ms", "second_send_ms", "resume_ms", "total_ms", "first_bytes", "first_fs_bytes",
                  "second_bytes", "second_fs_bytes"):
            row[k] = d[k]
        return row

    def run(self):
        self.start()
        path = os.path.join(self.a.outdir, "bench-migrate-client.csv")
        self.clients["redis"] = (subprocess.Popen([sys.executable, __file__, "--client", str(self.a.port), path]), path)
        rows = []
        ops = {"stop-resume": self.op_stop_resume, "migrate": self.op_migrate}
        for rnd in range(self.a.rounds):
            order = ["stop-resume", "migrate"] if rnd % 2 == 0 else ["migrate", "stop-resume"]
            for kind in order:
                r = ops[kind](rnd)
                r["case"] = "redis"
                rows.append(r)
                print("bench-migrate: round %d %s: %.0f ms" % (rnd + 1, kind, r["wall_ms"]), file=sys.stderr)
        return rows, stop_clients(self.clients)

    def cleanup(self):
        stop_clients({k: v for k, v in self.clients.items() if v[0].poll() is None})
        for store in self.stores:
            self.crsnap("rm", "--force", self.name, store=store, check=False)


def report(rows, a):
    def col(kind, key):
        return [r.get(key) for r in rows if r["kind"] == kind]
    print("\nbench-migrate: redis with %d MiB, %d rounds, medians (min-max)" % (a.size, a.rounds))
    print("%-34s %18s %18s %8s" % ("", "stop+resume", "migrate", "ratio"))

    def spread(xs):
        xs = [x for x in xs if x is not None]
        return "%.0f (%.0f-%.0f)" % (med(xs), min(xs), max(xs)) if xs else "-"

    def line(label, key_a, key_b=None):
        xa, xb = col("stop-resume", key_a), col("migrate", key_b or key_a)
        ma, mb = med(xa), med(xb)
        ratio = "%.2fx" % (mb / ma) if ma and mb else "-"
        print("%-34s %18s %18s %8s" % (label + " (ms)", spread(xa), spread(xb), ratio))
    line("client's outage", "outage_ms")
    line("client's longest wait", "longest_wait_ms")
    line("command wall time", "wall_ms")
    line("crsnap's downtime (migrate)", "wall_ms", "downtime_ms")
    for key in ("stop_ms", "second_send_ms", "resume_ms"):
        print("%-34s %18s %18s" % ("  of which " + key, "", spread(col("migrate", key))))
    mib = 1 << 20
    for key, label in (("first_fs_bytes", "files sent whole (first send)"), ("second_fs_bytes", "files sent incremental (second)"),
                       ("first_bytes", "archive, first send"), ("second_bytes", "archive, second send")):
        print("%-34s %18s %18s" % (label, "", fmt(med([x / mib for x in col("migrate", key) if x is not None]), "%.2f MiB")))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), sys.argv[3])
        return
    p = argparse.ArgumentParser()
    for k in ("--bin", "--store", "--store2", "--outdir", "--csv"):
        p.add_argument(k, required=True)
    for k in ("--rounds", "--size", "--port"):
        p.add_argument(k, type=int, required=True)
    a = p.parse_args()
    fields = ["kind", "round", "start_ns", "end_ns", "requests", "longest_wait_ms", "outage_ms", "wall_ms",
              "pause_ms", "downtime_ms", "stop_ms", "second_send_ms", "resume_ms", "total_ms", "first_bytes",
              "first_fs_bytes", "second_bytes", "second_fs_bytes"]
    rows = run_and_record(Bench(a), "bench-migrate", "case", fields, a.csv)
    report(rows, a)
    # Every answer, before and after each move, is the data the server had.
    with open(os.path.join(a.outdir, "bench-migrate-client.csv")) as f:
        answers = list(csv.DictReader(f))
    wrong = [r for r in answers if r["value"] != "moved"]
    print("%-34s %18s" % ("client's answers (wrong)", "%d (%d)" % (len(answers), len(wrong))))
    if wrong:
        raise SystemExit("bench-migrate: %d answers were not the server's data, the first: %r" % (len(wrong), wrong[0]))


if __name__ == "__main__":
    main()
