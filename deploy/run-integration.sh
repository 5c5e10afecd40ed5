#!/usr/bin/env bash
# run-integration.sh — run tests/integration against REAL local services.
#
# Starts a Kafka broker with deploy/kafka-local.sh (stopped again on exit, also on failure or
# Ctrl-C), exports CHURN_TEST_KAFKA_BOOTSTRAP and runs `.venv/bin/pytest -q tests/integration`
# with any extra arguments passed through:
#
#   deploy/run-integration.sh                    # everything
#   deploy/run-integration.sh -k produce -x      # a subset
#
# Works from any directory. Exits with pytest's exit code; "no tests collected" (pytest exit
# code 5) counts as a failure. Environment: KAFKA_LOCAL_DATA etc. as for kafka-local.sh (the
# default here is a data dir of its own, so a broker you run by hand is left alone).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
PYTEST="$REPO/.venv/bin/pytest"

log() { printf 'run-integration: %s\n' "$*" >&2; }

[[ -x "$PYTEST" ]] || { log "ERROR: $PYTEST not found; run \`make venv\` first"; exit 2; }

export KAFKA_LOCAL_DATA="${KAFKA_LOCAL_DATA:-${KAFKA_LOCAL_HOME:-$REPO/.kafka-local}/integration}"

KAFKA_STARTED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # --- Prometheus stop goes here (see below) ---
  if [[ "$KAFKA_STARTED" == 1 ]]; then
    "$SCRIPT_DIR/kafka-local.sh" stop >&2 || log "warning: stopping Kafka failed"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- Kafka -----------------------------------------------------------------------
KAFKA_STARTED=1   # set before start: a half-started broker is stopped too
if ! BOOTSTRAP="$("$SCRIPT_DIR/kafka-local.sh" start)"; then
  log "ERROR: the Kafka broker did not start (logs: $KAFKA_LOCAL_DATA/logs)"
  exit 1
fi
[[ -n "$BOOTSTRAP" ]] || { log "ERROR: kafka-local.sh printed no bootstrap address"; exit 1; }
export CHURN_TEST_KAFKA_BOOTSTRAP="$BOOTSTRAP"
log "Kafka at $CHURN_TEST_KAFKA_BOOTSTRAP"

# ---- Prometheus (TODO: to be added) ------------------------------------------------
# PLACEHOLDER for deploy/prometheus-local.sh, in the same pattern as Kafka above:
#   export PROM_LOCAL_DATA=... ; PROM_STARTED=1
#   CHURN_TEST_PROM_URL="$("$SCRIPT_DIR/prometheus-local.sh" start)"; export CHURN_TEST_PROM_URL
# and in cleanup(): [[ "$PROM_STARTED" == 1 ]] && "$SCRIPT_DIR/prometheus-local.sh" stop
# ------------------------------------------------------------------------------------

# ---- tests -------------------------------------------------------------------------
cd "$REPO"
set +e
"$PYTEST" -q tests/integration "$@"
rc=$?
set -e
if [[ "$rc" == 5 ]]; then
  log "ERROR: pytest collected no tests (exit 5): treating that as a failure"
  exit 5
fi
exit "$rc"
