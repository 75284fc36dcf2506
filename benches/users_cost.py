"""What authorization and login cost as users, bindings and tokens grow, on a running corral.

    CATTLE_BOOTSTRAP_PASSWORD=pw corral serve --data-dir d --https-port 18443 &
    CATTLE_BOOTSTRAP_PASSWORD=pw USERS=10000 TOKENS=50000 \
        python3 benches/users_cost.py "$(pgrep -f 'serve --data-dir d')" 18443

On a fresh data directory, measures twice: first with one standard user, then after growing to
USERS users (each bound to the `user` global role), TOKENS API keys and one cluster per 100 users
(each user a `cluster-member` of one). Each time, as one standard user bound to one cluster, it
sends ROUNDS requests of each path on one kept-alive connection and prints the server's CPU per
request (utime + stime from /proc/<pid>/stat); and it times logins (wall clock: argon2 dominates).
The last lines are the ratios grown ÷ small: authorization that reads every binding or token per
request would grow with them. With MEASURE_ONLY=1, on a data directory grown before: measure only
(after a restart, say). Loopback only.
"""

import http.client
import json
import os
import ssl
import sys
import time

PID, PORT = int(sys.argv[1]), int(sys.argv[2])
PASSWORD = os.environ.get("CATTLE_BOOTSTRAP_PASSWORD", "")
USERS = int(os.environ.get("USERS", "10000"))
TOKENS = int(os.environ.get("TOKENS", "50000"))
ROUNDS = int(os.environ.get("ROUNDS", "300"))
USER_PASSWORD = "bench-password-1"
PATHS = ["/v3/clusters", "/v3/users?me=true", "/v3/settings/server-version", "/v3/tokens"]

conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ssl._create_unverified_context())


def call(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def post(path, body, headers):
    status, answer = call("POST", path, json.dumps(body), headers)
    if status not in (200, 201):
        sys.exit("POST %s: %d %s" % (path, status, answer[:300]))
    return json.loads(answer)


def cpu_seconds():
    fields = open("/proc/%d/stat" % PID).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def login(username, password):
    body = {"username": username, "password": password, "responseType": "json"}
    return post("/v3-public/localproviders/local?action=login", body, {})["token"]


def measure(label, auth):
    costs = {}
    for path in PATHS:
        call("GET", path, headers=auth)
        before = cpu_seconds()
        for _ in range(ROUNDS):
            status, _ = call("GET", path, headers=auth)
            assert status == 200, (path, status)
        costs[path] = (cpu_seconds() - before) / ROUNDS * 1e6
    started = time.monotonic()
    for _ in range(5):
        login("bench-user-0", USER_PASSWORD)
    costs["login (wall ms)"] = (time.monotonic() - started) / 5 * 1e3
    for what, value in costs.items():
        print("%-8s %-32s %9.0f" % (label, what, value), flush=True)
    return costs


admin = {"Authorization": "Bearer " + login("admin", PASSWORD)}
first = "bench-user-0"
if os.environ.get("MEASURE_ONLY"):
    measure("grown", {"Authorization": "Bearer " + login(first, USER_PASSWORD)})
    sys.exit(0)
made = post("/v3/users", {"username": first, "password": USER_PASSWORD}, admin)
post("/v3/globalrolebindings", {"globalRoleId": "user", "userId": made["id"]}, admin)
cluster = post("/v3/clusters", {"name": "bench-0"}, admin)
post("/v3/clusterroletemplatebindings", {"clusterId": cluster["id"],
     "roleTemplateId": "cluster-member", "userId": made["id"]}, admin)
user = {"Authorization": "Bearer " + login(first, USER_PASSWORD)}
small = measure("small", user)

started = time.monotonic()
cluster_id = None
for i in range(1, USERS):
    name = "bench-user-%d" % i
    made = post("/v3/users", {"username": name, "password": USER_PASSWORD}, admin)
    post("/v3/globalrolebindings", {"globalRoleId": "user", "userId": made["id"]}, admin)
    if i % 100 == 1:
        cluster_id = post("/v3/clusters", {"name": "bench-%d" % i}, admin)["id"]
    post("/v3/clusterroletemplatebindings", {"clusterId": cluster_id,
         "roleTemplateId": "cluster-member", "userId": made["id"]}, admin)
print("grew to %d users in %.0f s" % (USERS, time.monotonic() - started), flush=True)
started = time.monotonic()
for _ in range(TOKENS):
    post("/v3/tokens", {"description": "bench", "ttl": 0}, admin)
print("made %d API keys in %.0f s" % (TOKENS, time.monotonic() - started), flush=True)
# The index is read again after a change: the first request pays for it.
before = cpu_seconds()
call("GET", "/v3/clusters", headers=user)
print("first request after the last change: %.1f ms CPU" % ((cpu_seconds() - before) * 1e3))
grown = measure("grown", user)
for what in small:
    print("ratio    %-32s %9.2f" % (what, grown[what] / small[what]))
