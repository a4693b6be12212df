#!/usr/bin/env bash
# Makes the seed corpus in fuzz/corpus/ from small inputs: tiny archives of every codec and
# variant mxsnap writes, their members, the cloud's .metadata example and an m2ee.yaml.
# Needs a built mxsnap (target/debug) and pg_dump's header from fixtures/sample-full.tar.gz.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; root="$(dirname "$here")"
mx="$root/target/debug/mxsnap"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
c="$here/corpus"; rm -rf "$c"; mkdir -p "$c"/{detect,read_archive,read_zip,manifest,metadata,dump_header,m2ee}
mkdir -p "$work/store/aa/bb" "$work/store/00"
echo "one" > "$work/store/aa/bb/aabbcccc-0000-4000-8000-000000000000"
printf 'two\n' > "$work/store/00/7"
for codec in gzip zstd none; do
  "$mx" create -q --variant files --all-files --files "$work/store" --compression "$codec" \
    --output "$c/read_archive/files.$codec"
done
"$mx" create -q --variant files --all-files --files "$work/store" --strict-layout \
  --output "$c/read_archive/strict.gzip"
tar -xzf "$root/fixtures/sample-full.tar.gz" -C "$work" db/db.backup .metadata
head -c 4096 "$work/db/db.backup" > "$c/dump_header/sample"
head -c 4096 "$work/db/db.backup" | gzip > "$c/detect/dump.gz"
cp "$work/.metadata" "$c/metadata/sample"
printf '%s' '{"duration":"0","dumpSize":"94769","modelVersion":"1.0.0.40","databaseSize":"9730584","filesSize":"1346575"}' > "$c/metadata/cloud"
# A small full archive: .metadata, the first 4 KiB of a dump (a cut dump is still a member).
mkdir -p "$work/full/db"; cp "$work/.metadata" "$work/full/"; cp "$c/dump_header/sample" "$work/full/db/db.backup"
tar -czf "$c/read_archive/full-stock.tar.gz" -C "$work/full" .metadata db
tar -xzf "$c/read_archive/files.gzip" -C "$work" .mxsnap-manifest
cp "$work/.mxsnap-manifest" "$c/manifest/files"
cp "$c/read_archive/files.gzip" "$c/read_archive/files.zstd" "$c/detect/"
cat > "$c/m2ee/shop.yaml" <<'YAML'
m2ee:
  app_name: Shop
  app_base: /srv/shop
  pidfile: /srv/shop/.m2ee/m2ee.pid
mxruntime:
  DatabaseType: PostgreSQL
  DatabaseHost: "db.internal:5433"
  DatabaseName: shop
  DatabaseUserName: shop
  DatabasePassword: "it's secret"
YAML
# Zips of uploaded files: both layouts, stored and deflated, and hostile ones.
python3 - "$c/read_zip" <<'PY'
import sys, zipfile, os
d = sys.argv[1]
u = "aa/bb/aabbcccc-0000-4000-8000-000000000000"
def mk(name, entries, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(os.path.join(d, name), "w", method) as z:
        for n, data in entries:
            z.writestr(n, data)
mk("bare.zip", [("aa/", ""), (u, "one\n"), ("00/7", "two\n")])
mk("tree.zip", [("tree/" + u, "one\n" * 50)])
mk("stored.zip", [(u, "one\n"), ("00/7", "")], zipfile.ZIP_STORED)
mk("climb.zip", [("../evil", "x")])
mk("dup.zip", [(u, "a"), ("tree/" + u, "b")])
with zipfile.ZipFile(os.path.join(d, "link.zip"), "w") as z:
    i = zipfile.ZipInfo(u); i.external_attr = (0o120777 << 16); z.writestr(i, "/etc/passwd")
# zipfile will not write the encryption flag: set it in the local and central headers.
mk("encrypted-flag.zip", [(u, "xxxxxxxxxxxxone")], zipfile.ZIP_STORED)
b = bytearray(open(os.path.join(d, "encrypted-flag.zip"), "rb").read())
b[6] |= 1; b[b.rfind(b"PK\x01\x02") + 8] |= 1
open(os.path.join(d, "encrypted-flag.zip"), "wb").write(b)
PY
cp "$c/read_zip/bare.zip" "$c/detect/"
ls -R "$c" | head -40
# What the fuzzers found is added beside the seeds (30 inputs a target, named by their hash):
#   cargo fuzz run -s none -O TARGET /tmp/TARGET fuzz/corpus/TARGET -- -max_total_time=600
#   then copy a sample of /tmp/TARGET into fuzz/corpus/TARGET.
