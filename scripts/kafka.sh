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
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KAFKA_VERSION=4.1.1
PORT=${KAFKA_PORT:-9092}
CPORT=${KAFKA_CONTROLLER_PORT:-9093}
DIR=${KAFKA_DIR:-/tmp/edgeflow-kafka-$PORT}
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
}

start() {
  jars
  need_java
  if running; then echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"; return 0; fi
  : > "$LOG"
  nohup java -Xmx512m -Xms256m -XX:+UseSerialGC -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" \
    -cp "$CACHE/libs/*" kafka.Kafka "$DIR/server.properties" >> "$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 240); do
    if grep -q "Kafka Server started" "$LOG"; then
      echo "KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
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

if [ -n "${KAFKA_BOOTSTRAP:-}" ] && [ "${1:-}" != "jars" ]; then
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
    java -cp "$CACHE/libs/*" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$CACHE/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$DIR/server.properties" >/dev/null
    start ;;
  start) start ;;
  stop) stop ;;
  down) stop; rm -rf "$DIR" ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")) KAFKA_BOOTSTRAP=127.0.0.1:$PORT"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|start|stop|down|status|jars" >&2; exit 2 ;;
esac
