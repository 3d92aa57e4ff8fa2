#!/bin/sh
# Make the TLS material of one Dask cluster with openssl: a private certificate authority, one
# certificate for the scheduler and the workers, and one for clients (the mlr-dask driver).
#
#   sh deploy/make_certs.sh [-d DAYS] [-f] OUTDIR [HOSTNAME_OR_IP ...]
#
# OUTDIR receives
#   ca.pem                        the authority's certificate: every process trusts only it
#   ca-key.pem                    the authority's key: keep it off the cluster, it signs new certs
#   cluster.pem, cluster-key.pem  scheduler and workers (server and client use, TLS both ways)
#   client.pem, client-key.pem    clients: whoever holds this pair can run code on the cluster
#
# The cluster certificate names localhost, 127.0.0.1, scheduler (the compose service),
# mlr-dask-scheduler and mlr-dask-job-scheduler (the Kubernetes services) and every extra
# HOSTNAME_OR_IP given; Dask does not check host names (every process must present a
# certificate of this authority instead), the names help other tools. Keys are readable by
# their owner only. An OUTDIR that already holds ca.pem is refused unless -f is given. DAYS
# defaults to 365.
set -eu

days=365
force=0
while getopts "d:fh" opt; do
    case "$opt" in
        d) days="$OPTARG" ;;
        f) force=1 ;;
        h) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "usage: $0 [-d DAYS] [-f] OUTDIR [HOSTNAME_OR_IP ...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ "$#" -lt 1 ]; then
    echo "usage: $0 [-d DAYS] [-f] OUTDIR [HOSTNAME_OR_IP ...]" >&2
    exit 2
fi
case "$days" in
    ''|*[!0-9]*) echo "error: -d needs a whole number of days, got '$days'" >&2; exit 2 ;;
esac
command -v openssl >/dev/null 2>&1 || { echo "error: openssl is not installed" >&2; exit 2; }

out="$1"
shift
if [ -e "$out/ca.pem" ] && [ "$force" -ne 1 ]; then
    echo "error: $out already holds certificates (ca.pem); give -f to replace them" >&2
    exit 2
fi

san="DNS:localhost,IP:127.0.0.1,DNS:scheduler,DNS:mlr-dask-scheduler,DNS:mlr-dask-job-scheduler"
for name in "$@"; do
    case "$name" in
        *[!0-9.]*) case "$name" in *:*) san="$san,IP:$name" ;; *) san="$san,DNS:$name" ;; esac ;;
        *) san="$san,IP:$name" ;;
    esac
done

umask 077
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# newkey FILE: an EC P-256 private key
newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

newkey "$work/ca-key.pem"
openssl req -x509 -new -key "$work/ca-key.pem" -sha256 -days "$days" \
    -subj "/CN=mlr-dask cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$work/ca.pem"

# sign NAME CN EXTENSIONS: NAME.pem and NAME-key.pem signed by the authority
sign() {
    newkey "$work/$1-key.pem"
    openssl req -new -key "$work/$1-key.pem" -subj "/CN=$2" -out "$work/$1.csr"
    printf '%s\n' "$3" > "$work/$1.ext"
    openssl x509 -req -in "$work/$1.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
        -CAcreateserial -sha256 -days "$days" -extfile "$work/$1.ext" \
        -out "$work/$1.pem" 2>/dev/null
}

sign cluster "mlr-dask scheduler and workers" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san"
sign client "mlr-dask client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

for f in cluster client; do
    openssl verify -CAfile "$work/ca.pem" "$work/$f.pem" >/dev/null
done
for f in ca ca-key cluster cluster-key client client-key; do
    mv -f "$work/$f.pem" "$out/$f.pem"
done
chmod 644 "$out/ca.pem" "$out/cluster.pem" "$out/client.pem"
echo "wrote $out: ca.pem ca-key.pem cluster.pem cluster-key.pem client.pem client-key.pem"
