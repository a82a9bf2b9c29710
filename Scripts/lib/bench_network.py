"""Scripts/lib/bench_network.py — the driver behind Scripts/bench-network.

What a network of the container's own costs a client. Two redis servers
(Debian's) of the same size run in crsnap containers: one in the host's
network (`--network host`, its client at 127.0.0.1:PORT), one bridged
(`--network bridge`, its client at the container's address, port 6379). A
client process for each holds one connection and sends GET every 2 ms (the
client of Scripts/lib/bench_pause.py). Round after round, in an order that
rotates, each container is taken (`crsnap take`, the snapshot deleted again)
and rolled back to a snapshot whose value the client recognises. Each
window is matched with its client's samples: for take the longest wait of a
request outstanding in it; for rollback the time from the command's start
until the first answer with the snapshot's value, and the outage that
answer ended. crsnap's own figures (pause_ms, restore_ms) come from --json.

Run through Scripts/bench-network (root, memory, the store, a release build).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pause import (REDIS, Reply, call, client, command, connect, fmt, med, now_ns,  # noqa: E402
                         kill_clients, remove_containers, run_and_record, stop_clients)

MODES = ("host", "bridge")


class Bench:
    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ, CRSNAP_STORE=a.store)
        self.names = {m: "bench-net-%s-%d" % (m, os.getpid()) for m in MODES}
        self.where = {}  # mode -> (host, port) the client uses
        self.started = []
        self.clients = {}
        self.base = {}

    def crsnap(self, *args, check=True):
        r = subprocess.run([self.a.bin, *args], env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit("bench-network: crsnap %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr.strip()))
        return r

    def call(self, mode, *args):
        host, port = self.where[mode]
        return call(port, *args, host=host)

    def start(self, mode):
        name = self.names[mode]
        port = self.a.port if mode == "host" else 6379
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1" if mode == "host" else "0.0.0.0",
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--maxmemory", "0", "--daemonize", "no"]
        launcher = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"
        self.crsnap("run", name, "--network", mode, "--", "/usr/bin/python3", "-c", launcher, REDIS, *argv)
        self.started.append(name)
        if mode == "host":
            self.where[mode] = ("127.0.0.1", port)
        else:
            rows = json.loads(self.crsnap("ps", "--json").stdout)
            address = next(r["address"] for r in rows if r["name"] == name).split("/")[0]
            self.where[mode] = (address, port)
        deadline = time.time() + 30
        while True:
            try:
                if self.call(mode, "PING") == b"PONG":
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise SystemExit("bench-network: redis in %s did not answer within 30 s" % name)
            time.sleep(0.1)

    def fill(self, mode, mib):
        host, port = self.where[mode]
        block = bytearray(os.urandom(1 << 20))
        with connect(port, timeout=60, host=host) as s:
            r = Reply(s)
            for i in range(mib):
                block[:8] = i.to_bytes(8, "little")
                s.sendall(command("SET", "fill:%d" % i, bytes(block)))
                r.read()

    def op_take(self, rnd, mode):
        t0 = now_ns()
        d = json.loads(self.crsnap("take", "--json", self.names[mode]).stdout)
        t1 = now_ns()
        self.crsnap("delete", d["id"])
        return dict(kind="take", mode=mode, start_ns=t0, end_ns=t1, pause_ms=d["stats"].get("pause_ms"),
                    frozen_ms=d["stats"].get("frozen_ms"))

    def op_rollback(self, rnd, mode):
        t0 = now_ns()
        d = json.loads(self.crsnap("rollback", "--json", self.base[mode]).stdout)
        t1 = now_ns()
        if d.get("pre_rollback"):
            self.crsnap("delete", d["pre_rollback"])
        # The live value again once the client is back (it has then read the
        # snapshot's), so that the next rollback changes it back.
        deadline = time.time() + 15
        while time.time() < deadline and b"cmd=get" not in (self.call(mode, "CLIENT", "LIST") or b""):
            time.sleep(0.01)
        self.call(mode, "SET", "epoch", "live-%d" % rnd)
        s = d["stats"]
        return dict(kind="rollback", mode=mode, start_ns=t0, end_ns=t1, total_ms=s.get("total_ms"),
                    restore_ms=s.get("restore_ms"), kill_ms=s.get("kill_ms"), tcp=d.get("tcp"), expect="base")

    def run(self):
        a = self.a
        for m in MODES:
            self.start(m)
            self.fill(m, a.size)
            path = os.path.join(a.outdir, "bench-network-client-%s.csv" % m)
            host, port = self.where[m]
            self.clients[m] = (subprocess.Popen([sys.executable, __file__, "--client", host, str(port), path]), path)
        time.sleep(0.5)
        for m in MODES:
            self.call(m, "SET", "epoch", "base")
            self.base[m] = self.crsnap("take", self.names[m]).stdout.strip()
            self.call(m, "SET", "epoch", "live-0")
        ops = [(k, m) for k in ("take", "rollback") for m in MODES]
        do = {"take": self.op_take, "rollback": self.op_rollback}
        for kind, m in ops:  # warm-up, not recorded
            do[kind](0, m)
        rows = []
        for rnd in range(1, a.rounds + 1):
            k = rnd % len(ops)
            for kind, m in ops[k:] + ops[:k]:
                row = do[kind](rnd, m)
                row["round"] = rnd
                rows.append(row)
                time.sleep(0.3)
            print("bench-network: round %d of %d" % (rnd, a.rounds), file=sys.stderr)
        time.sleep(0.5)
        paths = stop_clients(self.clients)
        self.clients = {}
        return rows, paths

    def cleanup(self):
        kill_clients(self.clients)
        remove_containers(self.crsnap, self.started, "bench-network")


FIGURES = [("take", "longest_wait_ms", "take: the client's longest wait"),
           ("take", "pause_ms", "take: pause_ms (crsnap)"),
           ("rollback", "correct_after_ms", "rollback: until the snapshot's answer"),
           ("rollback", "outage_ms", "rollback: the client's outage"),
           ("rollback", "restore_ms", "rollback: restore_ms (CRIU)")]


def report(rows, a):
    print()
    print("bench-network: redis of %d MiB, %d rounds, medians (min-max) in ms" % (a.size, a.rounds))
    print("%-40s %22s %22s %8s" % ("", "host", "bridge", "ratio"))
    for kind, key, label in FIGURES:
        cells, meds = [], []
        for m in MODES:
            xs = [r.get(key) for r in rows if r["kind"] == kind and r["mode"] == m and r.get(key) is not None]
            md = med(xs)
            meds.append(md)
            cells.append("%s (%s-%s)" % (fmt(md), fmt(min(xs) if xs else None), fmt(max(xs) if xs else None)))
        ratio = meds[1] / meds[0] if meds[0] and meds[1] is not None else None
        print("%-40s %22s %22s %8s" % (label, cells[0], cells[1], fmt(ratio, "%.2f")))
    tcp = sorted({"%s: %s" % (r["mode"], r.get("tcp")) for r in rows if r["kind"] == "rollback"})
    print("rollback's TCP choice: %s" % ", ".join(tcp))


def chart(rows, a, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench-network: no matplotlib: no chart", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(FIGURES), figsize=(3.2 * len(FIGURES), 3.6))
    for ax, (kind, key, label) in zip(axes, FIGURES):
        for i, m in enumerate(MODES):
            xs = [r.get(key) for r in rows if r["kind"] == kind and r["mode"] == m and r.get(key) is not None]
            ax.scatter([i] * len(xs), xs, s=14, alpha=0.6)
            if xs:
                ax.hlines(med(xs), i - 0.3, i + 0.3, colors="black")
        ax.set_xticks(range(len(MODES)))
        ax.set_xticklabels(MODES)
        ax.set_xlim(-0.6, len(MODES) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_title(label, fontsize=8)
        ax.set_ylabel("ms")
    fig.suptitle("crsnap --network host vs bridge: redis %d MiB, %d rounds (lines: medians)" % (a.size, a.rounds), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("bench-network: chart: %s" % path, file=sys.stderr)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        client(int(sys.argv[3]), sys.argv[4], host=sys.argv[2])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    a = p.parse_args()
    fields = ["mode", "kind", "round", "start_ns", "end_ns", "requests", "longest_wait_ms", "correct_after_ms", "outage_ms",
              "pause_ms", "frozen_ms", "total_ms", "kill_ms", "restore_ms", "tcp"]
    rows = run_and_record(Bench(a), "bench-network", "mode", fields, a.csv)
    report(rows, a)
    chart(rows, a, a.png)


if __name__ == "__main__":
    main()
