#!/usr/bin/env bash
# A restore streamed from a loopback URL (a signed link of `mxsnap serve`, got with
# `mxsnap remote link`) against the restore of the same archive from a local file, same run,
# same target: seconds, the ratio file/URL (1.0 = as fast; goal >= 0.9) and peak RSS of each.
# The archive is a full snapshot of a SIZE_MB store and a small database. Each way runs
# ROUNDS times, alternating; the best of each is compared (the page cache is warm for both).
# The restored files go to TARGET_DIR (default /dev/shm when it exists): on this machine's
# disk the write-back of the previous round made single runs vary by 1.7 times, which hid
# what is measured here (the transport). `verify` both ways (nothing written) is shown too.
# Usage: benches/url_restore.sh [SIZE_MB] [ROUNDS]   (default 1024 3). Needs PostgreSQL's
# server binaries. Run it on an idle machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
mb=${1:-1024}; rounds=${2:-3}
. "$here/lib.sh"; bench_build
work=$(mktemp -d /var/tmp/mxsnap-url.XXXXXX); chmod 755 "$work"
tdir=${TARGET_DIR:-$( [ -d /dev/shm ] && echo /dev/shm || echo "$work")}
target=$(mktemp -d "$tdir/mxsnap-url-target.XXXXXX")
pid=""
cleanup() {
  rm -rf "$target"
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  bench_env_stop
  rm -rf "$work"
}
trap cleanup EXIT

# A database server (a managed local environment) holding the source; the store.
bench_env "$work"
base_url=$env_url
python3 "$here/gen_store.py" "$work/store" "$mb" > /dev/null 2>&1

bench_serve "$work" "$base_url/postgres" "$work/store"
key=$bench_key
api=$serve_url
export MENDIX_USERNAME=bench@example.com MENDIX_APIKEY=$key
remote=("$mx" remote -q --api-url "$api" --app bench --env acceptance)
"${remote[@]}" create --wait > /dev/null
link=$("${remote[@]}" link latest)
archive=$(ls "$work"/repo/archives/*)
size=$(stat -c %s "$archive")
cat "$archive" > /dev/null

run() {  # $1: source (file or URL); prints "seconds peak_kib"
  sync   # the previous run's write-back is not this one's cost
  /usr/bin/time -f "%e %M" -o "$work/t" "$mx" restore -q --yes "$1" \
    --database "$base_url/target" --files "$target/files"
  cat "$work/t"
}
best_file=""; best_url=""
for r in $(seq "$rounds"); do
  # Alternating which goes first, so neither always follows the other's deletions.
  if (( r % 2 )); then
    read -r fs fk < <(run "$archive"); read -r us uk < <(run "$link")
  else
    read -r us uk < <(run "$link"); read -r fs fk < <(run "$archive")
  fi
  echo "round $r: file ${fs} s (peak RSS $((fk / 1024)) MiB), URL ${us} s (peak RSS $((uk / 1024)) MiB)"
  if [ -z "$best_file" ] || (( $(echo "$fs < $best_file" | bc -l) )); then best_file=$fs; file_kib=$fk; fi
  if [ -z "$best_url" ] || (( $(echo "$us < $best_url" | bc -l) )); then best_url=$us; url_kib=$uk; fi
done
vrun() {  # $1: source; prints "seconds"
  /usr/bin/time -f "%e" -o "$work/t" "$mx" verify -q "$1"
  cat "$work/t"
}
for r in $(seq "$rounds"); do
  echo "verify round $r: file $(vrun "$archive") s, URL $(vrun "$link") s"
done
echo "archive: $((size / 1048576)) MiB (store $mb MiB), files restored to $tdir"
echo "best: file $best_file s ($(echo "$size / $best_file / 1048576" | bc -l | xargs printf %.0f) MiB/s), URL $best_url s ($(echo "$size / $best_url / 1048576" | bc -l | xargs printf %.0f) MiB/s)"
echo "ratio (file seconds / URL seconds): $(echo "$best_file / $best_url" | bc -l | xargs printf %.3f)"
echo "peak RSS: file $((file_kib / 1024)) MiB, URL $((url_kib / 1024)) MiB"
