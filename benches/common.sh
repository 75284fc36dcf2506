# Shared by the benchmark scripts (sourced, from the project root): a release corral in $BIN, a work
# directory in $WORK, and the processes in PIDS stopped (and $WORK removed) on exit.
# CORRAL_BIN=path measures that binary instead (an older build, for a before/after in one sitting).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ -n "${CORRAL_BIN:-}" ]; then
  BIN=$CORRAL_BIN
else
  # With the etcd store: the HA rows (benches/ha.sh, and compare.sh's relayed dial) need it.
  cargo build --release --features etcd --bin corral -q
  BIN=$PWD/target/release/corral
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [ -n "${KEEP_WORK:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
# Resident memory of a process, KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# --- Measuring ---

CLK_TCK=$(getconf CLK_TCK)
# CPU ticks (user + system) of a process and all its threads.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

# run_bench PID BENCH-ARGS…: one client run against the server PID; prints
# "server-CPU-µs-per-handshake ok failed rate p50 p99".
run_bench() {
  local pid=$1; shift
  local before after json ok
  before=$(ticks "$pid")
  # A run with failures still reports (its exit status is 1): the table shows them.
  json=$(taskset -c "$CLIENT_CPU" "$BIN" bench handshake --insecure --resumption off --tls 1.3 \
           --concurrency "$CONCURRENCY" --duration "$DURATION" --json "$@") || true
  after=$(ticks "$pid")
  ok=$(jq .ok <<<"$json")
  awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { printf "%.0f ", n ? t * 1e6 / hz / n : 0 }'
  jq -r '"\(.ok) \(.failed) \(.rate_per_second | floor) \(.latency_us.p50) \(.latency_us.p99)"' <<<"$json"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b ? a / b : 0 }'; }
# column_medians RUN…: the median of each column over lines of run_bench's output.
column_medians() {
  local col out=()
  for col in 1 2 3 4 5 6; do
    out+=("$(median $(printf '%s\n' "$@" | cut -d' ' -f"$col"))")
  done
  echo "${out[*]}"
}


# --- HA helpers (benches/ha.sh, compare.sh's relayed-dial row) ---

# start_etcd N: N etcd members (Debian's etcd-server) on loopback, clients on 23000+i, peers on
# 23100+i; waits until healthy and sets ETCD_ENDPOINTS (HOST:PORT,…).
start_etcd() {
  local n=${1:-1} peers="" i
  for i in $(seq 0 $((n - 1))); do peers+="${peers:+,}e$i=http://127.0.0.1:$((23100 + i))"; done
  for i in $(seq 0 $((n - 1))); do
    etcd --name "e$i" --data-dir "$WORK/etcd-$i" --initial-cluster "$peers" --initial-cluster-state new \
      --listen-client-urls "http://127.0.0.1:$((23000 + i))" --advertise-client-urls "http://127.0.0.1:$((23000 + i))" \
      --listen-peer-urls "http://127.0.0.1:$((23100 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((23100 + i))" \
      --heartbeat-interval 50 --election-timeout 500 2>"$WORK/etcd-$i.log" &
    PIDS+=($!)
  done
  ETCD_ENDPOINTS=$(seq -s, -f '127.0.0.1:%g' 23000 $((23000 + n - 1)))
  for _ in $(seq 1 300); do
    etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd not healthy" >&2; return 1
}

# start_replica NAME PORT [FLAGS…]: a corral replica on the etcd of start_etcd (HTTPS on PORT,
# HTTP on PORT+1), log in $WORK/NAME.log; LAST_PID is its pid.
start_replica() {
  local name=$1 port=$2; shift 2
  CATTLE_BOOTSTRAP_PASSWORD=ha-bench-password CORRAL_LOG=${REPLICA_LOG:-info} "$BIN" serve --store "etcd://$ETCD_ENDPOINTS" \
    --data-dir "$WORK/$name" --bind 127.0.0.1 --https-port "$port" --http-port $((port + 1)) "$@" \
    2>"$WORK/$name.log" &
  PIDS+=($!); LAST_PID=$!
  for _ in $(seq 1 300); do curl -skf "https://127.0.0.1:$port/ping" >/dev/null && return 0; sleep 0.1; done
  echo "replica $name never answered" >&2; return 1
}

# ha_login URL: a login token for the admin of start_replica's installation.
ha_login() {
  curl -sk -X POST "$1/v3-public/localProviders/local?action=login" \
    -d '{"username":"admin","password":"ha-bench-password"}' | jq -r .token
}

# relay_throughput MIB ROUNDS: bulk download through the cluster proxy of the replica holding the
# agent's tunnel (direct) and of another replica (the dial relayed through the first, peer to peer),
# in turn ROUNDS times. Sets DIRECT_MIBS, RELAYED_MIBS (medians) and RELAY_RATIO (median of the
# rounds' relayed ÷ direct). Needs etcd from start_etcd; uses ports 19600-19625.
relay_throughput() {
  local mib=$1 rounds=$2 token cluster reg sum a=https://localhost:19600 b=https://localhost:19610
  mkdir -p "$WORK/www" "$WORK/www-nginx/logs"
  head -c "${mib}M" /dev/zero >"$WORK/www/big.bin"
  cat >"$WORK/www-nginx/nginx.conf" <<END
worker_processes 1;
daemon off;
master_process off;
error_log $WORK/www-nginx/logs/error.log warn;
pid $WORK/www-nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:19620; root $WORK/www; }
}
END
  nginx -p "$WORK/www-nginx" -c "$WORK/www-nginx/nginx.conf" &
  PIDS+=($!)
  start_replica relay-a 19600
  start_replica relay-b 19610
  token=$(ha_login "$a")
  cluster=$(curl -sk -X POST "$a/v3/clusters" -H "Authorization: Bearer $token" -d '{"name":"relay"}' | jq -r .id)
  reg=$(curl -sk -X POST "$a/v3/clusterregistrationtokens" -H "Authorization: Bearer $token" \
    -d "{\"clusterId\":\"$cluster\"}" | jq -r .token)
  sum=$(curl -sk "$a/cacerts" | sha256sum | cut -d' ' -f1)
  # The agent reaches replica a only; nginx speaks plain HTTP, so the agent answers the proxy's TLS.
  CATTLE_TOKEN=$reg CORRAL_LOG=warn "$BIN" agent --server "$a" --ca-checksum "$sum" --address 127.0.0.1:19620 \
    --sa-token bench 2>"$WORK/relay-agent.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    curl -sk "$b/v3/clusters/$cluster" -H "Authorization: Bearer $token" | jq -e .connected >/dev/null && break
    sleep 0.1
  done
  local direct=() relayed=() ratios=() d r url=/k8s/clusters/$cluster/big.bin
  for round in $(seq 1 "$rounds"); do
    d=$(curl -sk -o /dev/null -w '%{speed_download}' -H "Authorization: Bearer $token" "$a$url")
    r=$(curl -sk -o /dev/null -w '%{speed_download}' -H "Authorization: Bearer $token" "$b$url")
    d=$(awk -v s="$d" 'BEGIN { printf "%.0f", s / 1048576 }'); r=$(awk -v s="$r" 'BEGIN { printf "%.0f", s / 1048576 }')
    direct+=("$d"); relayed+=("$r"); ratios+=("$(awk -v a="$r" -v b="$d" 'BEGIN { printf "%.2f", b ? a / b : 0 }')")
    echo "relay round $round: direct $d MiB/s, relayed through a peer $r MiB/s" >&2
  done
  DIRECT_MIBS=$(median "${direct[@]}"); RELAYED_MIBS=$(median "${relayed[@]}"); RELAY_RATIO=$(median "${ratios[@]}")
}
