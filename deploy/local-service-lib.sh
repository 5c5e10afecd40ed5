# shellcheck shell=bash
# Process management shared by deploy/kafka-local.sh and deploy/prometheus-local.sh.
# Sourced, not run. The caller defines log(), die(), PYTHON and PID_FILE.

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

port_in_use() {  # $1 = port; true if something accepts connections there
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); sys.exit(0)
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

# Pid from $PID_FILE if that process is alive and its command line contains $1.
# Guards against stale pid files and recycled pids.
pid_with_cmdline() {
  [[ -f "$PID_FILE" ]] || return 0
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null && [[ -r /proc/$pid/cmdline ]] &&
     tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1"; then
    echo "$pid"
  fi
}

# stop_pid NAME PID TIMEOUT_S: SIGTERM, wait up to TIMEOUT_S, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2" timeout="$3"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      log "still alive after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
}
