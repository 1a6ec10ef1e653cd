#!/usr/bin/env bash
# Installs (from Debian packages) and starts the real servers the tests talk to,
# all on loopback. Idempotent: a second run only checks that each one answers.
#
#   PostgreSQL  127.0.0.1:5432  role/db syncstore/syncstore (password syncstore)
#   MariaDB     127.0.0.1:3306  user/db syncstore/syncstore (password syncstore)
#   Redis       127.0.0.1:6379
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

need_pkgs=()
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_pkgs+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || need_pkgs+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# rdkafka's bundled librdkafka build needs make and zlib headers.
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
[ -f /usr/include/zlib.h ] || need_pkgs+=(zlib1g-dev)
# Kafka runs on Java 17; its jars come from Maven Central through Maven.
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
# The dashboard test drives Debian's Chromium.
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

wait_for() { # name, tries, command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not come up"; return 1
}

# --- PostgreSQL ---------------------------------------------------------------
pg_version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
  pg_createcluster "$pg_version" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q online; then
  log "starting PostgreSQL $pg_version"
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
fi
wait_for postgresql 60 su postgres -c "psql -qAtc 'select 1'"
su postgres -c "psql -qAt" <<'SQL' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'syncstore') THEN
    CREATE ROLE syncstore LOGIN PASSWORD 'syncstore' CREATEDB CREATEROLE;
  END IF;
END $$;
SELECT 'CREATE DATABASE syncstore OWNER syncstore'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'syncstore')\gexec
SQL

# --- MariaDB ------------------------------------------------------------------
if ! mysqladmin ping >/dev/null 2>&1; then
  log "starting MariaDB"
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start-stop-daemon --start --oknodo --background --exec "$(command -v mariadbd)" -- \
    --user=mysql --bind-address=127.0.0.1 --port=3306
fi
wait_for mariadb 120 mysqladmin ping
mysql <<'SQL'
CREATE DATABASE IF NOT EXISTS syncstore CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'syncstore'@'127.0.0.1' IDENTIFIED BY 'syncstore';
CREATE USER IF NOT EXISTS 'syncstore'@'localhost' IDENTIFIED BY 'syncstore';
GRANT ALL PRIVILEGES ON *.* TO 'syncstore'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'syncstore'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL

# --- Redis --------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no >/dev/null
fi
wait_for redis 60 redis-cli -h 127.0.0.1 -p 6379 ping

log "PostgreSQL, MariaDB and Redis are up"
