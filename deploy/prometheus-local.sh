#!/usr/bin/env bash
# prometheus-local.sh — a real Prometheus (Debian's `prometheus` package) run as
# our own background process (no systemd), for local runs and tests.
# Run `deploy/prometheus-local.sh help` for usage.
set -euo pipefail

PROM_DEB_PACKAGE="prometheus"   # Debian bookworm: 2.42.0+ds-5+deb12u1 (promtool included)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

PROM_LOCAL_HOME="${PROM_LOCAL_HOME:-$REPO/.prometheus-local}"
PROM_LOCAL_DATA="${PROM_LOCAL_DATA:-$PROM_LOCAL_HOME/run}"
PROM_CONFIG="${PROM_CONFIG:-$REPO/deploy/prometheus/prometheus.yml}"
PROM_BIN="${PROM_BIN:-/usr/bin/prometheus}"
PROMTOOL_BIN="${PROMTOOL_BIN:-/usr/bin/promtool}"
PROM_START_TIMEOUT="${PROM_START_TIMEOUT:-60}"
PROM_STOP_TIMEOUT="${PROM_STOP_TIMEOUT:-20}"
PROM_EXTRA_ARGS="${PROM_EXTRA_ARGS:-}"
KEEP_DATA="${KEEP_DATA:-0}"

PID_FILE="$PROM_LOCAL_DATA/prometheus.pid"
URL_FILE="$PROM_LOCAL_DATA/url"
TSDB_DIR="$PROM_LOCAL_DATA/tsdb"
LOG_FILE="$PROM_LOCAL_DATA/prometheus.log"
LOCK_FILE="$PROM_LOCAL_HOME/.lock-$(printf '%s' "$PROM_LOCAL_DATA" | cksum | cut -d' ' -f1)"

log() { printf 'prometheus-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=deploy/local-service-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-service-lib.sh"

usage() {
  cat <<EOF
Usage: deploy/prometheus-local.sh COMMAND

Runs Debian's Prometheus ($PROM_BIN) as a background process (no systemd).

Commands:
  install  apt-get install the '$PROM_DEB_PACKAGE' package (prometheus + promtool).
           Idempotent and quick when already installed; runs 'apt-get update'
           only if the package is not installable yet. Needs root.
  start    Start Prometheus with \$PROM_CONFIG on 127.0.0.1, wait for /-/ready and
           print ONLY its URL (e.g. http://127.0.0.1:39090) on stdout.
           Idempotent: if already running, prints the URL and exits 0.
             PROM_URL=\$(deploy/prometheus-local.sh start)
           Run 'install' first (start does not install).
  stop     SIGTERM, wait (then SIGKILL), remove the data dir unless KEEP_DATA=1.
  status   Exit 0 if running (prints the URL on stderr), 1 otherwise.
  url      Print the URL of the running instance (exit 1 if none).
  help     This text.

Environment:
  PROM_CONFIG         config file (default <repo>/deploy/prometheus/prometheus.yml);
                      checked with 'promtool check config' before starting
  PROM_PORT           listen port on 127.0.0.1 (default: a free port)
  PROM_LOCAL_HOME     base dir (default <repo>/.prometheus-local)
  PROM_LOCAL_DATA     data dir: pid, log, tsdb (default \$PROM_LOCAL_HOME/run)
  PROM_START_TIMEOUT  seconds to wait for /-/ready (default 60)
  PROM_STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 20)
  PROM_EXTRA_ARGS     extra prometheus flags (word-split), e.g. --web.enable-lifecycle
  KEEP_DATA=1         stop: keep the data dir (tsdb); start: reuse the tsdb
Log: \$PROM_LOCAL_DATA/prometheus.log
EOF
}

PYTHON="$(command -v python3 || true)"
[[ -n "$PYTHON" ]] || PYTHON="$REPO/.venv/bin/python"

http_ok() {  # $1 = url; true on HTTP 200
  "$PYTHON" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

# Pid of our running instance (checks the command line: stale/recycled pids ignored).
running_pid() { pid_with_cmdline "--storage.tsdb.path=$TSDB_DIR"; }

cmd_install() {
  if [[ -x "$PROM_BIN" && -x "$PROMTOOL_BIN" ]]; then
    log "already installed: $("$PROM_BIN" --version 2>&1 | head -n1)"
    return 0
  fi
  [[ "$(id -u)" == "0" ]] || die "install needs root (apt-get install $PROM_DEB_PACKAGE)"
  export DEBIAN_FRONTEND=noninteractive
  local cand
  cand="$(apt-cache policy "$PROM_DEB_PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -z "$cand" || "$cand" == "(none)" ]]; then
    log "apt-get update (package $PROM_DEB_PACKAGE not known yet)"
    apt-get update -q >&2
  fi
  log "apt-get install $PROM_DEB_PACKAGE"
  # policy-rc.d: Debian's maintainer scripts must not try to start the service.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  local rc=0
  apt-get install -y -q --no-install-recommends "$PROM_DEB_PACKAGE" >&2 || rc=$?
  [[ "$created_policy" == "1" ]] && rm -f "$policy"
  [[ "$rc" == "0" ]] || die "apt-get install $PROM_DEB_PACKAGE failed"
  [[ -x "$PROM_BIN" ]] || die "$PROM_BIN missing after install"
  [[ -x "$PROMTOOL_BIN" ]] || die "$PROMTOOL_BIN missing after install"
  log "installed: $("$PROM_BIN" --version 2>&1 | head -n1)"
}

show_log_tail() {
  if [[ -s "$LOG_FILE" ]]; then
    log "---- last 40 lines of $LOG_FILE ----"
    tail -n 40 "$LOG_FILE" >&2 || true
  fi
}

cmd_url() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" && -s "$URL_FILE" ]]; then
    cat "$URL_FILE"
  else
    log "no prometheus running (data dir $PROM_LOCAL_DATA)"
    return 1
  fi
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "running (pid $pid) at $(cat "$URL_FILE" 2>/dev/null || echo '?')"
    return 0
  fi
  log "not running"
  return 1
}

cmd_start() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" && -s "$URL_FILE" ]]; then
    log "already running (pid $pid)"
    cat "$URL_FILE"
    return 0
  fi
  [[ -x "$PROM_BIN" ]] || die "$PROM_BIN not found: run 'deploy/prometheus-local.sh install' first"
  [[ -f "$PROM_CONFIG" ]] || die "config file not found: $PROM_CONFIG (set PROM_CONFIG)"
  local config
  config="$(cd "$(dirname "$PROM_CONFIG")" && pwd)/$(basename "$PROM_CONFIG")"
  if [[ -x "$PROMTOOL_BIN" ]] && ! "$PROMTOOL_BIN" check config "$config" >&2; then
    die "promtool check config failed for $config"
  fi

  if [[ "$KEEP_DATA" != "1" ]]; then
    rm -rf "$PROM_LOCAL_DATA"   # stale state from a crashed/killed run
  fi
  mkdir -p "$TSDB_DIR"
  rm -f "$PID_FILE" "$URL_FILE"

  local port="${PROM_PORT:-$(free_port)}"
  [[ "$port" =~ ^[0-9]+$ ]] || die "invalid PROM_PORT: $port"
  if port_in_use "$port"; then die "port $port is already in use (set PROM_PORT to another port)"; fi
  local url="http://127.0.0.1:$port"

  log "starting prometheus on $url with $config"
  # shellcheck disable=SC2086  # PROM_EXTRA_ARGS is intentionally word-split
  setsid "$PROM_BIN" \
    --config.file="$config" \
    --storage.tsdb.path="$TSDB_DIR" \
    --web.listen-address="127.0.0.1:$port" \
    $PROM_EXTRA_ARGS \
    </dev/null >"$LOG_FILE" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + PROM_START_TIMEOUT))
  until http_ok "$url/-/ready"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail
      rm -f "$PID_FILE"
      die "prometheus exited during startup"
    fi
    if (( SECONDS >= deadline )); then
      show_log_tail
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      die "prometheus not ready within ${PROM_START_TIMEOUT}s (PROM_START_TIMEOUT)"
    fi
    sleep 0.3
  done
  echo "$url" >"$URL_FILE"
  log "ready at $url (pid $pid; log $LOG_FILE)"
  echo "$url"
}

cmd_stop() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    stop_pid prometheus "$pid" "$PROM_STOP_TIMEOUT"
  else
    log "not running"
  fi
  rm -f "$PID_FILE" "$URL_FILE"
  if [[ "$KEEP_DATA" != "1" ]]; then
    rm -rf "$PROM_LOCAL_DATA"
  fi
}

main() {
  local cmd="${1:-help}"
  case "$cmd" in
    help|-h|--help) usage; return 0 ;;
    install) cmd_install; return ;;
    start|stop|status|url|bootstrap) ;;
    *) usage >&2; die "unknown command: $cmd" ;;
  esac
  mkdir -p "$PROM_LOCAL_HOME"
  exec 9>"$LOCK_FILE"
  flock -w 60 9 || die "could not lock $LOCK_FILE"
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url|bootstrap) cmd_url ;;
  esac
}

main "$@"
