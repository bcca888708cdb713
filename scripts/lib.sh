# Shared by the scripts in this folder: paths, the build profile, and process helpers.
# Sourced, not run.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=$root/.run
# Build profile for the stack: release (default) or debug (STOCKWIRE_PROFILE=debug).
profile=${STOCKWIRE_PROFILE:-release}
bin_dir=$root/target/$profile
# Services, in start order; those not built yet are skipped.
services=(stock-projector low-stock-watcher velocity-projector velocity-watcher)

# True when the process in pid file $1 is alive.
alive() {
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Waits up to $2 seconds for TCP port $1 on localhost to accept connections.
wait_for_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
