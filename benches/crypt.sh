#!/usr/bin/env bash
# Cost of encryption at rest: zstd create (files-only) and restore of a seeded store, with and
# without age encryption, alternating, same data, same run; medians, overhead and peak RSS.
# Usage: benches/crypt.sh [SIZE_MB] [ROUNDS]   (default 1024 3)
# The restores go to the database of a managed local environment (untouched by a files-only
# restore) and each into a new file store: on ext4, creating files soon after deleting many is
# slow, and replacing one store run after run measured 6 to 21 s for the same restore.
# Needs age-keygen (Debian's age). Nothing else should run meanwhile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
(cd "$root" && cargo build --release --quiet)
mx="$root/target/release/mxsnap"
mb="${1:-1024}"; rounds="${2:-3}"
work=$(mktemp -d /var/tmp/mxsnap-crypt.XXXXXX); chmod 755 "$work"
cleanup() { "$mx" env stop "$work/env" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
age-keygen -o "$work/key" 2>/dev/null
public=$(age-keygen -y "$work/key")
mkdir -p "$work/tiny/aa/bb"; echo tiny > "$work/tiny/aa/bb/aabbcccc-0000-4000-8000-000000000000"
"$mx" create -q --variant files --all-files --files "$work/tiny" --output "$work/tiny.tar.gz"
"$mx" restore -q --yes "$work/tiny.tar.gz" --into "$work/env"
url=$("$mx" env status "$work/env" --json | python3 -c "import json,sys; s=json.load(sys.stdin)['settings']; print('postgresql://%s:%s@%s:%s/%s' % (s['user'], s['password'], s['host'], s['port'], s['database']))")
python3 "$here/gen_store.py" "$work/store" "$mb" > /dev/null
settle() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  find "$work/store" -type f -print0 | xargs -0 cat > /dev/null
}
run() { # name command...
  local name="$1"; shift
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null 2>&1
  read -r secs kb < "$work/t"
  echo "$name $secs $kb" >> "$work/results"
  printf '%-16s %7s s %8.1f MiB\n' "$name" "$secs" "$(echo "$kb / 1024" | bc -l)"
}
for round in $(seq 1 "$rounds"); do
  for mode in plain age; do
    extra=(); [ "$mode" = age ] && extra=(--encrypt-to "$public")
    settle
    run "create-$mode" "$mx" create -q --force --variant files --all-files --compression zstd \
      --files "$work/store" --output "$work/out.$mode" "${extra[@]}"
  done
  for mode in plain age; do
    extra=(); [ "$mode" = age ] && extra=(--identity "$work/key")
    settle
    run "restore-$mode" "$mx" restore -q --yes "$work/out.$mode" --database "$url" \
      --files "$work/restored-$round-$mode/files" "${extra[@]}"
  done
done
echo
median() { grep "^$1 " "$work/results" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
peak() { grep "^$1 " "$work/results" | awk '{print $3}' | sort -n | tail -1; }
for job in create restore; do
  p=$(median "$job-plain"); a=$(median "$job-age")
  printf '%-8s plain %6s s  age %6s s  overhead %+5.1f %%  peak RSS %5.1f / %5.1f MiB\n' \
    "$job" "$p" "$a" "$(echo "($a - $p) * 100 / $p" | bc -l)" \
    "$(echo "$(peak "$job-plain") / 1024" | bc -l)" "$(echo "$(peak "$job-age") / 1024" | bc -l)"
done
ls -l "$work"/out.plain "$work"/out.age | awk '{print $5, $9}'
