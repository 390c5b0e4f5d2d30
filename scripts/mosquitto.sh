#!/usr/bin/env bash
# A real Eclipse Mosquitto broker (Debian package) for tests and CI, on 127.0.0.1.
#
#   scripts/mosquitto.sh up      # start on $MQTT_PORT (1883), print MQTT_PORT=...
#   scripts/mosquitto.sh down    # stop it (by pid) and delete its directory
#   scripts/mosquitto.sh stop|start|status
#
# Environment: MQTT_PORT (1883), MQTT_DIR (default /tmp/edgeflow-mosquitto-$MQTT_PORT).
# Persistence is on and queues are unbounded, so persistent sessions keep QoS 1 messages
# for a client that is away (restart tests rely on it).
set -euo pipefail
PORT=${MQTT_PORT:-1883}
DIR=${MQTT_DIR:-/tmp/edgeflow-mosquitto-$PORT}
PIDFILE=$DIR/mosquitto.pid
LOG=$DIR/mosquitto.log

need() {
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "mosquitto.sh: installing mosquitto and mosquitto-clients from Debian packages" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  fi
}
bin() { command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto; }
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  need
  if running; then echo "MQTT_PORT=$PORT"; return 0; fi
  mkdir -p "$DIR/data"
  cat > "$DIR/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $DIR/data/
autosave_interval 1
max_queued_messages 0
max_inflight_messages 60000
log_dest file $LOG
log_type error
log_type warning
CONF
  "$(bin)" -c "$DIR/mosquitto.conf" -d
  for _ in $(seq 1 100); do
    pid=$(pgrep -f -n "mosquitto -c $DIR/mosquitto.conf" || true)
    if [ -n "$pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "$pid" > "$PIDFILE"
      echo "MQTT_PORT=$PORT"
      return 0
    fi
    sleep 0.1
  done
  echo "mosquitto.sh: mosquitto did not accept connections on 127.0.0.1:$PORT; see $LOG" >&2
  return 1
}

stop() {
  if running; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  up) stop; rm -rf "$DIR"; start ;;
  start) start ;;
  stop) stop ;;
  down) stop; rm -rf "$DIR" ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE")) MQTT_PORT=$PORT"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|start|stop|down|status" >&2; exit 2 ;;
esac
