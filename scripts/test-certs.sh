#!/usr/bin/env bash
# A private CA and a certificate for 127.0.0.1 and localhost (server and
# client: a Redis Cluster's TLS bus authenticates both ends), for
# the TLS tests (Redis over TLS): made once with Debian's openssl under
# $SYNCSTORE_CACHE/test-certs and reused. Prints the directory, which holds
# ca.pem, server.pem and server.key, and other-ca.pem (a CA that signed
# nothing here, for the "wrong CA is refused" tests).
set -euo pipefail
DIR="${SYNCSTORE_CACHE:-/var/cache/syncstore}/test-certs"
if ! command -v openssl >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
if [ -s "$DIR/server.pem" ] && [ -s "$DIR/other-ca.pem" ]; then
  echo "$DIR"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$1" \
    -keyout "$tmp/$2.key" -out "$tmp/$2.pem" 2>/dev/null
}
ca "syncstore test CA" ca
ca "syncstore other CA" other-ca
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$tmp/ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
  -CAcreateserial -days 3650 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null
mkdir -p "$DIR"
cp "$tmp/ca.pem" "$tmp/other-ca.pem" "$tmp/server.pem" "$tmp/server.key" "$DIR/"
chmod 644 "$DIR/server.key"
echo "$DIR"
