#!/usr/bin/env bash
# Side-by-side throughput of mxsnap and the shell baselines on the same data.
#
#   benches/compare.sh [--size-mb N] [--quick] [--runs N] [--only pack,unpack,full]
#
# Generates a seeded file store (benches/gen_store.py) and a pgbench database of matching size
# with a system$filedocument row per file, in a throwaway cluster; then runs every scenario
# alternating mxsnap and its baselines, --runs times, and prints medians, ratios
# (baseline seconds / mxsnap seconds: above 1 means mxsnap is faster) and peak RSS.
# Installs pigz, zstd and GNU time with apt when missing.
#
# Every unpack goes into a directory never used before, and nothing is deleted until the end:
# on ext4, creating files soon after deleting many (within a minute or more) makes the inode
# allocator skip the recently freed inodes one by one, which once tripled an unpack's time.
# So the script needs about (8 x runs + 6) x the store's size free.
set -euo pipefail
size_mb=1024 runs=3 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mb) size_mb=$2; shift 2 ;;
    --quick) size_mb=64; runs=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
for tool in pigz zstd; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $tool >/dev/null; }
done
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
. "$here/lib.sh"; bench_build

work=$(mktemp -d /var/tmp/mxsnap-bench.XXXXXX); chmod 755 "$work"
cleanup() { bench_cluster_stop; rm -rf "$work"; }
trap cleanup EXIT
bench_cluster "$work"
url="postgresql:///bench?host=$work/pg&user=postgres"

need_mb=$(( size_mb * (8 * runs + 6) ))
free_mb=$(df -Pm "$work" | awk 'NR == 2 { print $4 }')
[ "$free_mb" -ge "$need_mb" ] || { echo "bench: needs ${need_mb} MiB free in $work, has ${free_mb}" >&2; exit 1; }
echo "bench: generating a ${size_mb} MiB store and database in $work" >&2
python3 "$here/gen_store.py" "$work/store" "$size_mb" > "$work/uuids.txt"
scale=$(( size_mb / 15 > 0 ? size_mb / 15 : 1 ))
bench_app_db bench "$work/uuids.txt" "$scale"
db_mb=$("$bin/psql" -X -A -t -d bench -c "SELECT pg_database_size('bench') / 1048576")
echo "bench: database ${db_mb} MiB (pgbench scale $scale)" >&2

out="$work/out"; mkdir -p "$out"
results="$work/results"; : > "$results"
# Every run starts from the same memory state (bench_settle): the inputs read back in are the
# store, the archives and the database's files.
settle() { bench_settle "$S" "$work/pg/data" $(find "$out" -maxdepth 1 -type f); }
hz=$(getconf CLK_TCK); cores=$(nproc)
# measure NAME GROUP CMD: time one run, record seconds, peak RSS (KiB), output size and the
# whole machine's CPU seconds over the run.
measure() {
  local name=$1 group=$2 cmd=$3
  settle
  local t0; t0=$(bench_cpu_ticks)
  /usr/bin/time -f "%e %M" -o "$work/time" bash -c "$cmd" >/dev/null 2>>"$work/log" \
    || { echo "bench: $name failed, see $work/log" >&2; tail -5 "$work/log" >&2; exit 1; }
  local cpu; cpu=$(awk -v a="$t0" -v b="$(bench_cpu_ticks)" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
  read -r secs kb < "$work/time"
  local size=0; [ -f "$out/$name" ] && size=$(stat -c %s "$out/$name")
  echo "$group $name $secs $kb $size $cpu" >> "$results"
}
# A new, empty directory for each unpack (see above); $x names it.
n_fresh=0
fresh() { n_fresh=$((n_fresh + 1)); x="$out/x$n_fresh"; mkdir -p "$x"; }
drop_target() { "$bin/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS target WITH (FORCE)"; }

S="$work/store"
for run in $(seq 1 "$runs"); do
  echo "bench: run $run of $runs" >&2
  if [ -z "$only" ] || [[ "$only" == *,pack,* ]]; then
    measure mx-gzip pack "$mx create -q --force --variant files --all-files --files $S --output $out/mx-gzip"
    measure tar-czf pack "tar czf $out/tar-czf -C $S ."
    measure tar-pigz pack "tar cf - -C $S . | pigz -6 -p2 > $out/tar-pigz"
    measure mx-zstd pack "$mx create -q --force --variant files --all-files --compression zstd --files $S --output $out/mx-zstd"
    measure tar-zstd pack "tar cf - -C $S . | zstd -3 -T2 -q > $out/tar-zstd"
  fi
  if [ -z "$only" ] || [[ "$only" == *,unpack,* ]]; then
    [ -f "$out/mx-gzip" ] || $mx create -q --variant files --all-files --files $S --output $out/mx-gzip
    [ -f "$out/mx-zstd" ] || $mx create -q --variant files --all-files --compression zstd --files $S --output $out/mx-zstd
    fresh; measure mx-unpack-gzip unpack "$mx restore -q --yes $out/mx-gzip --database '$url' --files $x/files"
    fresh; measure tar-xzf unpack "tar xzf $out/mx-gzip -C $x"
    fresh; measure pigz-tar-x unpack "pigz -dc $out/mx-gzip | tar xf - -C $x"
    # mxsnap's restore makes the files durable before its swap; the baselines above leave
    # theirs in the page cache. The same work on both sides: the baseline followed by sync,
    # and mxsnap with --no-sync.
    fresh; measure pigz-tar-x-sync unpack "pigz -dc $out/mx-gzip | tar xf - -C $x && sync"
    fresh; measure mx-unpack-gzip-nosync unpack "$mx restore -q --yes --no-sync $out/mx-gzip --database '$url' --files $x/files"
    fresh; measure mx-unpack-zstd unpack "$mx restore -q --yes $out/mx-zstd --database '$url' --files $x/files"
    fresh; measure zstd-tar-x unpack "zstd -dc $out/mx-zstd | tar xf - -C $x"
  fi
  if [ -z "$only" ] || [[ "$only" == *,full,* ]]; then
    measure mx-full full "$mx create -q --force --database '$url' --files $S --output $out/mx-full"
    measure dump-then-tar-gzip full "$bin/pg_dump -Fc -f $out/dump.backup bench && tar cf - -C $S . $out/dump.backup 2>/dev/null | gzip > $out/dump-then-tar-gzip"
    measure dump-then-tar-pigz full "$bin/pg_dump -Fc -f $out/dump.backup bench && tar cf - -C $S . $out/dump.backup 2>/dev/null | pigz -p2 > $out/dump-then-tar-pigz"
    measure pg_dump-Z0 full "$bin/pg_dump -Fc -Z0 -f $out/pg_dump-Z0 bench"
    measure mx-files-alone full "$mx create -q --force --variant files --database '$url' --files $S --output $out/mx-files-alone"
    fresh; measure mx-unpack-files-alone full "$mx restore -q --yes $out/mx-files-alone --database '$url' --files $x/files"
    drop_target; fresh
    measure mx-restore full "$mx restore -q --yes $out/mx-full --database 'postgresql:///target?host=$work/pg&user=postgres' --files $x/files"
    drop_target; fresh
    measure pg_restore-then-tar-x full "$bin/psql -X -q -d postgres -c 'CREATE DATABASE target' && $bin/pg_restore -j2 -d target $out/dump.backup && tar xzf $out/dump-then-tar-gzip -C $x"
    drop_target
    measure pg_restore-j2-alone full "$bin/psql -X -q -d postgres -c 'CREATE DATABASE target' && $bin/pg_restore -j2 -d target $out/dump.backup"
    drop_target
  fi
done

python3 - "$results" "$size_mb" "$cores" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    g, n, s, kb, size, cpu = line.split()
    rows[(g, n)].append((float(s), int(kb), int(size), float(cpu)))
med = {k: (statistics.median(x[0] for x in v), max(x[1] for x in v), v[-1][2],
           statistics.median(x[3] for x in v)) for k, v in rows.items()}
mb, cores = int(sys.argv[2]), int(sys.argv[3])
pairs = {"tar-czf": "mx-gzip", "tar-pigz": "mx-gzip", "tar-zstd": "mx-zstd",
         "tar-xzf": "mx-unpack-gzip", "pigz-tar-x": "mx-unpack-gzip", "zstd-tar-x": "mx-unpack-zstd",
         "pigz-tar-x-sync": "mx-unpack-gzip",
         "dump-then-tar-gzip": "mx-full", "dump-then-tar-pigz": "mx-full", "pg_dump-Z0": "mx-full",
         "pg_restore-then-tar-x": "mx-restore"}
# The issue's goals, compared run by run (baseline seconds / mxsnap seconds in the same run).
goals = [("pack gzip vs tar | pigz -6 -p2", "tar-pigz", "mx-gzip", 3.0),
         ("pack zstd vs tar | zstd -3 -T2", "tar-zstd", "mx-zstd", 1.0),
         ("unpack gzip vs pigz -dc | tar x", "pigz-tar-x", "mx-unpack-gzip", 2.0),
         ("unpack gzip --no-sync vs pigz -dc | tar x", "pigz-tar-x", "mx-unpack-gzip-nosync", 2.0),
         ("unpack gzip vs pigz -dc | tar x && sync", "pigz-tar-x-sync", "mx-unpack-gzip", 2.0)]
print(f"store {mb} MiB; medians of {max(len(v) for v in rows.values())} run(s)")
# cpu s: the whole machine's CPU seconds over the run; "of bound": the run's seconds against
# that work spread over every core (1.00 = the cores were busy from start to end).
print(f"{'scenario':24} {'group':7} {'seconds':>8} {'MB/s':>8} {'peak RSS':>9} {'output MB':>10} {'cpu s':>7} {'of bound':>8} {'ratio':>12}")
for (g, n), (s, kb, size, cpu) in med.items():
    ratio = ""
    if n in pairs and (g, pairs[n]) in med:
        ratio = f"{s / med[(g, pairs[n])][0]:.2f}x for mx"
    bound = s / (cpu / cores) if cpu else 0
    print(f"{n:24} {g:7} {s:8.2f} {mb * 1.048576 / s if s else 0:8.1f} {kb / 1024:8.1f}M {size / 1e6:10.1f} {cpu:7.2f} {bound:7.2f}x {ratio:>12}")
for (g, n), v in rows.items():
    print(f"  runs {n}: " + ", ".join(f"{x[0]:.2f} s" for x in v))
by_name = {n: v for (g, n), v in rows.items()}
for label, base, mine, goal in goals:
    if base in by_name and mine in by_name:
        per_run = [b[0] / m[0] for b, m in zip(by_name[base], by_name[mine])]
        met = sum(r >= goal for r in per_run)
        print(f"goal {label} >= {goal:.1f}x: per run " + ", ".join(f"{r:.2f}x" for r in per_run)
              + f" (met in {met} of {len(per_run)})")

# The issue's targets for the whole job: each half alone, and the job against the slower half.
def secs(n):
    return med[("full", n)][0] if ("full", n) in med else None
for job, halves in (("mx-full", ("pg_dump-Z0", "mx-files-alone")),
                    ("mx-restore", ("pg_restore-j2-alone", "mx-unpack-files-alone"))):
    if secs(job) and all(secs(h) for h in halves):
        slower = max(secs(h) for h in halves)
        print(f"{job}: {secs(job):.2f} s = {secs(job) / slower:.2f} x the slower half alone "
              f"({', '.join(f'{h} {secs(h):.2f} s' for h in halves)}); target <= 1.15 x")
        cpu = med[("full", job)][3]
        halves_cpu = sum(med[("full", h)][3] for h in halves)
        print(f"{job}: {cpu:.2f} CPU s over {cores} cores bounds it at {cpu / cores:.2f} s; it took "
              f"{secs(job) / (cpu / cores):.2f} x that; its halves alone need {halves_cpu:.2f} CPU s "
              f"(bound {halves_cpu / cores:.2f} s), so the whole job does "
              f"{cpu - halves_cpu:+.2f} CPU s of work of its own")
PY
