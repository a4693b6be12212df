# Shared set-up of the bench scripts; sourced, not run. Needs $root (the checkout) set.
#
#   bench_build                 release build; sets $mx
#   bench_cluster WORK          a throwaway PostgreSQL cluster in WORK/pg, served on a socket;
#                               exports PGHOST/PGUSER/PGPORT, sets $bin; bench_cluster_stop
#   bench_env WORK              a managed local environment in WORK/env (mxsnap's own cluster);
#                               sets $env_url (postgresql://user:pass@host:port); bench_env_stop
#   bench_settle PATH...        dirty pages written, the page cache emptied (as root), then
#                               every file under PATH... read back in
#   bench_cpu_ticks             the whole machine's CPU time so far, in clock ticks
#   bench_serve WORK DB FILES   `mxsnap serve` on a loopback port for one environment (app
#                               "bench", Acceptance) over DB and FILES; sets $pid, $serve_url,
#                               $bench_key; stop with kill "$pid"

bench_build() {
  (cd "$root" && cargo build --release --quiet)
  mx="$root/target/release/mxsnap"
}

bench_cluster() {
  local work=$1
  bin=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
  as_pg=(); [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
  mkdir -p "$work/pg"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/pg"
  "${as_pg[@]}" "$bin/initdb" -A trust -U postgres -E UTF8 --locale=C --no-sync -D "$work/pg/data" >/dev/null
  "${as_pg[@]}" "$bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
    -o "-k $work/pg -c listen_addresses='' -p 5432 -c max_wal_size=4GB" start >/dev/null
  export PGHOST="$work/pg" PGUSER=postgres PGPORT=5432
  bench_cluster_dir=$work/pg
}

bench_cluster_stop() {
  [ -n "${bench_cluster_dir:-}" ] || return 0
  "${as_pg[@]}" "$bin/pg_ctl" -D "$bench_cluster_dir/data" -m immediate stop >/dev/null 2>&1 || true
}

bench_env() {
  local work=$1
  # The environment is made by restoring a one-file snapshot into it.
  mkdir -p "$work/tiny/aa/bb"; echo tiny > "$work/tiny/aa/bb/aabbcccc-0000-4000-8000-000000000000"
  "$mx" create -q --variant files --all-files --files "$work/tiny" --output "$work/tiny.tar.gz"
  "$mx" restore -q --yes "$work/tiny.tar.gz" --into "$work/env"
  env_url=$("$mx" env status "$work/env" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["settings"]; print("postgresql://%s:%s@%s:%d" % (s["user"], s.get("password") or "", s["host"], s["port"]))')
  bench_env_dir=$work/env
}

bench_env_stop() {
  [ -n "${bench_env_dir:-}" ] || return 0
  "$mx" env stop "$bench_env_dir" >/dev/null 2>&1 || true
}

bench_serve() {
  local work=$1 database=$2 files=$3
  bench_key=bench-key-$$
  cat > "$work/serve.toml" <<END
listen = "127.0.0.1:0"
repo = "$work/repo"
[[apps]]
id = "bench"
[[apps.environments]]
mode = "Acceptance"
database = "$database"
files = "$files"
[[users]]
name = "bench@example.com"
key_sha256 = "$(echo "$bench_key" | "$mx" serve hash-key)"
environments = ["*"]
END
  chmod 600 "$work/serve.toml"
  "$mx" serve --config "$work/serve.toml" 2> "$work/serve.log" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/serve.log" && break; sleep 0.1; done
  serve_url=$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1)
  [ -n "$serve_url" ] || { echo "bench: mxsnap serve did not start:" >&2; cat "$work/serve.log" >&2; return 1; }
}

# bench_app_db DB UUIDS SCALE: a database like an app's in the cluster: pgbench tables at
# SCALE (about 15 MiB each) and a system$filedocument row for each UUID in the file UUIDS.
bench_app_db() {
  local db=$1 uuids=$2 scale=$3
  "$bin/psql" -X -q -d postgres -c "CREATE DATABASE $db"
  "$bin/pgbench" -i -q -s "$scale" "$db" 2>/dev/null
  "$bin/psql" -X -q -d "$db" -c 'CREATE TABLE "system$filedocument" (id bigserial PRIMARY KEY, "__uuid__" varchar(36), "__filename__" bigint, hascontents boolean, deleteafterdownload boolean)'
  awk '{print $1"\t"NR"\tt\tf"}' "$uuids" | "$bin/psql" -X -q -d "$db" -c '\copy "system$filedocument" ("__uuid__", "__filename__", hascontents, deleteafterdownload) FROM STDIN'
  "$bin/psql" -X -q -d "$db" -c 'VACUUM ANALYZE'
}

# bench_time OUT CMD: runs CMD under GNU time; OUT gets "seconds peak_kib cpu_seconds"
# (user + system, children included).
bench_time() {
  local out=$1 cmd=$2
  /usr/bin/time -f "%e %M %U %S" -o "$out.raw" bash -c "$cmd" >/dev/null
  awk '{ printf "%s %s %.2f\n", $1, $2, $3 + $4 }' "$out.raw" > "$out"
}

# Every measured run starts from the same memory state: dirty pages written, the page cache
# emptied (when root may), then the run's inputs read back in. Without it, later runs pay for
# reclaiming the cache that earlier runs filled, and this machine pages out what has been
# idle for a minute, so whichever job ran first would read cold inputs.
bench_settle() {
  sync
  [ -w /proc/sys/vm/drop_caches ] || return 0
  echo 1 > /proc/sys/vm/drop_caches
  find "$@" -type f -print0 | xargs -0 cat > /dev/null 2>&1 || true
}

# Whole-machine CPU time so far, in clock ticks: user, nice, system, irq and softirq of every
# process, the server's backends and the kernel's writeback included (/proc/stat).
bench_cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
