# A workload whose memory and files must agree after every rollback.
# Each step: counter += 1 in memory; append it to a log with fsync; check that
# /tmp/state (closed and reopened each step) holds the previous value, then
# write the new one; check the open unlinked, O_TMPFILE and hard-linked files.
# Reports on stdout ("step N ..." or "ERR ..."), which crsnap keeps outside
# the container, so nothing it says is rolled back.
# With MEMORY_MIB it also holds that much anonymous memory, every 64 KiB
# different, and checks a 4 MiB slice of it each step (all of it every 16 steps
# at 64 MiB): a page restored wrong, or not at all, is reported.
import hashlib, os, sys, time

W = "/var/lib/crsnap-workload"
UNLINKED_MIB = int(os.environ.get("UNLINKED_MIB", "8"))
MEMORY_MIB = int(os.environ.get("MEMORY_MIB", "0"))
SLICE = 4 << 20
os.makedirs(W, exist_ok=True)

def pattern(seed, size):
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    out = bytearray()
    while len(out) < size:
        out += block
    return bytes(out[:size])

unlinked_data = pattern("unlinked", UNLINKED_MIB << 20)
tmpfile_data = pattern("tmpfile", 1 << 20)
unlinked_sum = hashlib.sha256(unlinked_data).hexdigest()
memory = bytearray()
for i in range((MEMORY_MIB << 20) // 65536):
    memory += hashlib.sha256(b"memory %d" % i).digest() * 2048
memory_sums = [hashlib.sha256(memory[o:o + SLICE]).digest() for o in range(0, len(memory), SLICE)]
tmpfile_sum = hashlib.sha256(tmpfile_data).hexdigest()

u = open(W + "/unlinked", "w+b")
u.write(unlinked_data)
u.flush()
os.unlink(W + "/unlinked")

t = os.open(W, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(t, tmpfile_data)

with open(W + "/h1", "w") as f:
    f.write("hard-linked")
if os.path.exists(W + "/h2"):
    os.unlink(W + "/h2")
os.link(W + "/h1", W + "/h2")
h = open(W + "/h1", "r")
os.unlink(W + "/h1")

child = os.fork()
if child == 0:
    while True:
        time.sleep(1)

log = open(W + "/log", "a")
del unlinked_data, tmpfile_data
print(f"start pid {os.getpid()} child {child}", flush=True)

def check(n):
    errs = []
    try:
        with open("/tmp/state") as f:
            prev = int(f.read())
        if prev != n - 1:
            errs.append(f"/tmp/state holds {prev}, memory expects {n - 1}")
    except FileNotFoundError:
        if n != 1:
            errs.append("/tmp/state missing")
    if memory_sums:
        k = n % len(memory_sums)
        if hashlib.sha256(memory[k * SLICE:(k + 1) * SLICE]).digest() != memory_sums[k]:
            errs.append(f"memory differs in MiB {k * 4}-{k * 4 + 4}")
    if n % 10 == 0:
        u.seek(0)
        if hashlib.sha256(u.read()).hexdigest() != unlinked_sum:
            errs.append("unlinked file content differs")
        if hashlib.sha256(os.pread(t, 1 << 20, 0)).hexdigest() != tmpfile_sum:
            errs.append("O_TMPFILE content differs")
        h.seek(0)
        if h.read() != "hard-linked":
            errs.append("hard-linked file content differs")
    return errs

n = 0
while True:
    n += 1
    errs = check(n)
    log.write(f"{n}\n")
    log.flush()
    os.fsync(log.fileno())
    with open("/tmp/state", "w") as f:
        f.write(str(n))
    for e in errs:
        print(f"ERR step {n}: {e}", flush=True)
    if n % 10 == 0:
        print(f"step {n} pid {os.getpid()} child {child}", flush=True)
    time.sleep(0.02)
