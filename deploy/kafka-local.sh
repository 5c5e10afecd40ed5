#!/usr/bin/env bash
# kafka-local.sh — a real single-node Apache Kafka broker (KRaft, combined
# broker+controller) for local runs and integration tests, without Docker.
#
# The broker jars come from Maven Central (via `mvn dependency:copy-dependencies`)
# and are cached under $KAFKA_LOCAL_HOME, so only the first `start` needs the
# network. Run `deploy/kafka-local.sh help` for usage.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
KAFKA_VERSION="3.9.1"        # org.apache.kafka:kafka_2.13 (uses slf4j 1.7.x)
SCALA_BINARY="2.13"
LOG4J_VERSION="2.24.3"       # log4j2 + log4j-slf4j-impl (the slf4j 1.x binding)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

KAFKA_LOCAL_HOME="${KAFKA_LOCAL_HOME:-$REPO/.kafka-local}"
KAFKA_LOCAL_DATA="${KAFKA_LOCAL_DATA:-$KAFKA_LOCAL_HOME/run}"
KAFKA_NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-4}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
KEEP_DATA="${KEEP_DATA:-0}"
KAFKA_SASL_SSL="${KAFKA_SASL_SSL:-0}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-detector}"

LIB_DIR="$KAFKA_LOCAL_HOME/kafka_${SCALA_BINARY}-${KAFKA_VERSION}/libs"
LIB_MARKER="$LIB_DIR/.complete"
PID_FILE="$KAFKA_LOCAL_DATA/kafka.pid"
ADDR_FILE="$KAFKA_LOCAL_DATA/bootstrap"
PORTS_FILE="$KAFKA_LOCAL_DATA/ports"
LOG_DIR="$KAFKA_LOCAL_DATA/logs"         # log4j output (server.log, controller.log, ...)
STORAGE_DIR="$KAFKA_LOCAL_DATA/storage"  # Kafka's log.dirs / metadata log
CONFIG_FILE="$KAFKA_LOCAL_DATA/server.properties"
LOG4J_FILE="$KAFKA_LOCAL_DATA/log4j2.properties"
CONSOLE_FILE="$KAFKA_LOCAL_DATA/console.out"  # JVM stdout/stderr (crashes, early errors)
TLS_DIR="$KAFKA_LOCAL_DATA/tls"                 # KAFKA_SASL_SSL=1: CA, keystore, client secret
SECURITY_FILE="$KAFKA_LOCAL_DATA/sasl_ssl.json"  # KAFKA_SASL_SSL=1: how clients connect
LOCK_FILE="$KAFKA_LOCAL_HOME/.lock-$(printf '%s' "$KAFKA_LOCAL_DATA" | cksum | cut -d' ' -f1)"

log() { printf 'kafka-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=deploy/local-service-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/local-service-lib.sh"

usage() {
  cat <<EOF
Usage: deploy/kafka-local.sh COMMAND

A single-node Apache Kafka $KAFKA_VERSION broker in KRaft mode (no Docker).

Commands:
  start      Fetch jars if needed, format storage, start the broker, wait until it
             answers a Metadata request. Prints ONLY the bootstrap address
             (e.g. 127.0.0.1:39092) on stdout; progress goes to stderr.
             Idempotent: if already running, prints the address and exits 0.
               BOOTSTRAP=\$(deploy/kafka-local.sh start)
  stop       SIGTERM the broker, wait (then SIGKILL), remove the data dir
             (unless KEEP_DATA=1). Succeeds if nothing is running.
  status     Exit 0 if the broker is running (prints its address), 1 otherwise.
  bootstrap  Print the bootstrap address of the running broker (exit 1 if none).
  fetch      Only download/cache the jars (no broker is started).
  security   Print the path of sasl_ssl.json of the running KAFKA_SASL_SSL=1 broker.
  help       This text.

Environment:
  KAFKA_PORT            PLAINTEXT port on 127.0.0.1 (default: a free port)
  KAFKA_CONTROLLER_PORT KRaft controller port (default: a free port)
  KAFKA_NUM_PARTITIONS  num.partitions for auto-created topics (default 4)
  KAFKA_LOCAL_HOME      jar cache + default data location (default <repo>/.kafka-local)
  KAFKA_LOCAL_DATA      data dir: config, pid, logs, storage (default \$KAFKA_LOCAL_HOME/run)
                        (use distinct values to run several brokers side by side)
  KAFKA_START_TIMEOUT   seconds to wait for readiness (default 90)
  KAFKA_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 30)
  KAFKA_HEAP_OPTS       JVM heap options (default "-Xms256m -Xmx1g")
  KEEP_DATA=1           stop: keep the data dir; start: reuse formatted storage and ports
  KAFKA_SASL_SSL=1      start: also open a SASL_SSL listener (SCRAM-SHA-512 over TLS) on
                        another free port (or KAFKA_SASL_SSL_PORT), next to PLAINTEXT. A CA
                        and the broker certificate (SAN 127.0.0.1, localhost) are made with
                        openssl at start; user KAFKA_SASL_USER (default "detector") gets a
                        random password, registered by 'kafka-storage format --add-scram'.
                        Clients read \$KAFKA_LOCAL_DATA/sasl_ssl.json: bootstrap, mechanism,
                        username, cafile and password_file (mode 0600; the password itself
                        is never printed). 'kafka-local.sh security' prints that file's path.
  JAVA                  java binary (default: java on PATH, Java 17+)

Broker logs: \$KAFKA_LOCAL_DATA/logs/server.log (JVM console: \$KAFKA_LOCAL_DATA/console.out).
The first start downloads ~40 MB of jars with Maven; later starts are offline.
EOF
}

# ---- helpers ----------------------------------------------------------------
PYTHON="$(command -v python3 || true)"
[[ -n "$PYTHON" ]] || PYTHON="$REPO/.venv/bin/python"
JAVA="${JAVA:-java}"

# Pid of our running broker, or nothing. Guards against stale pid files and
# recycled pids by checking the process command line.
running_pid() { pid_with_cmdline "kafka.Kafka $CONFIG_FILE"; }

show_log_tail() {
  local f
  for f in "$LOG_DIR/server.log" "$CONSOLE_FILE"; do
    if [[ -s "$f" ]]; then
      log "---- last 40 lines of $f ----"
      tail -n 40 "$f" >&2 || true
    fi
  done
}

# Kafka-style cluster id: 16 random bytes, base64url without padding
# (same format as `kafka.tools.StorageTool random-uuid`, without a JVM start).
random_cluster_id() {
  "$PYTHON" -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break'
}

# Ready = the broker answers a Metadata (v1) request listing at least one
# (unfenced) broker. Raw protocol, so no Python Kafka client is needed.
metadata_ok() {  # $1 = port
  "$PYTHON" - "$1" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
client = b"kafka-local-probe"
# header: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body: topics=null (-1)
body = struct.pack(">hhih", 3, 1, 4242, len(client)) + client + struct.pack(">i", -1)
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.settimeout(5)
    s.sendall(struct.pack(">i", len(body)) + body)
    def recv(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return buf
    size, = struct.unpack(">i", recv(4))
    resp = recv(size)
    corr, nbrokers = struct.unpack(">ii", resp[:8])
    sys.exit(0 if corr == 4242 and nbrokers >= 1 else 1)
except (OSError, struct.error):
    sys.exit(1)
PY
}

# ---- jars ---------------------------------------------------------------------
fetch_jars() {
  if [[ -f "$LIB_MARKER" ]]; then
    return 0
  fi
  # Separate lock: brokers with different data dirs share the jar cache.
  exec 8>"$KAFKA_LOCAL_HOME/.fetch.lock"
  flock -w 600 8 || die "could not lock the jar cache"
  if [[ -f "$LIB_MARKER" ]]; then exec 8>&-; return 0; fi
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch Kafka jars from Maven Central)"
  local work="$KAFKA_LOCAL_HOME/maven" tmp="$LIB_DIR.tmp.$$"
  mkdir -p "$work"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only, ~20-60 s)..."
  cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/kafka-local.sh: only used to resolve the broker classpath -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.churn-detector</groupId>
  <artifactId>kafka-local-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${SCALA_BINARY}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <!-- logging: kafka 3.9 logs through slf4j 1.7 -> log4j2 -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
    <!-- kafka.utils.Log4jController (JMX MBean) references log4j 1.x classes -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-1.2-api</artifactId>
      <version>${LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  rm -rf "$tmp"
  if ! mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$work/mvn.log" 2>&1; then
    tail -n 40 "$work/mvn.log" >&2 || true
    rm -rf "$tmp"
    die "maven could not fetch the Kafka jars (log: $work/mvn.log)"
  fi
  [[ -f "$tmp/kafka_${SCALA_BINARY}-${KAFKA_VERSION}.jar" ]] || die "kafka jar missing after maven run"
  rm -rf "$LIB_DIR"
  mkdir -p "$(dirname "$LIB_DIR")"
  mv "$tmp" "$LIB_DIR"
  touch "$LIB_MARKER"
  exec 8>&-
  log "cached $(find "$LIB_DIR" -name '*.jar' | wc -l) jars in $LIB_DIR"
}

classpath() {
  local cp="" j
  for j in "$LIB_DIR"/*.jar; do cp="${cp:+$cp:}$j"; done
  printf '%s' "$cp"
}

# ---- config -------------------------------------------------------------------
write_config() {  # $1 = port, $2 = controller port, $3 = SASL_SSL port (optional)
  local listeners="PLAINTEXT://127.0.0.1:$1" protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n "${3:-}" ]]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$3"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$CONFIG_FILE" <<EOF
# generated by deploy/kafka-local.sh — single node, KRaft combined mode
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$2
listeners=$listeners,CONTROLLER://127.0.0.1:$2
advertised.listeners=$listeners
listener.security.protocol.map=$protocols
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$STORAGE_DIR
num.partitions=$KAFKA_NUM_PARTITIONS
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
message.max.bytes=2097152
replica.fetch.max.bytes=2097152
num.network.threads=2
num.io.threads=4
log.retention.hours=24
delete.topic.enable=true
EOF
  if [[ -n "${3:-}" ]]; then
    # the keystore password only guards a throw-away local key; it is not a client secret
    local storepass
    storepass="$(cat "$TLS_DIR/keystore.pass")"
    cat >>"$CONFIG_FILE" <<EOF
# SASL_SSL listener: SCRAM-SHA-512 over TLS (KAFKA_SASL_SSL=1)
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$storepass
listener.name.sasl_ssl.ssl.key.password=$storepass
listener.name.sasl_ssl.ssl.client.auth=none
EOF
  fi

  cat >"$LOG4J_FILE" <<EOF
# generated by deploy/kafka-local.sh — broker logs go to files, not the console
status = warn
name = kafka-local
appender.server.type = File
appender.server.name = server
appender.server.fileName = $LOG_DIR/server.log
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.controller.type = File
appender.controller.name = controller
appender.controller.fileName = $LOG_DIR/controller.log
appender.controller.layout.type = PatternLayout
appender.controller.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.controller.additivity = false
logger.controller.appenderRef.controller.ref = controller
logger.kcontroller.name = org.apache.kafka.controller
logger.kcontroller.level = INFO
logger.kcontroller.additivity = false
logger.kcontroller.appenderRef.controller.ref = controller
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# ---- SASL_SSL (KAFKA_SASL_SSL=1) ------------------------------------------------
random_secret() { "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))'; }

# A throw-away CA and a broker certificate for 127.0.0.1/localhost, a PKCS12 keystore,
# and the SCRAM password of the client user (files only we can read, except the CA).
make_tls() {
  command -v openssl >/dev/null || die "openssl not found (needed for KAFKA_SASL_SSL=1)"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  if ! (
    cd "$TLS_DIR"
    umask 077
    random_secret >keystore.pass
    random_secret >client.password
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=kafka-local test CA" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout broker.key -out broker.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
      -extfile san.ext -out broker.pem
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "file:keystore.pass" -out broker.p12
    chmod 644 ca.pem
  ) >"$KAFKA_LOCAL_DATA/openssl.log" 2>&1; then
    cat "$KAFKA_LOCAL_DATA/openssl.log" >&2
    die "could not create the TLS files"
  fi
}

write_security_file() {  # $1 = SASL_SSL port
  "$PYTHON" - "$1" "$KAFKA_SASL_USER" "$TLS_DIR" "$SECURITY_FILE" <<'PY'
import json, sys
port, user, tls, out = sys.argv[1:]
with open(out, "w") as fh:
    json.dump({"bootstrap": f"127.0.0.1:{port}", "security_protocol": "SASL_SSL",
               "sasl_mechanism": "SCRAM-SHA-512", "username": user,
               "password_file": f"{tls}/client.password", "cafile": f"{tls}/ca.pem"},
              fh, indent=2)
PY
}

cmd_security() {
  if [[ -n "$(running_pid)" && -s "$SECURITY_FILE" ]]; then
    echo "$SECURITY_FILE"
  else
    log "no KAFKA_SASL_SSL=1 broker running (data dir $KAFKA_LOCAL_DATA)"
    return 1
  fi
}

# ---- commands -------------------------------------------------------------------
cmd_bootstrap() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" && -s "$ADDR_FILE" ]]; then
    cat "$ADDR_FILE"
  else
    log "no broker running (data dir $KAFKA_LOCAL_DATA)"
    return 1
  fi
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    log "running (pid $pid) at $(cat "$ADDR_FILE" 2>/dev/null || echo '?')"
    return 0
  fi
  log "not running"
  return 1
}

cmd_start() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" && -s "$ADDR_FILE" ]]; then
    log "already running (pid $pid)"
    cat "$ADDR_FILE"
    return 0
  fi
  [[ "$KAFKA_NUM_PARTITIONS" =~ ^[1-9][0-9]*$ ]] || die "KAFKA_NUM_PARTITIONS must be a positive integer"
  command -v "$JAVA" >/dev/null || die "java not found (Java 17+ required)"

  fetch_jars

  local port cport sport="" reuse=0
  if [[ "$KEEP_DATA" == "1" && -f "$STORAGE_DIR/meta.properties" && -s "$PORTS_FILE" ]]; then
    # Reuse formatted storage; the controller port is part of the quorum config.
    read -r port cport sport <"$PORTS_FILE"
    port="${KAFKA_PORT:-$port}"
    cport="${KAFKA_CONTROLLER_PORT:-$cport}"
    reuse=1
    log "KEEP_DATA=1: reusing storage in $STORAGE_DIR"
  else
    # Stale state (crashed broker, half-formatted storage, old config): wipe it.
    rm -rf "$KAFKA_LOCAL_DATA"
    port="${KAFKA_PORT:-$(free_port)}"
    cport="${KAFKA_CONTROLLER_PORT:-$(free_port)}"
    while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done
    if [[ "$KAFKA_SASL_SSL" == "1" ]]; then
      sport="${KAFKA_SASL_SSL_PORT:-$(free_port)}"
      while [[ "$sport" == "$port" || "$sport" == "$cport" ]]; do sport="$(free_port)"; done
    fi
  fi
  [[ "$port" =~ ^[0-9]+$ && "$cport" =~ ^[0-9]+$ ]] || die "invalid port(s): '$port' '$cport'"
  if port_in_use "$port"; then die "port $port is already in use (set KAFKA_PORT to another port)"; fi
  if port_in_use "$cport"; then die "controller port $cport is already in use (set KAFKA_CONTROLLER_PORT)"; fi

  mkdir -p "$LOG_DIR" "$STORAGE_DIR"
  rm -f "$PID_FILE" "$ADDR_FILE"
  if [[ -n "$sport" && "$reuse" == "0" ]]; then make_tls; fi
  write_config "$port" "$cport" "$sport"
  echo "$port $cport $sport" >"$PORTS_FILE"

  local cp
  cp="$(classpath)"
  local -a heap
  read -r -a heap <<<"$KAFKA_HEAP_OPTS"
  local -a jvm=("$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
                -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
                "-Dlog4j2.configurationFile=$LOG4J_FILE" "-Dkafka.logs.dir=$LOG_DIR"
                -cp "$cp")

  if [[ "$reuse" == "0" ]]; then
    local cluster_id
    cluster_id="$(random_cluster_id)"
    log "formatting storage (cluster id $cluster_id)"
    local -a scram=()
    if [[ -n "$sport" ]]; then
      # the password is on this JVM's command line while it runs (a local test broker)
      scram=(--add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$(cat "$TLS_DIR/client.password")]")
    fi
    if ! "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG_FILE" "${scram[@]}" \
          </dev/null >"$KAFKA_LOCAL_DATA/format.out" 2>&1 9>&-; then
      cat "$KAFKA_LOCAL_DATA/format.out" >&2
      die "storage format failed"
    fi
  fi

  log "starting broker on 127.0.0.1:$port (controller 127.0.0.1:$cport)"
  # setsid + redirects: detached from the caller's process group and from its
  # stdout, so BOOTSTRAP=$(kafka-local.sh start) returns as soon as we print.
  setsid "${jvm[@]}" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >"$CONSOLE_FILE" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail
      rm -f "$PID_FILE"
      die "broker process exited during startup"
    fi
    if metadata_ok "$port"; then
      break
    fi
    if (( SECONDS >= deadline )); then
      show_log_tail
      log "broker not ready after ${KAFKA_START_TIMEOUT}s; stopping it"
      kill -TERM "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      die "broker did not become ready within ${KAFKA_START_TIMEOUT}s (KAFKA_START_TIMEOUT)"
    fi
    sleep 0.5
  done
  echo "127.0.0.1:$port" >"$ADDR_FILE"
  if [[ -n "$sport" ]]; then
    write_security_file "$sport"
    log "SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:$sport; client settings in $SECURITY_FILE"
  fi
  log "ready at 127.0.0.1:$port (pid $pid, ${SECONDS}s; logs in $LOG_DIR)"
  echo "127.0.0.1:$port"
}

cmd_stop() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    stop_pid broker "$pid" "$KAFKA_STOP_TIMEOUT"
  else
    log "not running"
  fi
  rm -f "$PID_FILE" "$ADDR_FILE"
  if [[ "$KEEP_DATA" != "1" ]]; then
    rm -rf "$KAFKA_LOCAL_DATA"
  fi
}

main() {
  local cmd="${1:-help}"
  case "$cmd" in
    help|-h|--help) usage; return 0 ;;
    start|stop|status|bootstrap|fetch|security) ;;
    *) usage >&2; die "unknown command: $cmd" ;;
  esac
  mkdir -p "$KAFKA_LOCAL_HOME"
  # Serialise concurrent start/stop on the same data dir.
  exec 9>"$LOCK_FILE"
  flock -w 120 9 || die "could not lock $LOCK_FILE"
  case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    bootstrap) cmd_bootstrap ;;
    fetch) fetch_jars ;;
    security) cmd_security ;;
  esac
}

main "$@"
