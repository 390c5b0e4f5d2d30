#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft) for tests and CI, from Maven Central jars.
#
#   scripts/kafka.sh up      # fresh data dir, start, wait for readiness; prints KAFKA_BOOTSTRAP=...
#   scripts/kafka.sh stop    # stop the broker, keep its data (for outage tests)
#   scripts/kafka.sh start   # start it again on the same data
#   scripts/kafka.sh down    # stop and delete the data dir
#   scripts/kafka.sh status
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DIR (run dir,
# default /tmp/edgeflow-kafka-$KAFKA_PORT), EDGEFLOW_CACHE (jar cache, ~/.cache/edgeflow).
# If KAFKA_BOOTSTRAP is already set, that broker is used and nothing is started.
#
# Secure mode (KAFKA_SECURE=1 with up|start|stop|down|status): a broker with TLS listeners
# whose certificates it makes (openssl): SSL (server auth only, KAFKA_SSL_PORT 19194), SSL with
# client certificates required (mTLS, KAFKA_MTLS_PORT 19195) and SASL_SSL with SCRAM-SHA-256
# and SCRAM-SHA-512 (KAFKA_SASL_PORT 19196, user KAFKA_SCRAM_USER "edge" created at storage
# format time; its password is KAFKA_SCRAM_PASSWORD, else a random one written to
# $KAFKA_DIR/certs/scram-password, mode 0600). Inter-broker traffic is PLAINTEXT on KAFKA_PORT
# (19192), the controller on KAFKA_CONTROLLER_PORT (19193); KAFKA_DIR defaults to
# /tmp/edgeflow-kafka-secure-$KAFKA_PORT. $KAFKA_DIR/certs holds ca.pem (trust it), client.pem
# and client.key (an mTLS client), and other-ca.pem (a CA the broker does not use). A set
# KAFKA_BOOTSTRAP is ignored in secure mode.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KAFKA_VERSION=4.1.1
SECURE=${KAFKA_SECURE:-}
if [ -z "$SECURE" ] || [ "$SECURE" = 0 ]; then
  SECURE=
  PORT=${KAFKA_PORT:-9092}
  CPORT=${KAFKA_CONTROLLER_PORT:-9093}
  DIR=${KAFKA_DIR:-/tmp/edgeflow-kafka-$PORT}
else
  SECURE=1
  PORT=${KAFKA_PORT:-19192}
  CPORT=${KAFKA_CONTROLLER_PORT:-19193}
  SSL_PORT=${KAFKA_SSL_PORT:-19194}
  MTLS_PORT=${KAFKA_MTLS_PORT:-19195}
  SASL_PORT=${KAFKA_SASL_PORT:-19196}
  DIR=${KAFKA_DIR:-/tmp/edgeflow-kafka-secure-$PORT}
  SCRAM_USER=${KAFKA_SCRAM_USER:-edge}
fi
CACHE=${EDGEFLOW_CACHE:-$HOME/.cache/edgeflow}/kafka-$KAFKA_VERSION
PIDFILE=$DIR/broker.pid
LOG=$DIR/broker.log

need_java() {
  if ! command -v java >/dev/null 2>&1 || ! java -version 2>&1 | grep -qE 'version "(1[7-9]|2[0-9])'; then
    echo "kafka.sh: installing Java 17 and Maven from Debian packages" >&2
    apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  fi
  if ! command -v mvn >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq maven >/dev/null
  fi
}

jars() {
  if [ ! -f "$CACHE/libs/.complete" ]; then
    need_java
    mkdir -p "$CACHE"
    cp "$here/kafka/pom.xml" "$CACHE/pom.xml"
    echo "kafka.sh: resolving Kafka $KAFKA_VERSION jars from Maven Central into $CACHE/libs" >&2
    (cd "$CACHE" && mvn -B -q dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime)
    touch "$CACHE/libs/.complete"
  fi
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

write_config() {
  mkdir -p "$DIR/data"
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  if [ -n "$SECURE" ]; then write_secure_config; fi
}

# -- secure mode ---------------------------------------------------------------------------
CERTS=$DIR/certs
STOREPASS=edgeflow-test-store  # protects the test keystores only (they sit beside their keys)

# a CA (its key and ca.pem) named $1 in $CERTS
make_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=edgeflow test $1" \
    -keyout "$CERTS/$1.key" -out "$CERTS/$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    2>/dev/null
}

# a certificate named $1 for CN $2 signed by ca.pem, with the extensions in $3
make_cert() {
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$CERTS/$1.key" \
    -out "$CERTS/$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$CERTS/$1.ext"
  openssl x509 -req -in "$CERTS/$1.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
    -CAcreateserial -days 30 -extfile "$CERTS/$1.ext" -out "$CERTS/$1.pem" 2>/dev/null
  rm -f "$CERTS/$1.csr" "$CERTS/$1.ext"
}

make_certs() {
  mkdir -p "$CERTS"
  chmod 700 "$CERTS"
  make_ca ca
  make_ca other-ca
  make_cert broker localhost \
    "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
  make_cert client edgeflow-client "extendedKeyUsage=clientAuth"
  # the broker reads PKCS12 stores: its key and certificate chain, and the CA it trusts
  openssl pkcs12 -export -in "$CERTS/broker.pem" -inkey "$CERTS/broker.key" \
    -certfile "$CERTS/ca.pem" -name broker -passout "pass:$STOREPASS" \
    -out "$CERTS/broker.p12"
  keytool -importcert -noprompt -alias ca -file "$CERTS/ca.pem" -storetype PKCS12 \
    -keystore "$CERTS/truststore.p12" -storepass "$STOREPASS" >/dev/null 2>&1
  if [ -n "${KAFKA_SCRAM_PASSWORD:-}" ]; then
    printf '%s' "$KAFKA_SCRAM_PASSWORD" > "$CERTS/scram-password"
  else
    openssl rand -hex 16 | tr -d '\n' > "$CERTS/scram-password"
  fi
  chmod 600 "$CERTS"/*.key "$CERTS/scram-password"
}

write_secure_config() {
  # the plaintext listener of write_config becomes INTERNAL (inter-broker only)
  sed -i \
    -e "s#^listeners=.*#listeners=INTERNAL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT,SSL://127.0.0.1:$SSL_PORT,MTLS://127.0.0.1:$MTLS_PORT,SASL_SSL://127.0.0.1:$SASL_PORT#" \
    -e "s#^advertised.listeners=.*#advertised.listeners=INTERNAL://127.0.0.1:$PORT,SSL://127.0.0.1:$SSL_PORT,MTLS://127.0.0.1:$MTLS_PORT,SASL_SSL://127.0.0.1:$SASL_PORT#" \
    -e "s#^inter.broker.listener.name=.*#inter.broker.listener.name=INTERNAL#" \
    -e "s#^listener.security.protocol.map=.*#listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL#" \
    "$DIR/server.properties"
  cat >> "$DIR/server.properties" <<PROPS
ssl.keystore.type=PKCS12
ssl.keystore.location=$CERTS/broker.p12
ssl.keystore.password=$STOREPASS
ssl.key.password=$STOREPASS
ssl.truststore.type=PKCS12
ssl.truststore.location=$CERTS/truststore.p12
ssl.truststore.password=$STOREPASS
ssl.client.auth=none
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

# the SCRAM users, as StorageTool format arguments
scram_args() {
  local password
  password=$(cat "$CERTS/scram-password")
  printf '%s\n' --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$password]" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$password]"
}

endpoints() {
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
  if [ -n "$SECURE" ]; then
    echo "KAFKA_SSL_BOOTSTRAP=127.0.0.1:$SSL_PORT"
    echo "KAFKA_MTLS_BOOTSTRAP=127.0.0.1:$MTLS_PORT"
    echo "KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$SASL_PORT"
    echo "KAFKA_CERTS=$CERTS"
    echo "KAFKA_SCRAM_USER=$SCRAM_USER"
  fi
}

start() {
  jars
  need_java
  if running; then endpoints; return 0; fi
  : > "$LOG"
  nohup java -Xmx512m -Xms256m -XX:+UseSerialGC -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" \
    -cp "$CACHE/libs/*" kafka.Kafka "$DIR/server.properties" >> "$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started" "$LOG"; then
      endpoints
      return 0
    fi
    if ! running; then
      echo "kafka.sh: the broker exited during start-up; last log lines:" >&2
      tail -30 "$LOG" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "kafka.sh: the broker did not log 'Kafka Server started' within 120 s; see $LOG" >&2
  return 1
}

stop() {
  if running; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

if [ -n "${KAFKA_BOOTSTRAP:-}" ] && [ "${1:-}" != "jars" ] && [ -z "$SECURE" ]; then
  echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (external broker; nothing started)"
  exit 0
fi

case "${1:-}" in
  jars) jars ;;
  up)
    stop
    rm -rf "$DIR"
    write_config
    jars
    need_java
    extra=()
    if [ -n "$SECURE" ]; then
      make_certs
      mapfile -t extra < <(scram_args)
    fi
    java -cp "$CACHE/libs/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$CACHE/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$DIR/server.properties" ${extra[@]+"${extra[@]}"} >/dev/null
    start ;;
  start) start ;;
  stop) stop ;;
  down) stop; rm -rf "$DIR" ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")) KAFKA_BOOTSTRAP=127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|start|stop|down|status|jars" >&2; exit 2 ;;
esac
