# Holds every kind of file whose name is gone, and checks them through its own
# fds and mappings on demand. Reports on stdout (kept outside the container):
#   "ready"                     all files made
#   SIGUSR2 -> "mutated"        every file's content, offset and mapping changed
#   SIGUSR1 -> "CHECK ok" or "CHECK bad: ..." comparing with what it made
# Sizes: SPARSE_MIB (a sparse file with scattered written extents), REAL_MIB
# (a file of real data).
import ctypes, hashlib, mmap, os, signal, sys, time

D = "/var/lib/crsnap-unlinked"
SPARSE = int(os.environ.get("SPARSE_MIB", "1024")) << 20
REAL = int(os.environ.get("REAL_MIB", "8")) << 20
os.makedirs(D, exist_ok=True)
for n in os.listdir(D):
    os.unlink(os.path.join(D, n))
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]

def pattern(seed, size):
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]

def fdinfo(fd):
    info = dict(l.split(":", 1) for l in open(f"/proc/self/fdinfo/{fd}").read().splitlines() if ":" in l)
    return int(info["pos"].strip()), int(info["flags"].strip(), 8)

def mnt_id(fd):
    for l in open(f"/proc/self/fdinfo/{fd}").read().splitlines():
        if l.startswith("mnt_id:"):
            return int(l.split(":", 1)[1])

def unlinked_file(name, data, flags=os.O_RDWR):
    fd = os.open(f"{D}/{name}", os.O_CREAT | os.O_EXCL | flags, 0o640)
    os.pwrite(fd, data, 0)
    os.unlink(f"{D}/{name}")
    return fd

def map_only(name, data, shared):
    """A mapping whose file has no fd and no name left."""
    fd = unlinked_file(name, data)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    addr = libc.mmap(None, len(data), prot, mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)
    return addr

files = {}   # name -> (fd, expected sha256 of content, size, pos, flags)
real = pattern("real", REAL)
files["real"] = unlinked_file("real", real)
os.lseek(files["real"], 4096 * 3 + 17, os.SEEK_SET)
files["append"] = unlinked_file("append", pattern("append", 300000), os.O_WRONLY | os.O_APPEND)
os.lseek(files["append"], 0, os.SEEK_END)
t = os.open(D, os.O_TMPFILE | os.O_RDWR, 0o600)
os.pwrite(t, pattern("tmpfile", 2 << 20), 0)
os.lseek(t, 12345, os.SEEK_SET)
files["tmpfile"] = t
# Sparse: written 1 MiB extents scattered over SPARSE bytes, holes between.
s = os.open(f"{D}/sparse", os.O_CREAT | os.O_RDWR, 0o600)
os.ftruncate(s, SPARSE)
extents = [(i * (SPARSE // 16) + 4096 * i, pattern(f"extent{i}", 1 << 20)) for i in range(16)]
for off, data in extents:
    os.pwrite(s, data, min(off, SPARSE - len(data)))
os.unlink(f"{D}/sparse")
files["sparse"] = s
# Renamed while open, and one whose other hard link remains.
r = os.open(f"{D}/before-rename", os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(r, b"renamed" * 1000, 0)
os.rename(f"{D}/before-rename", f"{D}/after-rename")
files["renamed"] = r
h = os.open(f"{D}/h1", os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(h, b"hard-linked" * 1000, 0)
os.link(f"{D}/h1", f"{D}/h2")
os.unlink(f"{D}/h1")
files["hardlink"] = h
# Mapped and unlinked, no fd: shared and private (a private page changed).
shared_data = pattern("shared", 1 << 20)
private_data = pattern("private", 1 << 20)
shared = map_only("shared", shared_data, True)
private = map_only("private", private_data, False)
ctypes.memmove(private + 8192, b"private-page-changed", 20)
private_expect = bytearray(private_data)
private_expect[8192:8212] = b"private-page-changed"
# Mapped and held as an fd at once.
both = unlinked_file("both", pattern("both", 1 << 20))
both_map = mmap.mmap(both, 1 << 20, mmap.MAP_SHARED)

def digest(fd):
    size = os.fstat(fd).st_size
    h = hashlib.sha256()
    if fd == s:  # the sparse one: the extents and a sample of the holes
        for off, data in extents:
            h.update(os.pread(fd, len(data), min(off, SPARSE - len(data))))
        for i in range(16):
            h.update(os.pread(fd, 4096, i * (SPARSE // 16) + (SPARSE // 32)))
    else:
        pos = 0
        while pos < size:
            chunk = os.pread(fd, 1 << 20, pos)
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
    return h.hexdigest(), size

def state():
    out = {}
    for name, fd in files.items():
        if name == "append":
            rd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
            d, size = digest(rd)
            os.close(rd)
        else:
            d, size = digest(fd)
        pos, flags = fdinfo(fd)
        # O_LARGEFILE may differ; O_TMPFILE is how the file was made, not how it is open
        out[name] = (d, size, pos, flags & ~0o100000 & ~0o20200000)
    out["shared-map"] = hashlib.sha256(ctypes.string_at(shared, 1 << 20)).hexdigest()
    out["private-map"] = hashlib.sha256(ctypes.string_at(private, 1 << 20)).hexdigest()
    out["both-map"] = hashlib.sha256(both_map[:]).hexdigest()
    return out

made = state()
assert made["private-map"] == hashlib.sha256(private_expect).hexdigest()
assert made["shared-map"] == hashlib.sha256(shared_data).hexdigest()

def check(*_):
    now = state()
    bad = [f"{k}: {now[k]} != {made[k]}" for k in made if now[k] != made[k]]
    visible = sorted(os.listdir(D))
    if visible != ["after-rename", "h2"]:
        bad.append(f"{D} holds {visible}")
    if os.path.exists("/.crsnap-unlinked"):
        bad.append("/.crsnap-unlinked left behind")
    # Every file is on this container's own root mount, not one it cannot see.
    root = os.open("/", os.O_RDONLY)
    root_mnt = mnt_id(root)
    os.close(root)
    for name, fd in files.items():
        if mnt_id(fd) != root_mnt:
            bad.append(f"{name}: fd on mount {mnt_id(fd)}, the root is {root_mnt} ({os.readlink(f'/proc/self/fd/{fd}')})")
    print("CHECK ok" if not bad else "CHECK bad: " + "; ".join(bad), flush=True)

def mutate(*_):
    for name, fd in files.items():
        if name == "append":
            os.write(fd, b"appended after the take")
        else:
            os.pwrite(fd, b"changed after the take", 0)
            os.lseek(fd, 1, os.SEEK_SET)
    ctypes.memmove(shared, b"changed shared", 14)
    ctypes.memmove(private + 8192, b"changed private", 15)
    both_map[0:7] = b"changed"
    print("mutated", flush=True)

signal.signal(signal.SIGUSR1, check)
signal.signal(signal.SIGUSR2, mutate)
print("ready", flush=True)
while True:
    time.sleep(0.05)
