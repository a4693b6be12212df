//! `mxsnap create`: every variant and codec, read back with stock tools.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::{Db, tree_hashes};
use crate::support::*;

/// The fixture's truth, from fixtures/generate.py.
const REFERENCED: u64 = 50;
const INCLUDED: u64 = 45;
const MISSING: u64 = 1;
const ORPHANED: u64 = 1;
const DELETE_AFTER_DOWNLOAD: u64 = 4;
const LEGACY: u64 = 3;

fn list_tar(archive: &Path, codec_flag: &str) -> Vec<String> {
    tool_ok("tar", &[codec_flag, "-tf", archive.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect()
}

/// create → GNU tar lists exactly the cloud's members in order → stock pg_restore reads the
/// dump → a restore by hand reproduces every row and every file byte for byte.
fn full_round_trip(compression: &str, ext: &str, codec_flag: &str) {
    let db = Db::with_fixture("full");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!("snap.{ext}"));
    let run = ok(create(
        &db,
        &archive,
        &[
            "--compression",
            compression,
            "--model-version",
            "1.2.3.4",
            "--json",
        ],
    ));
    let report = run.json();
    assert_eq!(report["variant"], "full");

    let expected = expected_tree(&db);
    assert_eq!(expected.len() as u64, INCLUDED);
    let mut want = vec![".metadata".to_string(), "db/db.backup".to_string()];
    want.extend(expected.iter().map(|r| format!("tree/{r}")));
    want.push(".mxsnap-manifest".to_string());
    assert_eq!(list_tar(&archive, codec_flag), want);

    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    tool_ok(
        "tar",
        &[
            codec_flag,
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            out.to_str().unwrap(),
        ],
    );
    let dump = out.join("db/db.backup");
    let listing = tool_ok(&pg_tool("pg_restore"), &["--list", dump.to_str().unwrap()]);
    assert!(listing.contains("system$filedocument"), "{listing}");

    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(".metadata")).unwrap()).unwrap();
    let dump_len = std::fs::metadata(&dump).unwrap().len();
    assert_eq!(metadata["dumpSize"], dump_len.to_string());
    assert_eq!(metadata["modelVersion"], "1.2.3.4");
    let files_size: u64 = expected
        .iter()
        .map(|r| std::fs::metadata(store().join(r)).unwrap().len())
        .sum();
    assert_eq!(metadata["filesSize"], files_size.to_string());
    assert!(
        metadata["databaseSize"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 1_000_000
    );

    let restored = restore_by_hand(&dump, "restored");
    assert_eq!(restored.checksums(), db.checksums());
    assert!(db.checksums().len() >= 5);

    let got = tree_hashes(&out.join("tree"));
    let source = tree_hashes(&store());
    let want_files: std::collections::BTreeMap<_, _> = source
        .into_iter()
        .filter(|(rel, _)| expected.contains(rel))
        .collect();
    assert_eq!(got.len() as u64, INCLUDED);
    assert_eq!(got, want_files);
}

#[test]
fn full_gzip_round_trip_with_stock_tools() {
    full_round_trip("gzip", "tar.gz", "-z");
    // The parallel encoder's members form one standard gzip stream.
    let db = Db::with_fixture("gzipt");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.gz");
    ok(create(&db, &archive, &[]));
    tool_ok("gzip", &["-t", archive.to_str().unwrap()]);
}

#[test]
fn full_zstd_round_trip_with_stock_tools() {
    full_round_trip("zstd", "tar.zst", "--zstd");
}

#[test]
fn full_uncompressed_round_trip_with_stock_tools() {
    full_round_trip("none", "tar", "--no-auto-compress");
}

#[test]
fn database_only_is_a_bare_dump_that_pg_restore_reads() {
    let db = Db::with_fixture("dbonly");
    let dir = tempfile::tempdir().unwrap();
    let run = ok(mxsnap(&[
        "create",
        "--database",
        &db.url(),
        "--variant",
        "database",
        "--output",
        dir.path().to_str().unwrap(),
        "--json",
    ]));
    let path = run.json()["output"].as_str().unwrap().to_string();
    let name = Path::new(&path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        name.starts_with("database-") && name.ends_with(".backup") && name.len() == 37,
        "{name}"
    );
    assert_eq!(&std::fs::read(&path).unwrap()[..5], b"PGDMP");
    let restored = restore_by_hand(Path::new(&path), "dbonly_restored");
    assert_eq!(restored.checksums(), db.checksums());
}

#[test]
fn files_only_holds_the_referenced_tree_and_nothing_else() {
    let db = Db::with_fixture("filesonly");
    for (compression, flag) in [("gzip", "-z"), ("zstd", "--zstd")] {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("files.tar");
        ok(create(
            &db,
            &archive,
            &["--variant", "files", "--compression", compression],
        ));
        let mut want: Vec<String> = expected_tree(&db)
            .iter()
            .map(|r| format!("tree/{r}"))
            .collect();
        want.push(".mxsnap-manifest".into());
        assert_eq!(list_tar(&archive, flag), want);
        ok(mxsnap(&["verify", archive.to_str().unwrap()]));
    }
}

#[test]
fn referenced_file_counts_match_the_fixture_truth() {
    let db = Db::with_fixture("counts");
    let dir = tempfile::tempdir().unwrap();
    let run = ok(create(&db, &dir.path().join("a.tar.gz"), &["--json"]));
    let files = &run.json()["files"];
    assert_eq!(files["referenced"], REFERENCED);
    assert_eq!(files["included"], INCLUDED);
    assert_eq!(files["missing"], MISSING);
    assert_eq!(files["orphaned"], ORPHANED);
    assert_eq!(files["delete_after_download"], DELETE_AFTER_DOWNLOAD);
    assert_eq!(files["legacy_layout"], LEGACY);
    assert_eq!(run.json()["file_selection"], "referenced");
    let warnings = run.json()["warnings"].to_string();
    assert!(
        warnings.contains("1 referenced file(s) are missing"),
        "{warnings}"
    );
}

#[test]
fn without_filedocument_table_the_whole_store_is_packed() {
    let db = Db::new("plain");
    db.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    let dir = tempfile::tempdir().unwrap();
    let run = ok(create(&db, &dir.path().join("a.tar.gz"), &["--json"]));
    let json = run.json();
    assert_eq!(json["file_selection"], "all");
    // Every file of the store: 46 + 3 legacy + 1 orphan.
    assert_eq!(json["files"]["included"], 50);
    assert!(
        json["warnings"]
            .to_string()
            .contains("no system$filedocument")
    );
}

#[test]
fn output_directory_gets_the_cloud_name_and_mode_0600() {
    let db = Db::with_fixture("naming");
    let dir = tempfile::tempdir().unwrap();
    for (compression, suffix) in [("gzip", ".tar.gz"), ("zstd", ".tar.zst")] {
        let run = ok(create(
            &db,
            dir.path(),
            &["--compression", compression, "--json", "--variant", "files"],
        ));
        let path = run.json()["output"].as_str().unwrap().to_string();
        let name = Path::new(&path).file_name().unwrap().to_str().unwrap();
        let parts: Vec<&str> = name.trim_end_matches(suffix).split('-').collect();
        assert_eq!(parts[0], "files", "{name}");
        assert!(parts[1].len() == 8 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(parts[2].len() == 12 && parts[2].bytes().all(|b| b.is_ascii_digit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let run = ok(create(&db, dir.path(), &["--json"]));
    let name = run.json()["output"].as_str().unwrap().to_string();
    assert!(name.contains("/files_and_database-") && name.ends_with(".tar.gz"));
    // Nothing else is left behind: no spool, no partial file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn strict_layout_writes_only_the_cloud_members() {
    let db = Db::with_fixture("strict");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("s.tar.gz");
    ok(create(&db, &archive, &["--strict-layout"]));
    let names = list_tar(&archive, "-z");
    assert_eq!(names[0], ".metadata");
    assert_eq!(names[1], "db/db.backup");
    assert!(names[2..].iter().all(|n| n.starts_with("tree/")));
    let run = ok(mxsnap(&["verify", archive.to_str().unwrap()]));
    assert!(run.stdout.contains("no manifest"), "{}", run.stdout);
}

#[test]
fn an_archive_streamed_to_stdout_verifies_from_stdin() {
    let db = Db::with_fixture("stream");
    let url = db.url();
    let store = store();
    let mut create = mxsnap_cmd(&[
        "create",
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
        "--output",
        "-",
        "--compression",
        "zstd",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let verify = mxsnap_cmd(&["verify", "-", "--json"])
        .stdin(create.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(create.wait().unwrap().success());
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(json["variant"], "full");
    assert_eq!(json["compression"], "zstd");
    assert_eq!(json["tree_files"], INCLUDED);
    assert_eq!(json["manifest"], true);
}

/// A --pg-bin directory whose pg_dump and pg_restore log their argv and environment names,
/// then run the real programs.
fn logging_pg_bin(dir: &Path, fake_version: Option<&str>) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for program in ["pg_dump", "pg_restore"] {
        let real = pg_tool(program);
        let version = match fake_version {
            Some(v) => format!(
                "if [ \"$1\" = --version ]; then echo '{program} (PostgreSQL) {v}'; exit 0; fi\n"
            ),
            None => String::new(),
        };
        let script = format!(
            "#!/bin/sh\necho \"$0 $*\" >> {log}\n{version}exec {real} \"$@\"\n",
            log = dir.join("argv.log").display()
        );
        let path = bin.join(program);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn the_password_never_reaches_a_child_argv_or_a_message() {
    let db = Db::with_fixture("secret");
    let dir = tempfile::tempdir().unwrap();
    let bin = logging_pg_bin(dir.path(), None);
    // Trust authentication accepts any password, so it is carried but not needed.
    let url = format!("{}&password=Sup3rS3cret", db.url());
    let store = store();
    let archive = dir.path().join("a.tar.gz");
    let run = ok(mxsnap(&[
        "create",
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
        "--output",
        archive.to_str().unwrap(),
        "--pg-bin",
        bin.to_str().unwrap(),
    ]));
    let log = std::fs::read_to_string(dir.path().join("argv.log")).unwrap();
    assert!(log.contains("pg_dump"), "{log}");
    assert!(!log.contains("Sup3rS3cret"), "{log}");
    assert!(!run.stderr.contains("Sup3rS3cret"));
    // And not in an error either: a database that does not exist.
    let bad = url.replace(&db.name, "no_such_db");
    let run = mxsnap(&[
        "create",
        "--database",
        &bad,
        "--variant",
        "database",
        "--output",
        archive.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("no_such_db"), "{}", run.stderr);
    assert!(!run.stderr.contains("Sup3rS3cret"), "{}", run.stderr);
}

#[test]
fn a_client_older_than_the_server_is_refused() {
    let db = Db::with_fixture("oldclient");
    let dir = tempfile::tempdir().unwrap();
    let bin = logging_pg_bin(dir.path(), Some("9.6.24"));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let run = create(&db, &out, &["--pg-bin", bin.to_str().unwrap()]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("older than the PostgreSQL"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--pg-bin"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn a_failed_create_leaves_no_file_behind() {
    let db = Db::with_fixture("fail");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // A pg_dump that reports the right version but dies half-way, as on a full disk.
    let real = pg_tool("pg_dump");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\n\
         echo 'pg_dump: error: could not write to output file: No space left on device' >&2\nexit 1\n"
    );
    std::fs::write(bin.join("pg_dump"), script).unwrap();
    std::fs::set_permissions(bin.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(pg_tool("pg_restore"), bin.join("pg_restore")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("snap.tar.gz");
    let run = create(&db, &target, &["--pg-bin", bin.to_str().unwrap()]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("No space left"), "{}", run.stderr);
    assert!(run.stderr.contains("hint"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "partial file left"
    );
}

/// A --pg-bin whose pg_dump sleeps first, so the files are packed (and spilled) before the
/// dump exists, then runs the real pg_dump or, with `fail`, dies.
fn slow_pg_bin(dir: &Path, fail: bool) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = pg_tool("pg_dump");
    let then = if fail {
        "echo 'pg_dump: error: query failed: server closed the connection unexpectedly' >&2; exit 1"
            .to_string()
    } else {
        format!("exec {real} \"$@\"")
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\nsleep 1\n{then}\n"
    );
    std::fs::write(bin.join("pg_dump"), script).unwrap();
    std::fs::set_permissions(bin.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(pg_tool("pg_restore"), bin.join("pg_restore")).unwrap();
    bin
}

/// The files are packed while pg_dump runs; a dump that ends after them still leads the
/// archive, and one that fails leaves nothing behind (neither output nor spill).
#[test]
fn a_dump_that_ends_after_the_files_still_leads_the_archive() {
    let db = Db::with_fixture("slowdump");
    for compression in ["gzip", "zstd", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let bin = slow_pg_bin(dir.path(), false);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let archive = out.join("snap.tar");
        ok(create(
            &db,
            &archive,
            &[
                "--pg-bin",
                bin.to_str().unwrap(),
                "--compression",
                compression,
            ],
        ));
        let names = tool_ok("tar", &["-taf", archive.to_str().unwrap()]);
        let names: Vec<&str> = names.lines().collect();
        assert_eq!(names[..2], [".metadata", "db/db.backup"], "{compression}");
        assert_eq!(names.len() as u64, INCLUDED + 3, "{compression}");
        ok(mxsnap(&["verify", archive.to_str().unwrap()]));
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "{compression}");

        let dir = tempfile::tempdir().unwrap();
        let bin = slow_pg_bin(dir.path(), true);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let run = create(
            &db,
            &out.join("snap.tar.gz"),
            &["--pg-bin", bin.to_str().unwrap()],
        );
        assert_eq!(run.code, 5, "{}", run.stderr);
        assert!(
            run.stderr.contains("server closed the connection"),
            "{}",
            run.stderr
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "left behind");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = mxsnap(&[
        "create",
        "--output",
        dir.path().to_str().unwrap(),
        "--variant",
        "files",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--files"), "{}", run.stderr);
    let run = mxsnap(&["create", "--output", "x", "--compression", "lzma"]);
    assert_eq!(run.code, 2);
    let run = mxsnap(&[
        "create",
        "--output",
        "x",
        "--variant",
        "files",
        "--files",
        ".",
        "--level",
        "42",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}
