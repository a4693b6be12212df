#!/usr/bin/env bash
# Which order of a full restore's halves is fastest on this machine: the database restored
# while the files are extracted (overlap), or one half after the other (database-first,
# files-first). Same archive, same target, ROUNDS rounds in rotating order; prints each run's
# seconds and CPU seconds / cores (the bound no order can beat), and the median per order.
#
#   benches/restore_order.sh [SIZE_MB] [ROUNDS] [gzip|zstd]    (default 1024 3 gzip)
#
# The data is compare.sh's: a SIZE_MB store (benches/gen_store.py) and a pgbench database of
# about the same size with a system$filedocument row per file. Run it on an idle machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
mb=${1:-1024}; rounds=${2:-3}; codec=${3:-gzip}
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
. "$here/lib.sh"; bench_build
cores=$(nproc)
work=$(mktemp -d /var/tmp/mxsnap-order.XXXXXX); chmod 755 "$work"
cleanup() { bench_cluster_stop; rm -rf "$work"; }
trap cleanup EXIT
bench_cluster "$work"
python3 "$here/gen_store.py" "$work/store" "$mb" > "$work/uuids.txt" 2>/dev/null
bench_app_db bench "$work/uuids.txt" $(( mb / 15 > 0 ? mb / 15 : 1 ))
url="postgresql:///bench?host=$work/pg&user=postgres"
"$mx" create -q --compression "$codec" --database "$url" --files "$work/store" --output "$work/snap"
echo "archive: $(( $(stat -c %s "$work/snap") / 1048576 )) MiB ($codec), $cores cores" >&2

orders=(overlap database-first files-first)
: > "$work/results"
n=0
for r in $(seq "$rounds"); do
  for i in 0 1 2; do
    order=${orders[$(( (i + r) % 3 ))]}
    n=$((n + 1)); mkdir -p "$work/x$n"
    sync
    bench_time "$work/t" "$mx restore -q --yes --order $order $work/snap --database 'postgresql:///target?host=$work/pg&user=postgres' --files $work/x$n/files"
    read -r secs kb cpu < "$work/t"
    echo "$order $secs $cpu" >> "$work/results"
    printf 'round %d %-15s %7.2f s  cpu/cores %6.2f s  peak RSS %5d MiB\n' "$r" "$order" "$secs" \
      "$(echo "$cpu / $cores" | bc -l)" $((kb / 1024)) >&2
    "$bin/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS target WITH (FORCE)"
  done
done
python3 - "$work/results" "$cores" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    order, secs, cpu = line.split()
    runs[order].append((float(secs), float(cpu)))
cores = int(sys.argv[2])
for order, v in runs.items():
    s = statistics.median(x[0] for x in v)
    c = statistics.median(x[1] for x in v) / cores
    print(f"{order:15} median {s:7.2f} s   cpu/cores {c:6.2f} s   ({', '.join(f'{x[0]:.2f}' for x in v)})")
PY
