#!/usr/bin/env bash
# A/B of two mxsnap binaries on the same data, interleaved: files-only create (gzip, zstd) of
# a seeded store and verify of what each wrote. For checking that a change costs no speed.
# Usage: benches/ab.sh OLD_BINARY NEW_BINARY [SIZE_MB] [ROUNDS]
# Each run starts with dirty pages written, the page cache emptied (as root) and the store
# read back in, as benches/compare.sh does; nothing else should run meanwhile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
old="$1"; new="$2"; mb="${3:-1024}"; rounds="${4:-3}"
work=$(mktemp -d /var/tmp/mxsnap-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 "$here/gen_store.py" "$work/store" "$mb" > /dev/null
settle() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi
  find "$work/store" -type f -print0 | xargs -0 cat > /dev/null
}
timed() { # label binary args...
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null 2>&1
  read -r secs kb < "$work/t"
  printf '%-22s %7s s %8.1f MiB\n' "$label" "$secs" "$(echo "$kb / 1024" | bc -l)"
}
for round in $(seq 1 "$rounds"); do
  for codec in gzip zstd; do
    for which in old new; do
      bin="${!which}"
      settle
      timed "create $codec $which" "$bin" create -q --force --variant files --all-files \
        --compression "$codec" --files "$work/store" --output "$work/$which.$codec"
    done
    for which in old new; do
      bin="${!which}"
      settle
      timed "verify $codec $which" "$bin" verify -q "$work/$which.$codec"
    done
  done
done
