#!/usr/bin/env bash
# Memory and time with many small files: a full snapshot (zstd) of a store of N files of
# 1 KiB, every one referenced by a system$filedocument row, and its restore, against the same
# work done by the stock tools (pg_dump -Fc plus tar | zstd; pg_restore -j2 plus zstd -dc | tar x).
# Peak RSS must not grow with N.
#
#   benches/many_files.sh [N ...]      (default: 100000 1000000)
#
# Prints, per N: seconds and peak RSS of each job, the ratio to the stock tools, and the job's
# CPU seconds (user + system, children included) divided by the cores: the time the whole
# machine needs for the work, a bound no overlap can beat.
# Needs about 6 KiB of disk per file (the store, two archives, two unpacked copies).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
. "$here/lib.sh"; bench_build
counts=("$@"); [ ${#counts[@]} -gt 0 ] || counts=(100000 1000000)
cores=$(nproc)

work=$(mktemp -d /var/tmp/mxsnap-many.XXXXXX); chmod 755 "$work"
cleanup() { bench_cluster_stop; rm -rf "$work"; }
trap cleanup EXIT
bench_cluster "$work"
psql() { "$bin/psql" -X -q "$@"; }

# Every job starts with its inputs in the page cache: the store, the archives and the
# database's files, read back after the cache is emptied (when root may). Without it the job
# run first paid for reading what had been paged out (this machine pages out what has not been
# touched for a minute) and the stock tools after it found everything cached.
settle() {
  sync
  [ -w /proc/sys/vm/drop_caches ] && echo 1 > /proc/sys/vm/drop_caches
  { find "$S" "$work/pg/data" -type f -print0; find "$out" -maxdepth 1 -type f -print0; } \
    | xargs -0 cat > /dev/null 2>&1 || true
}

# measure NAME CMD: one run; prints seconds, peak RSS and CPU/cores.
measure() {
  local name=$1 cmd=$2
  settle
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" bash -c "$cmd" >/dev/null 2>>"$work/log" \
    || { echo "bench: $name failed, see $work/log" >&2; tail -5 "$work/log" >&2; exit 1; }
  read -r secs kb user sys < "$work/time"
  echo "$n $name $secs $kb $user $sys" >> "$work/results"
  printf '%-9s %-22s %8.2f s %9.1f MiB  cpu/cores %7.2f s\n' "$n" "$name" "$secs" \
    "$(echo "$kb / 1024" | bc -l)" "$(echo "($user + $sys) / $cores" | bc -l)" >&2
}

: > "$work/results"
for n in "${counts[@]}"; do
  echo "bench: $n files of 1 KiB" >&2
  S="$work/store$n"; out="$work/out$n"; mkdir -p "$out"
  python3 - "$S" "$n" > "$work/uuids" <<'PY'
import os, random, sys, uuid
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20)
table = bytes(b"eeeeeeeetttttaaaaooooiiinnnsssshhhrrrddllcumwfgypbvk  \n"[i % 55] for i in range(256))
made = set()
out = sys.stdout
for _ in range(n):
    u = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    d = os.path.join(root, u[0:2], u[2:4])
    if d not in made:
        os.makedirs(d, exist_ok=True)
        made.add(d)
    with open(os.path.join(d, u), "wb") as f:
        f.write(rng.randbytes(1024).translate(table))
    out.write(u + "\n")
PY
  db="many$n"
  bench_app_db "$db" "$work/uuids" 5
  url="postgresql:///$db?host=$work/pg&user=postgres"
  measure mx-create "$mx create -q --force --compression zstd --database '$url' --files $S --output $out/mx.tar.zst"
  measure pg_dump+tar-zstd "$bin/pg_dump -Fc -f $out/dump.backup $db && tar cf - -C $S . | zstd -3 -T2 -q > $out/tar.zst"
  measure mx-verify "$mx verify -q $out/mx.tar.zst"
  measure mx-restore "$mx restore -q --yes $out/mx.tar.zst --database 'postgresql:///t1$db?host=$work/pg&user=postgres' --files $out/x1/files"
  measure pg_restore+untar "psql -d postgres -c 'CREATE DATABASE t2$db' && $bin/pg_restore -j2 -d t2$db $out/dump.backup && mkdir -p $out/x2 && zstd -dc $out/tar.zst | tar xf - -C $out/x2"
  psql -d postgres -c "DROP DATABASE t1$db" -c "DROP DATABASE t2$db" -c "DROP DATABASE $db"
  rm -rf "$S" "$out"
done

python3 - "$work/results" "$cores" <<'PY'
import sys, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    n, name, s, kb, u, sy = line.split()
    rows[(int(n), name)] = (float(s), int(kb) / 1024, (float(u) + float(sy)) / int(sys.argv[2]))
print(f"{'files':>9} {'job':18} {'seconds':>8} {'peak RSS':>10} {'cpu/cores':>10} {'stock/mx':>9}")
pairs = {"mx-create": "pg_dump+tar-zstd", "mx-restore": "pg_restore+untar"}
for (n, name), (s, mib, bound) in rows.items():
    ratio = ""
    if name in pairs and (n, pairs[name]) in rows:
        ratio = f"{rows[(n, pairs[name])][0] / s:.2f}"
    print(f"{n:9} {name:18} {s:8.2f} {mib:9.1f}M {bound:9.2f}s {ratio:>9}")
ns = sorted({n for n, _ in rows})
if len(ns) > 1:
    for job in ("mx-create", "mx-verify", "mx-restore"):
        lo, hi = rows.get((ns[0], job)), rows.get((ns[-1], job))
        if lo and hi:
            print(f"{job}: peak RSS {hi[1]:.1f} MiB at {ns[-1]} files, {lo[1]:.1f} MiB at {ns[0]} "
                  f"({(hi[1] / lo[1] - 1) * 100:+.1f} %); goal < 64 MiB and within 10 %")
PY
