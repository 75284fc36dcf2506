# Shared by the benchmark scripts (sourced, from the project root): a release corral in $BIN, a work
# directory in $WORK, and the processes in PIDS stopped (and $WORK removed) on exit.
# CORRAL_BIN=path measures that binary instead (an older build, for a before/after in one sitting).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ -n "${CORRAL_BIN:-}" ]; then
  BIN=$CORRAL_BIN
else
  cargo build --release --bin corral -q
  BIN=$PWD/target/release/corral
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
# Resident memory of a process, KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
