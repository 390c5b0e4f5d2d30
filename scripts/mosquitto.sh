#!/usr/bin/env bash
# A real Eclipse Mosquitto broker (Debian package) for tests and CI, on 127.0.0.1.
#
#   scripts/mosquitto.sh up      # start on $MQTT_PORT (1883), print MQTT_PORT=...
#   scripts/mosquitto.sh down    # stop it (by pid) and delete its directory
#   scripts/mosquitto.sh stop|start|status
#
# Environment: MQTT_PORT (1883), MQTT_DIR (default /tmp/edgeflow-mosquitto-$MQTT_PORT).
# TLS listeners (optional, beside the plain one): MQTT_TLS_DIR holds ca.crt, server.crt and
# server.key (PEM), and
#   MQTT_TLS_PORT   a TLS listener (server certificate only); with MQTT_PASSWD_FILE (made by
#                   mosquitto_passwd) its clients must give a username and password
#   MQTT_MTLS_PORT  a TLS listener that requires a client certificate signed by ca.crt
# `up` prints MQTT_TLS_PORT=... / MQTT_MTLS_PORT=... too when they are set.
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

# the TLS listeners' configuration (nothing without MQTT_TLS_DIR); with per-listener
# settings, the plain listener stays anonymous
tls_listeners() {
  [ -n "${MQTT_TLS_DIR:-}" ] || return 0
  local tls="$MQTT_TLS_DIR"
  for f in ca.crt server.crt server.key; do
    [ -f "$tls/$f" ] || { echo "mosquitto.sh: $tls/$f is missing (MQTT_TLS_DIR)" >&2; return 1; }
  done
  # certificates and the password file are read after mosquitto drops root: stay this user
  # (the files may sit in a private test directory)
  echo "user $(id -un)"
  if [ -n "${MQTT_TLS_PORT:-}" ]; then
    printf 'listener %s 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n' \
      "$MQTT_TLS_PORT" "$tls/ca.crt" "$tls/server.crt" "$tls/server.key"
    if [ -n "${MQTT_PASSWD_FILE:-}" ]; then
      printf 'allow_anonymous false\npassword_file %s\n' "$MQTT_PASSWD_FILE"
    else
      echo "allow_anonymous true"
    fi
  fi
  if [ -n "${MQTT_MTLS_PORT:-}" ]; then
    printf 'listener %s 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\n' \
      "$MQTT_MTLS_PORT" "$tls/ca.crt" "$tls/server.crt" "$tls/server.key"
    printf 'require_certificate true\nallow_anonymous true\n'
  fi
}

wait_tls() {
  for p in ${MQTT_TLS_PORT:-} ${MQTT_MTLS_PORT:-}; do
    [ -n "${MQTT_TLS_DIR:-}" ] || return 0
    local ok=""
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ok=1; break; fi
      sleep 0.1
    done
    [ -n "$ok" ] || return 1
  done
}

start() {
  need
  if running; then echo "MQTT_PORT=$PORT"; return 0; fi
  mkdir -p "$DIR/data"
  : > "$DIR/mosquitto.conf"
  if [ -n "${MQTT_TLS_DIR:-}" ]; then echo "per_listener_settings true" > "$DIR/mosquitto.conf"; fi
  cat >> "$DIR/mosquitto.conf" <<CONF
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
  tls_listeners >> "$DIR/mosquitto.conf"
  "$(bin)" -c "$DIR/mosquitto.conf" -d
  for _ in $(seq 1 100); do
    pid=$(pgrep -f -n "mosquitto -c $DIR/mosquitto.conf" || true)
    if [ -n "$pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "$pid" > "$PIDFILE"
      if ! wait_tls; then
        echo "mosquitto.sh: mosquitto did not open its TLS listeners; see $LOG" >&2
        return 1
      fi
      echo "MQTT_PORT=$PORT"
      [ -z "${MQTT_TLS_PORT:-}" ] || echo "MQTT_TLS_PORT=$MQTT_TLS_PORT"
      [ -z "${MQTT_MTLS_PORT:-}" ] || echo "MQTT_MTLS_PORT=$MQTT_MTLS_PORT"
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
