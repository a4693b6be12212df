#!/usr/bin/env bash
# A/B of the gzip unpack: files-only restores of one archive by one or more mxsnap binaries
# (each by default and with --no-sync) and `pigz -dc | tar x` of the same archive (alone, and
# followed by `sync`), interleaved, each run from the same memory state (bench_settle) and
# into a directory never used before. For checking a change to the reading path against the one
# before it and against the baseline in the same minutes (this machine's speed drifts by the
# hour, so only interleaved runs compare).
#
#   benches/unpack_ab.sh [--size-mb N] [--rounds N] [--keep DIR] BINARY...
#
# Prints each run's seconds and whole-machine CPU seconds, then medians and each binary's
# ratio per round to the baseline of the same durability. --keep DIR reuses (or leaves) the
# store, the cluster and the archive there (the archive is made by the first binary).
set -euo pipefail
size_mb=1024 rounds=3 keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mb) size_mb=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [--size-mb N] [--rounds N] [--keep DIR] BINARY..." >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
command -v pigz >/dev/null || { apt-get update -qq && apt-get install -y -qq pigz >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
. "$here/lib.sh"
bins=("$@")

if [ -n "$keep" ]; then work=$keep; mkdir -p "$work"; else work=$(mktemp -d /var/tmp/mxsnap-unpack.XXXXXX); fi
chmod 755 "$work"
# With --keep only the unpacked folders go; the store, archive and cluster stay for next time.
cleanup() {
  bench_cluster_stop
  if [ -n "$keep" ]; then rm -rf "$work"/x.*; else rm -rf "$work"; fi
}
trap cleanup EXIT
[ -d "$work/store" ] || python3 "$here/gen_store.py" "$work/store" "$size_mb" > /dev/null
rm -rf "$work/pg"
bench_cluster "$work"
url="postgresql:///postgres?host=$work/pg&user=postgres"
[ -f "$work/archive" ] || "${bins[0]}" create -q --variant files --all-files --files "$work/store" --output "$work/archive"

settle() { bench_settle "$work/pg/data" "$work/archive"; }
hz=$(getconf CLK_TCK)
n=0
results="$work/results"; : > "$results"
measure() { # NAME CMD
  local name=$1 cmd=$2
  n=$((n + 1)); x="$work/x.$n"; mkdir -p "$x"
  settle
  local t0; t0=$(bench_cpu_ticks)
  /usr/bin/time -f "%e" -o "$work/time" bash -c "${cmd//@X@/$x}" >/dev/null 2>>"$work/log" \
    || { echo "bench: $name failed, see $work/log" >&2; tail -5 "$work/log" >&2; exit 1; }
  local cpu; cpu=$(awk -v a="$t0" -v b="$(bench_cpu_ticks)" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
  local secs; secs=$(cat "$work/time")
  echo "$round $name $secs $cpu" | tee -a "$results" >&2
}
# The jobs: the baseline, and the baseline made as durable as mxsnap's default restore (which
# syncs the files before its swap); each binary by default and with --no-sync (no sync, like
# the baseline).
names=(pigz pigz-sync)
declare -A cmds=(
  [pigz]="pigz -dc $work/archive | tar xf - -C @X@"
  [pigz-sync]="pigz -dc $work/archive | tar xf - -C @X@ && sync"
)
for i in "${!bins[@]}"; do
  names+=("bin$i" "bin$i-nosync")
  cmds[bin$i]="${bins[$i]} restore -q --yes $work/archive --database '$url' --files @X@/files"
  cmds[bin$i-nosync]="${bins[$i]} restore -q --yes --no-sync $work/archive --database '$url' --files @X@/files"
done
for round in $(seq 1 "$rounds"); do
  # The order rotates each round, so no job always runs first.
  rot=$(( (round - 1) % ${#names[@]} ))
  for name in "${names[@]:$rot}" "${names[@]:0:$rot}"; do
    measure "$name" "${cmds[$name]}"
  done
done
python3 - "$results" "${bins[@]}" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, name, s, cpu = line.split()
    rows[name][int(r)] = (float(s), float(cpu))
for i, b in enumerate(sys.argv[2:]):
    print(f"bin{i} = {b}")
for name, runs in rows.items():
    secs = [s for s, _ in runs.values()]
    cpus = [c for _, c in runs.values()]
    line = f"{name:12} median {statistics.median(secs):6.2f} s, cpu {statistics.median(cpus):6.2f} s; runs " + \
        ", ".join(f"{s:.2f}" for s in secs)
    if name.startswith("bin"):
        base = "pigz" if name.endswith("-nosync") else "pigz-sync"
        line += f"; x {base} per round " + ", ".join(
            f"{rows[base][r][0] / s:.2f}" for r, (s, _) in runs.items() if r in rows[base])
    print(line)
PY
