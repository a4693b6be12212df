#!/usr/bin/env bash
# `mxsnap serve` under load, on loopback: 50 clients listing snapshots (v1) while 8 clients
# download the same full snapshot of a SIZE_MB store through its signed link.
# Reports list latency p50/p99, each download's throughput against `cat` of the archive file
# (page cache warm for both), and the service's peak RSS.
# Usage: benches/serve.sh [SIZE_MB]   (default 1024). Needs PostgreSQL's server binaries (a
# managed local environment holds the database) and curl. Run it on an idle machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
mb=${1:-1024}
listers=50; downloaders=8; max_lists=100
. "$here/lib.sh"; bench_build
work=$(mktemp -d /var/tmp/mxsnap-serve.XXXXXX); chmod 755 "$work"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  bench_env_stop
  rm -rf "$work"
}
trap cleanup EXIT

# A database (a managed local environment) and a store of SIZE_MB.
bench_env "$work"
url=$env_url/postgres
python3 "$here/gen_store.py" "$work/store" "$mb" > /dev/null 2>&1

bench_serve "$work" "$url" "$work/store"
key=$bench_key
base=$serve_url
api="$base/api/1/apps/bench/environments/acceptance"
auth=(-H "Mendix-Username: bench@example.com" -H "Mendix-ApiKey: $key")

id=$(curl -sf "${auth[@]}" -X POST "$api/snapshots" | python3 -c 'import json,sys; print(json.load(sys.stdin)["SnapshotID"])')
until links=$(curl -sf "${auth[@]}" "$api/snapshots/$id"); do
  if curl -sf "${auth[@]}" "$api/snapshots" | grep -q '"State":"Failed"'; then
    echo "the snapshot failed:"; cat "$work/serve.log"; exit 1
  fi
  sleep 1
done
link=$(echo "$links" | python3 -c 'import json,sys; print(json.load(sys.stdin)["DatabaseAndFiles"])')
archive=$(ls "$work"/repo/archives/*)
size=$(stat -c %s "$archive")
cat "$archive" > /dev/null   # warm the page cache for both sides
start=$(date +%s.%N); cat "$archive" > /dev/null; end=$(date +%s.%N)
cat_mbs=$(echo "$size / ($end - $start) / 1048576" | bc -l)

# 1. The downloads alone; 2. the same with 50 concurrent listing clients (one curl, 50
# connections at once, bounded in count), so the clients' own process starts do not load the
# machine.
dl_pids=()
download_all() {  # $1: tag
  dl_pids=()
  for i in $(seq $downloaders); do
    curl -s -o /dev/null -w '%{speed_download} %{size_download}\n' "$link" > "$work/dl.$1.$i" &
    dl_pids+=($!)
  done
}
download_all alone
for p in "${dl_pids[@]}"; do wait "$p"; done
for i in $(seq $((listers * max_lists))); do echo "url = \"$api/snapshots\""; echo "output = /dev/null"; done > "$work/lists.cfg"
download_all loaded
curl -s -Z --no-progress-meter --parallel-max $listers -K "$work/lists.cfg" "${auth[@]}" \
  -w '%{time_total} %{http_code}\n' > "$work/ls" &
ls_pid=$!
for p in "${dl_pids[@]}"; do wait "$p"; done
# The listing keeps going after the downloads only until it has done its count.
wait $ls_pid
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
awk '$2 != 200 {bad++} END {if (bad) print bad, "listings failed"}' "$work/ls"
awk '{print $1}' "$work/ls" | sort -n > "$work/lat"
n=$(wc -l < "$work/lat")
p50=$(sed -n "$(( (n + 1) / 2 ))p" "$work/lat"); p99=$(sed -n "$(( (n * 99 + 99) / 100 ))p" "$work/lat")
echo "archive: $((size / 1048576)) MiB; cat: $(printf %.0f "$cat_mbs") MiB/s"
echo "listings: $n, p50 $(echo "$p50 * 1000" | bc -l | xargs printf %.1f) ms, p99 $(echo "$p99 * 1000" | bc -l | xargs printf %.1f) ms"
for tag in alone loaded; do
  for i in $(seq $downloaders); do
    read -r speed got < "$work/dl.$tag.$i"
    [ "$got" = "$size" ] || echo "download $i got $got of $size bytes"
    echo "download $i ($tag, $downloaders at once): $(echo "$speed / 1048576" | bc -l | xargs printf %.0f) MiB/s ($(echo "$speed / 1048576 / $cat_mbs" | bc -l | xargs printf %.3f) of cat alone)"
  done
done
echo "serve peak RSS: $(echo "$peak / 1024" | bc -l | xargs printf %.1f) MiB"
