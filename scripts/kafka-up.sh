#!/usr/bin/env bash
# Apache Kafka 4.3.1 in KRaft mode, one node on loopback, from the Maven
# Central jars (scripts/kafka-jars.pom.xml), run with the machine's Java 17.
# Idempotent: a running broker is reused. Prints the bootstrap address.
#
#   scripts/kafka-up.sh           # start (or reuse)
#   scripts/kafka-up.sh stop      # stop (the data stays)
#   scripts/kafka-up.sh restart   # stop and start again, same data
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SYNCSTORE_CACHE:-/var/cache/syncstore}/kafka"
LIBS="$CACHE/libs-4.3.1"
RUN="$CACHE/run"
PORT="${KAFKA_PORT:-9092}"
BOOTSTRAP="127.0.0.1:$PORT"

pid_alive() { [ -f "$RUN/kafka.pid" ] && kill -0 "$(cat "$RUN/kafka.pid")" 2>/dev/null; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

stop() {
  if pid_alive; then
    kill "$(cat "$RUN/kafka.pid")" 2>/dev/null || true
    for _ in $(seq 1 60); do pid_alive || break; sleep 0.5; done
    pid_alive && kill -9 "$(cat "$RUN/kafka.pid")" 2>/dev/null || true
  fi
  rm -f "$RUN/kafka.pid"
}

case "${1:-}" in
  stop) stop; exit 0 ;;
  restart) stop ;;
esac

if pid_alive && up; then echo "$BOOTSTRAP"; exit 0; fi
# A broker that runs but does not answer on this port (an old setting, a
# hang) is replaced.
stop

if ! command -v java >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
if [ ! -f "$LIBS/kafka_2.13-4.3.1.jar" ]; then
  command -v mvn >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }
  mvn -q -f scripts/kafka-jars.pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$LIBS" -DincludeScope=runtime >&2
fi

mkdir -p "$RUN"
cat > "$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$((PORT + 1))
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$((PORT + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$RUN/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
share.coordinator.state.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
cat > "$RUN/log4j2.yaml" <<'LOG'
Configuration:
  Appenders:
    Console: {name: STDOUT, PatternLayout: {pattern: "[%d] %p %m (%c)%n"}}
  Loggers:
    Root: {level: WARN, AppenderRef: [{ref: STDOUT}]}
    Logger: [{name: kafka.server.KafkaServer, level: INFO}, {name: kafka.Kafka, level: INFO}]
LOG

java_cmd=(java -Xms256m -Xmx512m -Dlog4j2.configurationFile="$RUN/log4j2.yaml" -cp "$LIBS/*")
if [ ! -f "$RUN/data/meta.properties" ]; then
  "${java_cmd[@]}" kafka.tools.StorageTool format --standalone \
    -t "$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid)" -c "$RUN/server.properties" >/dev/null
fi
nohup "${java_cmd[@]}" kafka.Kafka "$RUN/server.properties" > "$RUN/kafka.log" 2>&1 &
echo $! > "$RUN/kafka.pid"
for _ in $(seq 1 120); do
  if up; then echo "$BOOTSTRAP"; exit 0; fi
  pid_alive || break
  sleep 0.5
done
echo "Kafka did not start; see $RUN/kafka.log" >&2
tail -20 "$RUN/kafka.log" >&2
exit 1
