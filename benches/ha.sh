#!/usr/bin/env bash
# HA figures (issue 15): corral replicas on a real three-member etcd (Debian's etcd-server), HAProxy in
# front. Writes docs/HA.md with
#   1. server CPU per handshake of a replica in store mode against a corral in file mode (cached name
#      and new name; the rounds alternate, each round's own ratio counts);
#   2. how long a change made on one replica takes to reach the other two (a new cluster, visible
#      through their API; and server-url, visible as the certificate they serve);
#   3. how long, after a SIGKILL of the replica holding an agent's tunnel, until the agent is back
#      (through the balancer, on another replica) and kubectl works through the balancer again;
#   4. bulk throughput of a dial relayed through a peer replica against the holder's own tunnel.
#
#   benches/ha.sh                          # about 3 minutes once corral is built
#   ROUNDS=3 CHANGES=10 KILLS=2 benches/ha.sh
#
# Loopback only. Needs etcd, etcdctl, haproxy, nginx, kubectl, curl, jq, openssl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-5}
CHANGES=${CHANGES:-20}
KILLS=${KILLS:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-docs/HA.md}
# shellcheck source=benches/common.sh
source benches/common.sh
now_ms() { date +%s%3N; }

start_etcd 3

# 1. Handshake CPU: file mode against store mode, the same flags otherwise.
FLAGS=(--mint-rate 0 --mint-rate-per-client 0 --max-names 1000000 --session-tickets off)
CORRAL_LOG=warn taskset -c "$SERVER_CPU" "$BIN" serve --data-dir "$WORK/file" --bind 127.0.0.1 \
  --https-port 19700 --http-port 19701 "${FLAGS[@]}" 2>"$WORK/file.log" &
PIDS+=($!); FILE=$!
wait_port 19700
REPLICA_LOG=warn start_replica store 19710 "${FLAGS[@]}"   # logging as the file-mode server
STORE=$LAST_PID
taskset -acp "$SERVER_CPU" "$STORE" >/dev/null   # every thread, as the file-mode server
for port in 19700 19710; do
  "$BIN" bench handshake --target "127.0.0.1:$port" --insecure --sni cached.lab.test --count 1 --json >/dev/null
done
CPU_ROWS=(); CACHED_RATIOS=(); NEW_RATIOS=()
for round in $(seq 1 "$ROUNDS"); do
  read -r -a fc < <(run_bench "$FILE" --target 127.0.0.1:19700 --sni cached.lab.test)
  read -r -a sc < <(run_bench "$STORE" --target 127.0.0.1:19710 --sni cached.lab.test)
  read -r -a fn < <(run_bench "$FILE" --target 127.0.0.1:19700 --unique-sni "f$round.new.lab.test")
  read -r -a sn < <(run_bench "$STORE" --target 127.0.0.1:19710 --unique-sni "s$round.new.lab.test")
  CACHED_RATIOS+=("$(ratio "${sc[0]}" "${fc[0]}")"); NEW_RATIOS+=("$(ratio "${sn[0]}" "${fn[0]}")")
  CPU_ROWS+=("| $round | ${fc[0]} | ${sc[0]} | ${CACHED_RATIOS[-1]}× | ${fn[0]} | ${sn[0]} | ${NEW_RATIOS[-1]}× |")
  echo "round $round: cached file ${fc[0]} µs, store ${sc[0]} µs; new file ${fn[0]} µs, store ${sn[0]} µs" >&2
done
kill "$FILE" "$STORE"

# 2. Propagation: three replicas; a change on the first, polled for on the other two.
start_replica r0 19720; R0=$LAST_PID
start_replica r1 19730; R1=$LAST_PID
start_replica r2 19740; R2=$LAST_PID
REPLICA_PIDS=("$R0" "$R1" "$R2"); REPLICA_PORTS=(19720 19730 19740)
TOKEN=$(ha_login https://localhost:19720)
AUTH="Authorization: Bearer $TOKEN"
PROPAGATION=()
for i in $(seq 1 "$CHANGES"); do
  start=$(now_ms)
  id=$(curl -sk -X POST https://localhost:19720/v3/clusters -H "$AUTH" -d "{\"name\":\"p$i\"}" | jq -r .id)
  for port in 19730 19740; do
    for _ in $(seq 1 2000); do
      [ "$(curl -sk -o /dev/null -w '%{http_code}' "https://localhost:$port/v3/clusters/$id" -H "$AUTH")" = 200 ] && break
    done
  done
  PROPAGATION+=($(($(now_ms) - start)))
done
served_host() { # the first SAN of the certificate served at PORT to SNI other.lab.test
  openssl s_client -connect "127.0.0.1:$1" -servername other.lab.test </dev/null 2>/dev/null |
    openssl x509 -noout -ext subjectAltName 2>/dev/null | awk -F'DNS:' 'NF > 1 {print $2; exit}'
}
start=$(now_ms)
curl -sk -X PUT https://localhost:19720/v3/settings/server-url -H "$AUTH" -d '{"value":"https://localhost:19750"}' >/dev/null   # the balancer's URL
for port in 19730 19740; do
  for _ in $(seq 1 2000); do [ "$(served_host "$port")" = localhost ] && break; done
done
PIN_MS=$(($(now_ms) - start))
echo "propagation: clusters ${PROPAGATION[*]} ms; server-url pin $PIN_MS ms" >&2

# 3. Recovery after a SIGKILL: HAProxy in front, a simulated agent and kubectl through it.
cat >"$WORK/haproxy.cfg" <<END
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend rancher
  bind 127.0.0.1:19750
  default_backend replicas
backend replicas
  default-server check inter 300ms fall 1 rise 2
  server r0 127.0.0.1:19720
  server r1 127.0.0.1:19730
  server r2 127.0.0.1:19740
END
haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy.log" &
PIDS+=($!)
wait_port 19750
LB=https://localhost:19750
CLUSTER=$(curl -sk -X POST "$LB/v3/clusters" -H "$AUTH" -d '{"name":"recovery"}' | jq -r .id)
REG=$(curl -sk -X POST "$LB/v3/clusterregistrationtokens" -H "$AUTH" -d "{\"clusterId\":\"$CLUSTER\"}" | jq -r .token)
curl -sk "$LB/cacerts" >"$WORK/ca.pem"
CATTLE_TOKEN=$REG CORRAL_LOG=${AGENT_LOG:-warn} "$BIN" agent --server "$LB" --ca-checksum "$(sha256sum <"$WORK/ca.pem" | cut -d' ' -f1)" \
  --simulate 2>"$WORK/agent.log" &
PIDS+=($!)
until curl -sk "$LB/v3/clusters/$CLUSTER" -H "$AUTH" | jq -e .connected >/dev/null; do sleep 0.2; done
"$BIN" kubeconfig --server "$LB" --token "$TOKEN" --cluster "$CLUSTER" --cacert "$WORK/ca.pem" >"$WORK/kubeconfig"
kube() { kubectl --kubeconfig "$WORK/kubeconfig" --request-timeout 2s "$@"; }
kube create namespace survives >/dev/null
sessions_at() { curl -sk --max-time 1 "https://127.0.0.1:$1/metrics" | awk '$1 == "corral_tunnel_sessions" {print $2}'; }
AGENT_BACK=(); KUBECTL_BACK=()
for round in $(seq 1 "$KILLS"); do
  holder=""
  for i in 0 1 2; do [ "$(sessions_at "${REPLICA_PORTS[$i]}")" = 1 ] && holder=$i; done
  [ -n "$holder" ] || { echo "no replica holds the tunnel" >&2; exit 1; }
  kill -9 "${REPLICA_PIDS[$holder]}"; wait "${REPLICA_PIDS[$holder]}" 2>/dev/null || true
  start=$(now_ms); agent_ms=""; kubectl_ms=""
  while [ -z "$agent_ms" ] || [ -z "$kubectl_ms" ]; do
    if [ -z "$agent_ms" ]; then
      for i in 0 1 2; do
        [ "$i" != "$holder" ] && [ "$(sessions_at "${REPLICA_PORTS[$i]}")" = 1 ] && agent_ms=$(($(now_ms) - start))
      done
    fi
    if [ -z "$kubectl_ms" ] && kube get ns survives >/dev/null 2>&1; then kubectl_ms=$(($(now_ms) - start)); fi
    [ $(($(now_ms) - start)) -lt 120000 ] || { echo "no recovery within 120 s" >&2; exit 1; }
    sleep 0.1
  done
  AGENT_BACK+=("$agent_ms"); KUBECTL_BACK+=("$kubectl_ms")
  echo "kill $round (replica $holder): agent back after $agent_ms ms, kubectl after $kubectl_ms ms" >&2
  # The killed replica comes back (same port) for the next round.
  start_replica "r$holder-again-$round" "${REPLICA_PORTS[$holder]}"
  REPLICA_PIDS[$holder]=$LAST_PID
  sleep 2
done

# 4. A dial relayed through a peer against the holder's own tunnel.
relay_throughput "${RELAY_MIB:-256}" "${RELAY_ROUNDS:-3}"

max() { printf '%s\n' "$@" | sort -g | tail -1; }
mkdir -p "$(dirname "$OUT")"
{
  echo "# HA: replicas on etcd"
  echo
  echo "Measured by \`benches/ha.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores,"
  echo "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); a three-member etcd"
  echo "($(etcd --version | head -1)) and the replicas on loopback; $("$BIN" --version)."
  echo
  echo "| figure | measured | goal |"
  echo "|---|---|---|"
  echo "| handshake server CPU, store mode ÷ file mode, cached name (median of $ROUNDS rounds) | $(median "${CACHED_RATIOS[@]}")× | the same within noise |"
  echo "| handshake server CPU, store mode ÷ file mode, new name per connection (median of $ROUNDS rounds) | $(median "${NEW_RATIOS[@]}")× | the same within noise |"
  echo "| a new cluster on one replica visible on the two others ($CHANGES changes) | median $(median "${PROPAGATION[@]}") ms, max $(max "${PROPAGATION[@]}") ms | ≤ 1 s |"
  echo "| server-url PUT on one replica until the two others serve the pinned certificate | $PIN_MS ms | ≤ 1 s |"
  echo "| SIGKILL of the replica holding the tunnel → agent connected to another ($KILLS kills) | median $(median "${AGENT_BACK[@]}") ms, max $(max "${AGENT_BACK[@]}") ms | ≤ 15 s |"
  echo "| SIGKILL → kubectl through the balancer works again ($KILLS kills) | median $(median "${KUBECTL_BACK[@]}") ms, max $(max "${KUBECTL_BACK[@]}") ms | ≤ 15 s |"
  echo "| bulk download through a peer-relayed dial ÷ through the holder's own tunnel (${RELAY_MIB:-256} MiB, median of ${RELAY_ROUNDS:-3}) | ${RELAY_RATIO}× ($RELAYED_MIBS vs $DIRECT_MIBS MiB/s) | ≥ 0.5× |"
  echo
  echo "Server CPU µs per handshake (TLS 1.3, no resumption, $CONCURRENCY in flight, $DURATION per run;"
  echo "server on core $SERVER_CPU, client on core $CLIENT_CPU), file mode and store mode in turn:"
  echo
  echo "| round | cached, file | cached, store | ratio | new name, file | new name, store | ratio |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${CPU_ROWS[@]}"
  echo
  echo "Propagation times include the polling client's own round trips (each poll is a new TLS"
  echo "connection): they are upper bounds. The recovery time is dominated by the agent's redial wait"
  echo "(remotedialer's 5 s, plus up to 2 s of jitter) after the balancer cut its connection."
} >"$OUT"
echo "wrote $OUT" >&2
