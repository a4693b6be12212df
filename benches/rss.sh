#!/usr/bin/env bash
# Peak RSS of `mxsnap create` (files variant, gzip and zstd) and of restoring what it wrote,
# for growing stores: memory must stay flat as archives grow.
# Usage: benches/rss.sh [SIZE_MB ...]   (default: 1024 4096)
# The restores go into a managed local environment (--into: a private PostgreSQL cluster,
# stopped at the end), so the script needs PostgreSQL's server binaries, like the tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
. "$here/lib.sh"; bench_build
# Reachable by the postgres user, so the environment's cluster lives inside it.
work=$(mktemp -d /var/tmp/mxsnap-rss.XXXXXX); chmod 755 "$work"
cleanup() { bench_env_stop; rm -rf "$work"; }
trap cleanup EXIT
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1024 4096)
# Make the environment first (initdb's own memory would count in the first restore's peak).
bench_env "$work"
printf '%-9s %-6s %-8s %8s %10s\n' "store" "codec" "job" "seconds" "peak RSS"
for mb in "${sizes[@]}"; do
  python3 "$here/gen_store.py" "$work/s$mb" "$mb" > /dev/null 2>&1
  for codec in gzip zstd; do
    /usr/bin/time -f "%e %M" -o "$work/t" "$mx" create -q --force --variant files --all-files \
      --compression "$codec" --files "$work/s$mb" --output "$work/out"
    read -r secs kb < "$work/t"
    printf '%-9s %-6s %-8s %8s %9.1fM\n' "${mb}MiB" "$codec" create "$secs" "$(echo "$kb / 1024" | bc -l)"
    /usr/bin/time -f "%e %M" -o "$work/t" "$mx" restore -q --yes "$work/out" --into "$work/env"
    read -r secs kb < "$work/t"
    printf '%-9s %-6s %-8s %8s %9.1fM\n' "${mb}MiB" "$codec" restore "$secs" "$(echo "$kb / 1024" | bc -l)"
    rm -f "$work/out"
  done
  rm -rf "$work/s$mb"
done
