#!/usr/bin/env bash
# Many simulated clusters in one agent process: `corral agent --simulate --count N` against one corral,
# each agent its own cluster (its own registration token). Measures the agent's resident memory per
# simulated cluster and corral's per tunnel, checks a few clusters answer kubectl through corral, and
# writes docs/SIMULATED-CLUSTERS.md.
#
#   benches/simulate.sh                  # 1,000 clusters, about a minute once corral is built
#   CLUSTERS=200 benches/simulate.sh     # quicker
#
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTERS=${CLUSTERS:-1000}
PORT=${PORT:-19543}
OUT=${OUT:-docs/SIMULATED-CLUSTERS.md}
# shellcheck source=benches/common.sh
source benches/common.sh
S=https://127.0.0.1:$PORT
sessions() { curl -sk "$S/metrics" | awk '$1 == "corral_tunnel_sessions" {print $2}'; }

CATTLE_BOOTSTRAP_PASSWORD=simulate-bench-pw CORRAL_LOG=warn "$BIN" serve --data-dir "$WORK/d" \
  --bind 127.0.0.1 --https-port "$PORT" --http-port $((PORT + 1)) &
PIDS+=($!); CORRAL=$!
until curl -skf "$S/ping" >/dev/null; do sleep 0.1; done
TOKEN=$(curl -sk -X POST "$S/v3-public/localProviders/local?action=login" \
  -d '{"username":"admin","password":"simulate-bench-pw"}' | jq -r .token)
AUTH="Authorization: Bearer $TOKEN"

echo "creating $CLUSTERS clusters and their registration tokens" >&2
IDS=(); TOKENS=()
for i in $(seq 1 "$CLUSTERS"); do
  id=$(curl -sk -X POST "$S/v3/clusters" -H "$AUTH" -d "{\"name\":\"sim-$i\"}" | jq -r .id)
  IDS+=("$id")
  TOKENS+=("$(curl -sk -X POST "$S/v3/clusterregistrationtokens" -H "$AUTH" -d "{\"clusterId\":\"$id\"}" | jq -r .token)")
done
SUM=$(curl -sk "$S/cacerts" | sha256sum | cut -d' ' -f1)
sleep 2
CORRAL_BEFORE=$(rss_kib "$CORRAL")

STARTED=$(date +%s.%N)
CATTLE_TOKEN=$(IFS=,; echo "${TOKENS[*]}") CORRAL_LOG=warn "$BIN" agent --server "$S" --ca-checksum "$SUM" \
  --simulate --count "$CLUSTERS" &
PIDS+=($!); AGENT=$!
for _ in $(seq 1 1200); do
  [ "$(sessions)" = "$CLUSTERS" ] && break
  sleep 0.1
done
CONNECTED=$(sessions)
ELAPSED=$(awk -v a="$STARTED" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
[ "$CONNECTED" = "$CLUSTERS" ] || { echo "only $CONNECTED of $CLUSTERS tunnels connected" >&2; exit 1; }
sleep 5

# kubectl through corral against the first, a middle and the last cluster.
curl -sk "$S/cacerts" >"$WORK/ca.pem"
for id in "${IDS[0]}" "${IDS[$((CLUSTERS / 2))]}" "${IDS[$((CLUSTERS - 1))]}"; do
  "$BIN" kubeconfig --server "$S" --token "$TOKEN" --cluster "$id" --cacert "$WORK/ca.pem" >"$WORK/kubeconfig"
  kubectl --kubeconfig "$WORK/kubeconfig" create namespace "bench-$id" >/dev/null
  kubectl --kubeconfig "$WORK/kubeconfig" get ns "bench-$id" >/dev/null
done
AGENT_RSS=$(rss_kib "$AGENT")
CORRAL_AFTER=$(rss_kib "$CORRAL")
PER_CLUSTER=$(awk -v r="$AGENT_RSS" -v n="$CLUSTERS" 'BEGIN { printf "%.0f", r / n }')
PER_TUNNEL=$(awk -v a="$CORRAL_AFTER" -v b="$CORRAL_BEFORE" -v n="$CLUSTERS" 'BEGIN { printf "%.1f", (a - b) / n }')
echo "$CLUSTERS clusters connected in ${ELAPSED}s; agent $((AGENT_RSS / 1024)) MiB ($PER_CLUSTER KiB per cluster); corral +$(((CORRAL_AFTER - CORRAL_BEFORE) / 1024)) MiB ($PER_TUNNEL KiB per tunnel)" >&2

cat >"$OUT" <<EOF
# Simulated clusters

Measured by \`benches/simulate.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo).
One \`corral serve\` and one \`corral agent --simulate --count $CLUSTERS\` (release builds), each simulated
cluster with its own registration token, on loopback.

| measure | value |
|---|---|
| clusters (tunnels) | $CLUSTERS |
| all tunnels connected after | ${ELAPSED} s |
| agent process, resident | $((AGENT_RSS / 1024)) MiB |
| **agent, per simulated cluster** | **$PER_CLUSTER KiB** (target: under about 200 KiB) |
| corral, resident before the agents → after | $((CORRAL_BEFORE / 1024)) → $((CORRAL_AFTER / 1024)) MiB |
| **corral, per tunnel** | **$PER_TUNNEL KiB** |

Three of the clusters (the first, a middle one, the last) then answered \`kubectl create namespace\` and
\`kubectl get ns\` through corral's proxy with a kubeconfig from \`corral kubeconfig\`; the figures
above were read after that.
EOF
echo "wrote $OUT" >&2
