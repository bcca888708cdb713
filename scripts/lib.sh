# Shared by the scripts in this folder: paths, the build profile, and process helpers.
# Sourced, not run.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=$root/.run
# Build profile for the stack: release (default) or debug (STOCKWIRE_PROFILE=debug).
profile=${STOCKWIRE_PROFILE:-release}
bin_dir=$root/target/$profile
# Services, in start order; those not built yet are skipped. Each runs as the user of
# the same name in nats.conf (stockwire-dashboard as user dashboard: see user_of).
services=(stock-projector low-stock-watcher velocity-projector velocity-watcher stockwire-dashboard)

# The nats.conf user a service binary runs as.
user_of() {
  printf '%s' "${1#stockwire-}"
}

# Development passwords for the users in nats.conf, exported when unset (nats.conf has no
# defaults of its own). Anywhere but a laptop, set your own before scripts/up: the server
# and the clients read the same variables.
export STOCKWIRE_ADMIN_PASSWORD=${STOCKWIRE_ADMIN_PASSWORD:-dev-admin}
export STOCKWIRE_CLI_PASSWORD=${STOCKWIRE_CLI_PASSWORD:-dev-cli}
export STOCKWIRE_STOCK_PROJECTOR_PASSWORD=${STOCKWIRE_STOCK_PROJECTOR_PASSWORD:-dev-stock-projector}
export STOCKWIRE_LOW_STOCK_WATCHER_PASSWORD=${STOCKWIRE_LOW_STOCK_WATCHER_PASSWORD:-dev-low-stock-watcher}
export STOCKWIRE_VELOCITY_PROJECTOR_PASSWORD=${STOCKWIRE_VELOCITY_PROJECTOR_PASSWORD:-dev-velocity-projector}
export STOCKWIRE_VELOCITY_WATCHER_PASSWORD=${STOCKWIRE_VELOCITY_WATCHER_PASSWORD:-dev-velocity-watcher}
export STOCKWIRE_DASHBOARD_PASSWORD=${STOCKWIRE_DASHBOARD_PASSWORD:-dev-dashboard}
export STOCKWIRE_SITE_PASSWORD=${STOCKWIRE_SITE_PASSWORD:-dev-site}
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

# The local cluster (scripts/up --cluster): node nK runs cluster/nK.conf with clients on
# 4221+K and monitoring on 8221+K; its pid and log are .run/nK.pid and .run/nK.log.
cluster_nodes=(n1 n2 n3)
cluster_url=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224

# Starts nats-server as $1 with config file $2, clients on port $3, from the current
# directory (stores are relative to it: run from the repo root). Pid and log in .run/$1.*.
# Leaves it be if it already runs; fails if another process holds the port.
start_server() {
  local name=$1 conf=$2 port=$3 pidfile=$run_dir/$1.pid
  if alive "$pidfile"; then
    echo "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "scripts/up: something else listens on 127.0.0.1:$port; stop it first" >&2
    return 1
  fi
  "$root/.tools/bin/nats-server" -c "$conf" >>"$run_dir/$name.log" 2>&1 &
  echo $! >"$pidfile"
  wait_for_port "$port" 10 || { echo "scripts/up: $name did not start; see .run/$name.log" >&2; return 1; }
  echo "$name started (pid $(cat "$pidfile"), log .run/$name.log)"
}

# True when the server with monitoring on localhost port $1 names a JetStream meta leader
# (the cluster has elected one and this node knows it), as its /jsz endpoint reports.
has_meta_leader() {
  local jsz
  jsz=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf 'GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && cat <&3) 2>/dev/null) || return 1
  [[ $jsz =~ \"leader\":\ *\"[^\"]+\" ]]
}
