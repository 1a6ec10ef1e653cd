#!/usr/bin/env bash
# Fetches MaxMind's GeoLite2 country *test* database, which the PyPI sdist of
# maxminddb 3.2.0 carries (81.2.69.160/27 -> GB, 89.160.20.112/28 -> SE),
# into a cache outside the clone. Idempotent; prints the file's path.
set -euo pipefail
dir="${GEOIP_CACHE_DIR:-/var/cache/syncstore/geoip}"
db="$dir/GeoLite2-Country-Test.mmdb"
if [ ! -s "$db" ]; then
  mkdir -p "$dir"
  if [ ! -f "$dir/maxminddb-3.2.0.tar.gz" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: maxminddb==3.2.0 -d "$dir" >&2
  fi
  tar -xzf "$dir/maxminddb-3.2.0.tar.gz" -C "$dir" --strip-components=4 \
    maxminddb-3.2.0/tests/data/test-data/GeoLite2-Country-Test.mmdb
fi
echo "$db"
