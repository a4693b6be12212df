#!/usr/bin/env bash
# The catalogue in an object store against the catalogue in a directory, same data, same run:
# `snapshots create` and `snapshots restore` through each, with seconds and peak RSS, and the
# ratios. The object store is moto's S3 server on loopback (pip install "moto[server]"), so the
# figures are of mxsnap's streaming (multipart parts, ranged reads) plus a Python server: a
# lower bound for a real S3-protocol store. RSS must not grow with the archive's size.
# Usage: benches/objstore.sh [SIZE_MB ...]   (default: 256 1024)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
. "$here/lib.sh"; bench_build
work=$(mktemp -d /var/tmp/mxsnap-objstore.XXXXXX); chmod 755 "$work"
moto=$(command -v moto_server || echo /opt/mxsnap-ci/moto/bin/moto_server)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
moto_pid=$!
cleanup() { kill "$moto_pid" 2>/dev/null || true; bench_cluster_stop; rm -rf "$work"; }
trap cleanup EXIT
bench_cluster "$work"
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$port/bench" > /dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(256 1024)
"$bin/psql" -X -q -d postgres -c "CREATE DATABASE target"
target="postgresql:///target?host=$PGHOST&port=$PGPORT&user=$PGUSER"
printf '%-8s %-8s %-6s %8s %10s\n' "store" "job" "repo" "seconds" "peak RSS"
declare -A secs
for mb in "${sizes[@]}"; do
  S=$work/s$mb
  python3 "$here/gen_store.py" "$S" "$mb" > /dev/null 2>&1
  find "$S" -type f -printf '%f\n' | grep -E '^[0-9a-f-]{36}$' > "$work/uuids"
  bench_app_db "app$mb" "$work/uuids" 5
  url="postgresql:///app$mb?host=$PGHOST&port=$PGPORT&user=$PGUSER"
  for repo in dir s3; do
    [ "$repo" = dir ] && r="$work/repo$mb" || r="s3://bench/repo$mb"
    bench_time "$work/t" "$mx snapshots create -q --repo $r --env Test --database '$url' --files $S > $work/id"
    read -r s kb _ < "$work/t"; secs[$mb-create-$repo]=$s
    printf '%-8s %-8s %-6s %8s %9.1fM\n' "${mb}MiB" create "$repo" "$s" "$(echo "$kb / 1024" | bc -l)"
    id=$(cat "$work/id")
    rm -rf "$work/tf"
    bench_time "$work/t" "$mx snapshots restore -q --repo $r $id --database '$target' --files $work/tf --yes"
    read -r s kb _ < "$work/t"; secs[$mb-restore-$repo]=$s
    printf '%-8s %-8s %-6s %8s %9.1fM\n' "${mb}MiB" restore "$repo" "$s" "$(echo "$kb / 1024" | bc -l)"
  done
  for job in create restore; do
    printf '%-8s %-8s s3/dir %8.2f\n' "${mb}MiB" "$job" "$(echo "${secs[$mb-$job-s3]} / ${secs[$mb-$job-dir]}" | bc -l)"
  done
  rm -rf "$S" "$work/repo$mb" "$work/tf"
done
