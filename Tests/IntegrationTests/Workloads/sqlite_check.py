# A second process opening the database (FileLockTests): SQLite's own
# integrity check, then the rows' count and range.
import sqlite3
db = sqlite3.connect("/var/lib/crsnap-sqlite/db", timeout=30)
ok = db.execute("PRAGMA integrity_check").fetchone()[0]
count, low, high = db.execute("SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM t").fetchone()
print(ok, count, low, high)
