# A SQLite database in WAL mode under a write load (FileLockTests): rows
# 1, 2, 3, ... each committed in its own transaction, the next id kept in
# memory. SQLite maps the WAL index (db-shm) shared and holds a read lock on
# its byte 128 for the connection's life; without it the next process to
# open the database truncates the index under this one's mapping (SIGBUS).
# After any rollback the rows must still be exactly 1..N: a writer whose
# memory were ahead of its files would leave a gap.
import os, sqlite3, sys, time

D = "/var/lib/crsnap-sqlite"
os.makedirs(D, exist_ok=True)
db = sqlite3.connect(os.path.join(D, "db"), isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
n = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
print("ready", flush=True)
while True:
    n += 1
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?, ?)", (n, "x" * 200))
    db.execute("COMMIT")
    if n % 500 == 0:
        print("rows", n, flush=True)
    time.sleep(0.002)
