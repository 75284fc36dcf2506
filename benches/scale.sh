#!/usr/bin/env bash
# Scale-out figures (issue 24): etcd, three corral replicas (--hostname localhost) behind HAProxy, N
# simulated clusters registered through the balancer's API and connected through it by
# `corral agent --simulate --count 1000` processes. Writes docs/SCALE.md with
#   1. what registering costs: wall seconds, each call pair's latency, and the replicas' server CPU per
#      cluster (a cluster and its registration token) for the first and the last FIRST clusters, so
#      that the cost at N can be set against the cost at a few;
#   2. etcd's database size before and after, and its history (revisions kept);
#   3. seconds until every cluster is connected, how the tunnels spread over the replicas, and each
#      replica's resident memory per tunnel it holds (and the agent's per cluster);
#   4. `kubectl get ns` on the first, a middle and the last cluster through each replica (9 calls);
#   5. the peering mesh: sessions between replicas (n×(n−1) whatever N);
#   6. the baseline, in the same run: one `corral serve` on a data directory holding BASELINE tunnels
#      straight from one agent process, its resident memory per tunnel beside the replicas'.
#
#   benches/scale.sh                 # 3,000 clusters: about 10 minutes once corral is built
#   CLUSTERS=300 benches/scale.sh    # quicker
#
# Loopback only. Needs etcd, etcdctl, haproxy, kubectl, curl, jq, python3, ss.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTERS=${CLUSTERS:-3000}
FIRST=${FIRST:-100}
CONNECTIONS=${CONNECTIONS:-4}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-600}
AGENT_BATCH=${AGENT_BATCH:-1000}
BASELINE=${BASELINE:-1000}
OUT=${OUT:-docs/SCALE.md}
# shellcheck source=benches/common.sh
source benches/common.sh
[ "$CLUSTERS" -gt $((2 * FIRST)) ] || { echo "CLUSTERS must be more than 2 × FIRST ($FIRST)" >&2; exit 1; }

start_etcd 1
ETCD_PID=${PIDS[-1]}
etcd_status() { etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json | jq -r ".[0].Status.$1"; }
PORTS=(19810 19820 19830)
REPLICAS=()
for i in 0 1 2; do
  start_replica "r$i" "${PORTS[$i]}" --hostname localhost
  REPLICAS+=("$LAST_PID")
done
# HAProxy holds two descriptors per connection, within the hard limit of open files. When the
# tunnels need more than one process can open, the balancer is several HAProxy processes bound to the
# same address (SO_REUSEPORT, HAProxy's default on Linux: the kernel spreads new connections over
# them), each its own limit.
LB_MAXCONN=$((($(ulimit -Hn) - 200) / 2))
LB_PROCESSES=$(((CLUSTERS + 100 + LB_MAXCONN - 1) / LB_MAXCONN))
[ "$LB_PROCESSES" -gt 1 ] && LB_PROCESSES=$((LB_PROCESSES + 1)) # the kernel's spread is uneven
cat >"$WORK/haproxy.cfg" <<END
global
  maxconn $LB_MAXCONN
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend rancher
  bind 127.0.0.1:19850
  maxconn $LB_MAXCONN
  default_backend replicas
backend replicas
  balance roundrobin
  default-server check inter 1s
  server r0 127.0.0.1:19810
  server r1 127.0.0.1:19820
  server r2 127.0.0.1:19830
END
for ((p = 0; p < LB_PROCESSES; p++)); do
  haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy-$p.log" &
  PIDS+=($!)
done
wait_port 19850
LB=https://localhost:19850
TOKEN=$(ha_login "$LB")
replica_ticks() { local sum=0 p; for p in "${REPLICAS[@]}"; do sum=$((sum + $(ticks "$p"))); done; echo "$sum"; }
sleep 3
DB_BEFORE=$(etcd_status dbSize)

# 1. Registration, in three runs: the first FIRST clusters, the bulk, the last FIRST.
: >"$WORK/clusters.txt"
register() { # COUNT: registers COUNT clusters; prints "server-ms-per-cluster etcd-ms-per-cluster json"
  local before etcd_before json
  before=$(replica_ticks); etcd_before=$(ticks "$ETCD_PID")
  json=$(python3 benches/scale_register.py "$LB" "$TOKEN" "$1" "$WORK/clusters.txt" "$CONNECTIONS")
  awk -v t=$(($(replica_ticks) - before)) -v e=$(($(ticks "$ETCD_PID") - etcd_before)) -v hz="$CLK_TCK" -v n="$1" \
    'BEGIN { printf "%.2f %.2f ", t * 1000 / hz / n, e * 1000 / hz / n }'
  echo "$json"
}
echo "registering $CLUSTERS clusters through the balancer" >&2
read -r FIRST_CPU FIRST_ETCD FIRST_JSON < <(register "$FIRST")
read -r BULK_CPU BULK_ETCD BULK_JSON < <(register $((CLUSTERS - 2 * FIRST)))
read -r LAST_CPU LAST_ETCD LAST_JSON < <(register "$FIRST")
REGISTER_S=$(jq -s 'map(.seconds) | add | . * 10 | round / 10' <<<"$FIRST_JSON $BULK_JSON $LAST_JSON")
echo "registered in ${REGISTER_S}s; server CPU per cluster: first $FIRST_CPU ms, last $LAST_CPU ms" >&2
[ "$(wc -l <"$WORK/clusters.txt")" = "$CLUSTERS" ] || { echo "not every cluster was registered" >&2; exit 1; }
mapfile -t IDS < <(cut -d' ' -f1 "$WORK/clusters.txt")

# 3. Every cluster connected through the balancer.
sessions_at() { curl -sk --max-time 5 "https://127.0.0.1:$1/metrics" | awk '$1 == "corral_tunnel_sessions" {print $2}'; }
all_sessions() { local sum=0 p n; for p in "${PORTS[@]}"; do n=$(sessions_at "$p"); sum=$((sum + ${n:-0})); done; echo "$sum"; }
# The replicas start again before the agents connect, so that what registering left in their heaps
# (freed, reused by the tunnels or not) does not count for or against the tunnels.
for i in 0 1 2; do
  kill "${REPLICAS[$i]}"; wait "${REPLICAS[$i]}" 2>/dev/null || true
  start_replica "r$i-again" "${PORTS[$i]}" --hostname localhost
  REPLICAS[$i]=$LAST_PID
done
sleep 10
RSS_BEFORE=(); for p in "${REPLICAS[@]}"; do RSS_BEFORE+=("$(rss_kib "$p")"); done
curl -sk "$LB/cacerts" >"$WORK/ca.pem"
SUM=$(sha256sum <"$WORK/ca.pem" | cut -d' ' -f1)
STARTED=$(date +%s.%N)
# One agent process per AGENT_BATCH clusters: the tokens travel in CATTLE_TOKEN, and one environment
# string holds at most 128 KiB.
AGENTS=()
for ((from = 0; from < CLUSTERS; from += AGENT_BATCH)); do
  batch=$(sed -n "$((from + 1)),$((from + AGENT_BATCH))p" "$WORK/clusters.txt" | cut -d' ' -f2 | paste -sd,)
  count=$(tr ',' '\n' <<<"$batch" | wc -l)
  CATTLE_TOKEN=$batch CORRAL_LOG=warn "$BIN" agent --server "$LB" --ca-checksum "$SUM" --simulate \
    --count "$count" 2>>"$WORK/agent.log" &
  PIDS+=($!); AGENTS+=($!)
done
CONNECTED=0
for _ in $(seq 1 $((CONNECT_TIMEOUT * 2))); do
  CONNECTED=$(all_sessions)
  [ "$CONNECTED" -ge "$CLUSTERS" ] && break
  sleep 0.5
done
CONNECT_S=$(awk -v a="$STARTED" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "$CONNECTED of $CLUSTERS connected after ${CONNECT_S}s" >&2
sleep 10
HELD=(); RSS_AFTER=(); PER_TUNNEL=()
for i in 0 1 2; do
  HELD+=("$(sessions_at "${PORTS[$i]}")")
  RSS_AFTER+=("$(rss_kib "${REPLICAS[$i]}")")
  PER_TUNNEL+=("$(awk -v a="${RSS_AFTER[$i]}" -v b="${RSS_BEFORE[$i]}" -v n="${HELD[$i]}" 'BEGIN { printf "%.1f", n ? (a - b) / n : 0 }')")
done
AGENT_RSS=0; for p in "${AGENTS[@]}"; do AGENT_RSS=$((AGENT_RSS + $(rss_kib "$p"))); done
AGENT_PER_CLUSTER=$(awk -v r="$AGENT_RSS" -v n="$CLUSTERS" 'BEGIN { printf "%.0f", r / n }')
echo "tunnels held ${HELD[*]}; replica KiB per tunnel ${PER_TUNNEL[*]}; agent $AGENT_PER_CLUSTER KiB per cluster" >&2

# 4. kubectl on the first, a middle and the last cluster through each replica.
ANSWERED=0; CALLS=0
for i in 0 1 2; do
  for id in "${IDS[0]}" "${IDS[$((CLUSTERS / 2))]}" "${IDS[$((CLUSTERS - 1))]}"; do
    CALLS=$((CALLS + 1))
    "$BIN" kubeconfig --server "https://localhost:${PORTS[$i]}" --token "$TOKEN" --cluster "$id" \
      --cacert "$WORK/ca.pem" >"$WORK/kubeconfig"
    if kubectl --kubeconfig "$WORK/kubeconfig" --request-timeout 10s get ns >/dev/null 2>"$WORK/kubectl.err"; then
      ANSWERED=$((ANSWERED + 1))
    else
      echo "kubectl on $id through replica $i: $(cat "$WORK/kubectl.err")" >&2
    fi
  done
done
echo "kubectl: $ANSWERED of $CALLS answered" >&2

# Listing clusters, everything connected (two thirds of them through a peer, whose advertised
# apiEndpoint and caCert are read from etcd): the first page (norman's default limit) through a
# replica, median of 5.
LIST_MS=()
for _ in 1 2 3 4 5; do
  LIST_MS+=("$(curl -sk -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" \
    "https://localhost:${PORTS[0]}/v3/clusters" | awk '{ printf "%.0f", $1 * 1000 }')")
done
LIST_MEDIAN=$(median "${LIST_MS[@]}")
echo "listing clusters: ${LIST_MS[*]} ms" >&2

# 2 and 5. etcd and the mesh, everything connected.
DB_AFTER=$(etcd_status dbSize)
DB_IN_USE=$(etcd_status dbSizeInUse)
PEER_PORTS="( dport = :19810 or dport = :19820 or dport = :19830 )"
PEERS=$(ss -Htnp state established "$PEER_PORTS" | grep -c '"corral"' || true)
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

# 6. The baseline: a single server (data directory) with BASELINE tunnels, measured as the replicas.
for p in "${AGENTS[@]}"; do kill "$p" 2>/dev/null || true; done
single() { # NAME: starts the single server, sets SINGLE
  CATTLE_BOOTSTRAP_PASSWORD=ha-bench-password CORRAL_LOG=warn "$BIN" serve --data-dir "$WORK/single" \
    --bind 127.0.0.1 --https-port 19860 --http-port 19861 --hostname localhost 2>"$WORK/$1.log" &
  SINGLE=$!; PIDS+=($SINGLE)
  for _ in $(seq 1 300); do curl -skf https://127.0.0.1:19860/ping >/dev/null && return 0; sleep 0.1; done
  echo "the single server never answered" >&2; return 1
}
single single
: >"$WORK/single.txt"
python3 benches/scale_register.py https://localhost:19860 "$(ha_login https://localhost:19860)" "$BASELINE" \
  "$WORK/single.txt" "$CONNECTIONS" >/dev/null
kill "$SINGLE"; wait "$SINGLE" 2>/dev/null || true
single single-again
sleep 10
SINGLE_BEFORE=$(rss_kib "$SINGLE")
curl -sk https://localhost:19860/cacerts >"$WORK/single-ca.pem"
CATTLE_TOKEN=$(cut -d' ' -f2 "$WORK/single.txt" | paste -sd,) CORRAL_LOG=warn "$BIN" agent --server https://localhost:19860 \
  --ca-checksum "$(sha256sum <"$WORK/single-ca.pem" | cut -d' ' -f1)" --simulate --count "$BASELINE" 2>>"$WORK/agent.log" &
PIDS+=($!)
SINGLE_HELD=0
for _ in $(seq 1 240); do
  SINGLE_HELD=$(sessions_at 19860); [ "${SINGLE_HELD:-0}" -ge "$BASELINE" ] && break; sleep 0.5
done
sleep 10
SINGLE_AFTER=$(rss_kib "$SINGLE")
SINGLE_PER_TUNNEL=$(awk -v a="$SINGLE_AFTER" -v b="$SINGLE_BEFORE" -v n="$SINGLE_HELD" 'BEGIN { printf "%.1f", n ? (a - b) / n : 0 }')
echo "single server: $SINGLE_HELD tunnels, $SINGLE_PER_TUNNEL KiB per tunnel" >&2
GROWTH_MIB=$(mib $((DB_AFTER - DB_BEFORE)))
mkdir -p "$(dirname "$OUT")"
# What follows this line in $OUT (written by hand: before and after, what is left) is kept.
NOTES_MARKER='<!-- notes below: kept by scale.sh -->'
NOTES=$( [ -f "$OUT" ] && sed -n "/^$NOTES_MARKER\$/,\$p" "$OUT" || true)
{
  echo "# Scale-out: $CLUSTERS clusters on three replicas"
  echo
  echo "Measured by \`CLUSTERS=$CLUSTERS benches/scale.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores,"
  echo "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);"
  echo "one etcd member ($(etcd --version | head -1)), three replicas (\`--hostname localhost\`) behind"
  echo "HAProxy (round robin, TCP; $LB_PROCESSES process(es) on one address, each within the $(ulimit -Hn) open files a process may have),"
  echo "\`corral agent --simulate\` processes of $AGENT_BATCH clusters each, everything on loopback"
  echo "and on the same two cores; $("$BIN" --version)."
  echo
  echo "| figure | measured | target |"
  echo "|---|---|---|"
  echo "| clusters registered (a cluster and its registration token, $CONNECTIONS connections through the balancer) | $CLUSTERS in $REGISTER_S s | |"
  echo "| replicas' server CPU per cluster registered: first $FIRST → last $FIRST | $FIRST_CPU ms → $LAST_CPU ms | ≤ 5 ms, the same at N as at a few |"
  echo "| one cluster's two calls, median (99th percentile): first $FIRST → last $FIRST | $(jq -r '"\(.p50_ms) ms (\(.p99_ms))"' <<<"$FIRST_JSON") → $(jq -r '"\(.p50_ms) ms (\(.p99_ms))"' <<<"$LAST_JSON") | |"
  echo "| etcd's CPU per cluster registered: first → last | $FIRST_ETCD ms → $LAST_ETCD ms | |"
  echo "| etcd's database: before → after (in use after) | $(mib "$DB_BEFORE") → $(mib "$DB_AFTER") MiB ($(mib "$DB_IN_USE") MiB) | growth ≤ 64 MiB |"
  echo "| every cluster connected through the balancer | $CONNECTED of $CLUSTERS after $CONNECT_S s | all within 60 s |"
  echo "| tunnels held by each replica | ${HELD[*]} | even |"
  echo "| each replica's resident memory per tunnel it holds | ${PER_TUNNEL[0]} / ${PER_TUNNEL[1]} / ${PER_TUNNEL[2]} KiB | ≤ 16 KiB |"
  echo "| the same, for one \`corral serve\` on a data directory holding $SINGLE_HELD tunnels (this run's baseline) | $SINGLE_PER_TUNNEL KiB | what a replica holds |"
  echo "| each replica's resident memory, before the agents → after | $((RSS_BEFORE[0] / 1024)) → $((RSS_AFTER[0] / 1024)) / $((RSS_BEFORE[1] / 1024)) → $((RSS_AFTER[1] / 1024)) / $((RSS_BEFORE[2] / 1024)) → $((RSS_AFTER[2] / 1024)) MiB | |"
  echo "| the agents' resident memory per simulated cluster | $AGENT_PER_CLUSTER KiB | |"
  echo "| \`kubectl get ns\`: first, middle and last cluster through each replica | $ANSWERED of $CALLS | 9 of 9 |"
  echo "| \`GET /v3/clusters\` (the first page), every cluster connected, median of 5 | $LIST_MEDIAN ms | paginated and fast |"
  echo "| peering sessions between the replicas | $PEERS | 6 (n×(n−1)) |"
  echo
  echo "Replica memory is read (VmRSS) after the replicas started again, registration done, and 10 s after the"
  echo "last tunnel connected; the difference is divided by the tunnels that replica holds (it also holds"
  echo "the routes to the other replicas' tunnels; what each agent advertised stays in etcd, read when a"
  echo "relayed dial needs it). corral runs without transparent huge pages, so resident memory is what"
  echo "it touched, in 4 KiB pages. Registration CPU is the three replicas' user and system time over a run, divided by its clusters: the first $FIRST are created on an"
  echo "empty store, the last $FIRST beside $((CLUSTERS - FIRST)) others."
  if [ -n "$NOTES" ]; then echo; echo "$NOTES"; fi
} >"$OUT.new"
mv "$OUT.new" "$OUT"
echo "wrote $OUT (etcd grew $GROWTH_MIB MiB)" >&2
