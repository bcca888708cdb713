# Shared by the scripts in this folder: paths, the build profile, and process helpers.
# Sourced, not run.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=$root/.run
# Build profile for the stack: release (default) or debug (STOCKWIRE_PROFILE=debug).
profile=${STOCKWIRE_PROFILE:-release}
bin_dir=$root/target/$profile
# Services, in start order; those not built yet are skipped. Each runs as the user of
# the same name in nats.conf.
services=(stock-projector low-stock-watcher velocity-projector velocity-watcher)

# Development passwords for the users in nats.conf, exported when unset (nats.conf has no
# defaults of its own). Anywhere but a laptop, set your own before scripts/up: the server
# and the clients read the same variables.
export STOCKWIRE_ADMIN_PASSWORD=${STOCKWIRE_ADMIN_PASSWORD:-dev-admin}
export STOCKWIRE_CLI_PASSWORD=${STOCKWIRE_CLI_PASSWORD:-dev-cli}
export STOCKWIRE_STOCK_PROJECTOR_PASSWORD=${STOCKWIRE_STOCK_PROJECTOR_PASSWORD:-dev-stock-projector}
export STOCKWIRE_LOW_STOCK_WATCHER_PASSWORD=${STOCKWIRE_LOW_STOCK_WATCHER_PASSWORD:-dev-low-stock-watcher}
export STOCKWIRE_VELOCITY_PROJECTOR_PASSWORD=${STOCKWIRE_VELOCITY_PROJECTOR_PASSWORD:-dev-velocity-projector}
export STOCKWIRE_VELOCITY_WATCHER_PASSWORD=${STOCKWIRE_VELOCITY_WATCHER_PASSWORD:-dev-velocity-watcher}
export STOCKWIRE_SYS_PASSWORD=${STOCKWIRE_SYS_PASSWORD:-dev-sys}

# The password of user $1 (admin, cli, a service name, sys).
password_of() {
  local var=STOCKWIRE_${1//-/_}_PASSWORD
  var=${var^^}
  printf '%s' "${!var}"
}

# Runs "$@" as nats.conf's user $1 (NATS_USER/NATS_PASSWORD set for that command only).
as_user() {
  local user=$1
  shift
  NATS_USER=$user NATS_PASSWORD=$(password_of "$user") "$@"
}

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
