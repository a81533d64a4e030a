#!/usr/bin/env bash
# Local CA + server certificate for host `cloudnative` (make certgen).
#   tls/certgen.sh            keep existing files
#   FORCE=1 tls/certgen.sh    make new ones
# Writes into TLS_DIR (default: this script's directory): ca.key ca.crt tls.key
# tls.crt. Keys are 0600. The seed signed nothing: its one self-signed certificate
# was both the CA a client must trust and the server's certificate; here the CA
# key never goes near the cluster, only tls.crt/tls.key do (make tls-secret).
set -euo pipefail

dir=${TLS_DIR:-$(cd "$(dirname "$0")" && pwd)}
host=${TLS_HOST:-cloudnative}
force=${FORCE:-0}
# 3650 days for the local CA: renewing it means re-trusting it everywhere.
ca_days=3650
# 397 days for the server certificate: under Apple's 825-day cap for any TLS
# server certificate and the CA/Browser Forum's 398 days, so every client accepts it.
server_days=397

cd "$dir"
umask 077
tmp=$(mktemp -d "$dir/.certgen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

have() { for f in "$@"; do [ -s "$f" ] || return 1; done; }

new_ca=0
if [ "$force" = 1 ] || ! have ca.key ca.crt; then
  # ECDSA P-256: as strong as RSA 3072, fast to make, accepted by every client.
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days "$ca_days" \
    -subj "/O=fiboserver local CA/CN=fiboserver local CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca.crt"
  mv "$tmp/ca.key" ca.key
  mv "$tmp/ca.crt" ca.crt
  new_ca=1
  echo "certgen: new CA $dir/ca.crt"
else
  echo "certgen: keeping CA $dir/ca.crt (FORCE=1 replaces it)"
fi

if [ "$new_ca" = 1 ] || ! have tls.key tls.crt; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/tls.key"
  openssl req -new -key "$tmp/tls.key" -subj "/CN=$host" -out "$tmp/tls.csr"
  cat > "$tmp/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$host
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
  openssl x509 -req -in "$tmp/tls.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$server_days" -extfile "$tmp/ext.cnf" \
    -out "$tmp/tls.crt"
  mv "$tmp/tls.key" tls.key
  mv "$tmp/tls.crt" tls.crt
  echo "certgen: new server certificate $dir/tls.crt for DNS:$host"
else
  echo "certgen: keeping $dir/tls.crt (FORCE=1 replaces it)"
fi

# Certificates are public; keys stay owner-only.
chmod 0600 ca.key tls.key
chmod 0644 ca.crt tls.crt
openssl verify -CAfile ca.crt tls.crt
