#!/usr/bin/env bash
# run-integration.sh — run tests/integration against REAL local services.
#
# Starts a Kafka broker with deploy/kafka-local.sh and a Prometheus with
# deploy/prometheus-local.sh (installed if missing; both stopped again on exit, also on failure
# or Ctrl-C), exports CHURN_TEST_KAFKA_BOOTSTRAP, CHURN_TEST_PROM_URL and
# CHURN_TEST_PROM_TARGETS, and runs `.venv/bin/pytest -q tests/integration` with any extra
# arguments passed through:
#
#   deploy/run-integration.sh                    # everything
#   deploy/run-integration.sh -k produce -x      # a subset
#
# Works from any directory. Exits with pytest's exit code; "no tests collected" (pytest exit
# code 5) counts as a failure. Environment: KAFKA_LOCAL_DATA etc. as for kafka-local.sh, and
# PROM_LOCAL_DATA etc. as for prometheus-local.sh (the defaults here are data dirs of their own,
# so a broker or Prometheus you run by hand is left alone).
#
# The test Prometheus scrapes every second, evaluates deploy/prometheus/rules every second,
# and finds its targets in the file CHURN_TEST_PROM_TARGETS (file_sd), which tests write with
# the web ports of the workers they start.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
PYTEST="$REPO/.venv/bin/pytest"

log() { printf 'run-integration: %s\n' "$*" >&2; }

[[ -x "$PYTEST" ]] || { log "ERROR: $PYTEST not found; run \`make venv\` first"; exit 2; }

export KAFKA_LOCAL_DATA="${KAFKA_LOCAL_DATA:-${KAFKA_LOCAL_HOME:-$REPO/.kafka-local}/integration}"
PROM_HOME="${PROM_LOCAL_HOME:-$REPO/.prometheus-local}"
export PROM_LOCAL_DATA="${PROM_LOCAL_DATA:-$PROM_HOME/integration}"

KAFKA_STARTED=0
PROM_STARTED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ "$PROM_STARTED" == 1 ]]; then
    "$SCRIPT_DIR/prometheus-local.sh" stop >&2 || log "warning: stopping Prometheus failed"
  fi
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

# ---- Prometheus ----------------------------------------------------------------------
"$SCRIPT_DIR/prometheus-local.sh" install
# outside PROM_LOCAL_DATA: `start` empties that dir
PROM_TEST_DIR="$PROM_HOME/integration-config"
mkdir -p "$PROM_TEST_DIR"
export CHURN_TEST_PROM_TARGETS="$PROM_TEST_DIR/targets.json"
echo '[]' >"$CHURN_TEST_PROM_TARGETS"
cat >"$PROM_TEST_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $REPO/deploy/prometheus/rules/*.yml
scrape_configs:
  - job_name: churn-detector
    file_sd_configs:
      - files: ["$CHURN_TEST_PROM_TARGETS"]
        refresh_interval: 1s
EOF
PROM_STARTED=1   # set before start: a half-started Prometheus is stopped too
if ! CHURN_TEST_PROM_URL="$(PROM_CONFIG="$PROM_TEST_DIR/prometheus.yml" "$SCRIPT_DIR/prometheus-local.sh" start)"; then
  log "ERROR: Prometheus did not start (log: $PROM_LOCAL_DATA/prometheus.log)"
  exit 1
fi
export CHURN_TEST_PROM_URL
log "Prometheus at $CHURN_TEST_PROM_URL (targets: $CHURN_TEST_PROM_TARGETS)"

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
