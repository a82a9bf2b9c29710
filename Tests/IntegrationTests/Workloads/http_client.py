# An HTTP/1.1 client of a web server on the host (RealServicesTests).
#   load PORT STOPFILE REPORT: four threads, each on a keep-alive connection,
#     GET / until STOPFILE exists; a lost connection (reset, EOF, 3 s of
#     silence) is counted and opened again. The JSON report: requests, the
#     statuses other than 200, connection errors, the bodies seen in order of
#     first sight, the last body and the longest wait for an answer.
#   get PORT PATH: one GET, prints the status and the body.
import http.client, json, os, sys, threading, time

def load(port, stopfile, report):
    lock = threading.Lock()
    r = {"requests": 0, "bad_status": [], "errors": 0, "bodies": [], "last": None, "longest_ms": 0}

    def worker():
        conn = None
        while not os.path.exists(stopfile):
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                with lock:
                    r["requests"] += 1
                    if resp.status != 200:
                        r["bad_status"].append(resp.status)
                    if body not in r["bodies"]:
                        r["bodies"].append(body)
                    r["last"] = body
                    r["longest_ms"] = max(r["longest_ms"], round((time.monotonic() - t0) * 1000))
            except (OSError, http.client.HTTPException):
                with lock:
                    r["errors"] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(report, "w") as out:
        json.dump(r, out)

def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    print(resp.status)
    print(resp.read().decode(errors="replace").strip())

if sys.argv[1] == "load":
    load(int(sys.argv[2]), sys.argv[3], sys.argv[4])
else:
    get(int(sys.argv[2]), sys.argv[3])
