//! Archives put together by stock tools only (GNU tar, gzip, pg_dump), never by mxsnap, with the
//! liberties others take: each verifies and restores, saying what differs.

use std::path::Path;
use std::process::Command;

use crate::harness::{Db, tree_hashes};
use crate::restore::Env;
use crate::support::*;

/// The cloud's `.metadata` with the two size values as given, JSON text and all (`"12"` is a
/// string, `12` a number): for the cases that write them as others do.
fn cloud_meta(dump: &str, files: &str) -> Vec<u8> {
    format!(
        r#"{{"duration":"0","dumpSize":{dump},"modelVersion":"1.0.0.40","databaseSize":"9730584","filesSize":{files}}}"#
    )
    .into_bytes()
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Verifies `archive` (exit 0), then restores it into a fresh environment and compares rows
/// and files with `db`; returns verify's stdout (its warnings).
fn verifies_and_restores(db: &Db, archive: &Path, tag: &str) -> String {
    let run = mxsnap(&["verify", archive.to_str().unwrap()]);
    assert_eq!(
        run.code, 0,
        "{tag}: verify failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let env = Env::new(tag);
    ok(env.restore(archive, &[]));
    assert_eq!(env.state().0, db.checksums(), "{tag}: rows differ");
    let want: Vec<String> = expected_tree(db);
    let got = tree_hashes(&env.files);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        want,
        "{tag}: files differ"
    );
    env.assert_clean();
    run.stdout
}

#[test]
fn metadata_as_others_write_it_is_accepted_with_what_differs_named() {
    let db = Db::with_fixture("foreign_meta");
    type Meta = Box<dyn Fn(u64, u64) -> Option<Vec<u8>>>;
    let cases: Vec<(&str, Meta, &[&str])> = vec![
        (
            // filesSize as disk usage with the directories, as `du -sb tree` counts it.
            "du",
            Box::new(|d, f| {
                Some(cloud_meta(
                    &format!("\"{d}\""),
                    &format!("\"{}\"", f + 4096 * 30),
                ))
            }),
            &["filesSize", "tree/ holds"],
        ),
        (
            "numbers",
            Box::new(|d, f| Some(cloud_meta(&d.to_string(), &f.to_string()))),
            &["dumpSize is a number"],
        ),
        (
            "keys",
            Box::new(|d, f| {
                Some(
                    format!(r#"{{"dumpSize":"{d}","filesSize":"{f}","region":"eu-central-1"}}"#)
                        .into_bytes(),
                )
            }),
            &["modelVersion is missing", "unknown key(s) region"],
        ),
        (
            "empty",
            Box::new(|_, _| Some(Vec::new())),
            &[".metadata is empty"],
        ),
        ("absent", Box::new(|_, _| None), &["no .metadata"]),
    ];
    for (tag, meta, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = cloud_snapshot_dir(&db, dir.path(), meta);
        let archive = dir.path().join("snap.tar.gz");
        let members = if root.join(".metadata").exists() {
            ".metadata db tree"
        } else {
            "db tree"
        };
        sh(&format!(
            "tar -czf {} -C {} {members}",
            archive.display(),
            root.display()
        ));
        let stdout = verifies_and_restores(&db, &archive, &format!("foreign_{tag}"));
        for want in says {
            assert!(
                stdout.contains(want),
                "{tag}: verify does not say {want:?}:\n{stdout}"
            );
        }
        assert!(stdout.contains("accepted"), "{tag}: {stdout}");
    }
}

#[test]
fn stock_tar_and_gzip_variations_verify_and_restore() {
    let db = Db::with_fixture("foreign_tar");
    let cases = [
        // pax headers (extended attributes of each member).
        ("pax", "tar --format=pax -czf {a} -C {r} .metadata db tree"),
        // GNU format, with the record padding GNU tar adds after the end blocks.
        (
            "gnu",
            "tar --format=gnu -b 20 -czf {a} -C {r} .metadata db tree",
        ),
        // "./" names and directory entries.
        ("dot", "tar -czf {a} -C {r} ."),
        // gzip remembering the tar's file name in its header.
        (
            "gzipname",
            "tar -cf {d}/snap.tar -C {r} .metadata db tree && gzip -N -c {d}/snap.tar > {a}",
        ),
        // Two gzip members, the tar split between them at an arbitrary byte.
        (
            "members",
            "tar -cf {d}/snap.tar -C {r} .metadata db tree && head -c 70001 {d}/snap.tar | gzip \
             > {a} && tail -c +70002 {d}/snap.tar | gzip >> {a}",
        ),
    ];
    for (tag, script) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = cloud_snapshot_dir(&db, dir.path(), |d, f| Some(cloud_metadata(d, f)));
        let archive = dir.path().join("snap.tar.gz");
        sh(&script
            .replace("{a}", archive.to_str().unwrap())
            .replace("{r}", root.to_str().unwrap())
            .replace("{d}", dir.path().to_str().unwrap()));
        let stdout = verifies_and_restores(&db, &archive, &format!("foreign_{tag}"));
        assert!(stdout.contains("no manifest present"), "{tag}: {stdout}");
    }
}

#[test]
fn members_in_another_order_verify_and_restore_with_a_warning() {
    let db = Db::with_fixture("foreign_order");
    let dir = tempfile::tempdir().unwrap();
    let root = cloud_snapshot_dir(&db, dir.path(), |d, f| Some(cloud_metadata(d, f)));
    let archive = dir.path().join("snap.tar.gz");
    sh(&format!(
        "tar -czf {} -C {} tree db .metadata",
        archive.display(),
        root.display()
    ));
    let stdout = verifies_and_restores(&db, &archive, "foreign_order_target");
    assert!(stdout.contains("not in the cloud's order"), "{stdout}");
}

#[test]
fn a_database_only_backup_with_pg_dumps_own_compression_restores() {
    let db = Db::with_fixture("foreign_db");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("database-fc9e126f-201811210121.backup");
    // pg_dump's default for the custom format compresses the data.
    tool_ok(
        &pg_tool("pg_dump"),
        &["-O", "-x", "-Fc", "-f", dump.to_str().unwrap(), &db.url()],
    );
    let inspected = ok(mxsnap(&["inspect", dump.to_str().unwrap(), "--json"])).json();
    assert_eq!(inspected["variant"], "database");
    assert_ne!(inspected["dump"]["compression"], "none", "{inspected}");
    ok(mxsnap(&["verify", dump.to_str().unwrap()]));
    let env = Env::new("foreign_db_target");
    let files_before = tree_hashes(&env.files);
    ok(env.restore(&dump, &[]));
    assert_eq!(env.state().0, db.checksums());
    assert_eq!(
        tree_hashes(&env.files),
        files_before,
        "the files were touched"
    );
}

/// Rewrites the tar in `src` with a GNU long-name header (`././@LongLink`, type `L`) before
/// every file of `tree/`, whose own 100-byte name field then says only `tree/placeholder`: a
/// reader that ignored the long name would see a name outside the layout. With `hostile`, the
/// long name climbs out of the target instead.
fn with_gnu_long_names(src: &Path, dst: &Path, hostile: bool) {
    let script = r#"import tarfile, sys, gzip
src, dst, hostile = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def pad(b): return b + b"\0" * (-len(b) % 512)
out = bytearray()
with tarfile.open(src) as t:
    for m in t.getmembers():
        data = t.extractfile(m).read() if m.isfile() else b""
        if m.isfile() and m.name.startswith("tree/"):
            name = m.name
            if hostile:
                name = "tree/" + "x/" * 50 + "../" * 52 + "etc/evil"
            ln = tarfile.TarInfo("././@LongLink")
            ln.type = tarfile.GNUTYPE_LONGNAME
            payload = name.encode() + b"\0"
            ln.size = len(payload)
            out += ln.tobuf(tarfile.GNU_FORMAT) + pad(payload)
            m.name = "tree/placeholder"
        out += m.tobuf(tarfile.GNU_FORMAT) + pad(data)
out += b"\0" * 1024
open(dst, "wb").write(gzip.compress(bytes(out)))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(src)
        .arg(dst)
        .arg(if hostile { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gnu_long_name_headers_are_read_and_a_hostile_long_name_is_refused() {
    let db = Db::with_fixture("foreign_long");
    let dir = tempfile::tempdir().unwrap();
    let (plain, _) = cloud_shaped_archive(&db, dir.path(), TarStyle::Named);
    let long = dir.path().join("long.tar.gz");
    with_gnu_long_names(&plain, &long, false);
    // GNU tar reads the long names too
    let listed = tool_ok("tar", &["-tzf", long.to_str().unwrap()]);
    assert!(!listed.contains("placeholder"), "{listed}");
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.starts_with("tree/") && !l.ends_with('/'))
            .count(),
        expected_tree(&db).len()
    );
    verifies_and_restores(&db, &long, "foreign_long_target");

    let hostile = dir.path().join("hostile.tar.gz");
    with_gnu_long_names(&plain, &hostile, true);
    let env = Env::new("foreign_long_hostile");
    let before = env.state();
    let run = mxsnap(&["verify", hostile.to_str().unwrap()]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("climbs out"), "{}", run.stderr);
    let run = env.restore(&hostile, &[]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(env.state(), before);
    env.assert_clean();
}
