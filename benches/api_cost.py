"""Server CPU per /v3 request on a running corral, with 1,000 clusters.

    CATTLE_BOOTSTRAP_PASSWORD=pw corral serve --data-dir d --https-port 18443 &
    CATTLE_BOOTSTRAP_PASSWORD=pw python3 benches/api_cost.py "$(pgrep -f 'serve --data-dir d')" 18443

Logs in as admin, creates clusters up to 1,000, then sends 300 GETs of each path on one
kept-alive connection and prints the server's CPU time per request (utime + stime from
/proc/<pid>/stat) and the body's size. Loopback only.
"""

import http.client
import json
import os
import ssl
import sys

PID, PORT = int(sys.argv[1]), int(sys.argv[2])
PASSWORD = os.environ.get("CATTLE_BOOTSTRAP_PASSWORD", "")
ROUNDS = 300
PATHS = ["/ping", "/v3", "/v3/schemas", "/v3/clusters", "/v3/clusters?name=c500",
         "/v3/clusters?limit=10&sort=name", "/v3/settings", "/v3/users?me=true"]

conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ssl._create_unverified_context())


def call(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def cpu_seconds():
    fields = open("/proc/%d/stat" % PID).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


login = json.dumps({"username": "admin", "password": PASSWORD, "responseType": "json"})
status, body = call("POST", "/v3-public/localproviders/local?action=login", login)
auth = {"Authorization": "Bearer " + json.loads(body)["token"]}
have = len(json.loads(call("GET", "/v3/clusters", headers=auth)[1])["data"])
for i in range(have, 1000):
    call("POST", "/v3/clusters", json.dumps({"name": "c%d" % i}), auth)
for path in PATHS:
    call("GET", path, headers=auth)
    before = cpu_seconds()
    for _ in range(ROUNDS):
        status, body = call("GET", path, headers=auth)
    spent = cpu_seconds() - before
    print("%-36s %4d  %7.0f µs CPU/request  %8d B" % (path, status, spent / ROUNDS * 1e6, len(body)))
