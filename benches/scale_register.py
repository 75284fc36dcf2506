"""Registers clusters through corral's API, as fast as a few kept-alive connections allow: each
cluster is a POST /v3/clusters and a POST /v3/clusterregistrationtokens. Used by benches/scale.sh.

    python3 benches/scale_register.py URL TOKEN COUNT OUT [CONNECTIONS]

Appends "<cluster id> <registration token>" lines to OUT and prints one JSON line: the wall
seconds, and the median and 99th percentile of one cluster's two calls, in milliseconds. Any
answer other than 201 stops it with the answer. Loopback only.
"""

import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse

URL, TOKEN, COUNT, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
CONNECTIONS = int(sys.argv[5]) if len(sys.argv) > 5 else 4
TARGET = urllib.parse.urlsplit(URL)
HEADERS = {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"}

lock = threading.Lock()
next_index = [0]
latencies = []
registered = []
failure = []


def claim():
    with lock:
        if failure or next_index[0] >= COUNT:
            return None
        next_index[0] += 1
        return next_index[0]


def post(conn, path, body):
    conn.request("POST", path, json.dumps(body), HEADERS)
    response = conn.getresponse()
    answer = response.read()
    if response.status != 201:
        raise RuntimeError("POST %s: %d %s" % (path, response.status, answer[:300]))
    return json.loads(answer)


def worker():
    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection(TARGET.hostname, TARGET.port, context=context, timeout=30)
    while (index := claim()) is not None:
        started = time.monotonic()
        try:
            cluster = post(conn, "/v3/clusters", {"name": "scale-%d" % index})
            token = post(conn, "/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
        except Exception as e:  # noqa: BLE001 - any failure ends the run, with its text
            with lock:
                failure.append(str(e))
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        with lock:
            latencies.append(elapsed_ms)
            registered.append((index, cluster["id"], token["token"]))


started = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
wall = time.monotonic() - started
if failure:
    sys.exit("after %d clusters: %s" % (len(registered), failure[0]))
with open(OUT, "a") as out:
    for _, cluster_id, token in sorted(registered):
        out.write("%s %s\n" % (cluster_id, token))
latencies.sort()
print(json.dumps({
    "clusters": len(registered),
    "seconds": round(wall, 2),
    "p50_ms": round(latencies[len(latencies) // 2], 2),
    "p99_ms": round(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)], 2),
}))
