//! `mxsnap prepare-upload`: from an m2ee.yaml to what the cloud's upload accepts.

use std::path::{Path, PathBuf};

use crate::harness::{self, Db, tree_hashes};
use crate::support::*;

/// An app base with data/files (a copy of the fixture store) and an m2ee.yaml for `db`.
fn app(db: &Db, dir: &Path) -> PathBuf {
    let base = dir.join("app");
    let files = base.join("data/files");
    for (rel, _) in tree_hashes(&store()) {
        let to = files.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(store().join(&rel), &to).unwrap();
    }
    std::fs::create_dir_all(base.join(".m2ee")).unwrap();
    let s = harness::server();
    let yaml = std::fs::read_to_string(harness::fixtures().join("m2ee.yaml"))
        .unwrap()
        .replace("@APP_BASE@", base.to_str().unwrap())
        .replace("@DB_HOST@", &s.host)
        .replace("@DB_PORT@", &s.port.to_string())
        .replace("@DB_NAME@", &db.name)
        .replace("@DB_USER@", &s.user);
    let path = base.join("m2ee.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn an_m2ee_app_becomes_a_cloud_upload_that_verifies_and_restores() {
    let db = Db::with_fixture("upload");
    let dir = tempfile::tempdir().unwrap();
    let m2ee = app(&db, dir.path());
    let out = dir.path().join("upload");
    let run = ok(mxsnap(&[
        "prepare-upload",
        "--m2ee",
        m2ee.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--json",
    ]));
    let report = run.json();
    let full = PathBuf::from(report["full_snapshot"].as_str().unwrap());
    let dbfile = PathBuf::from(report["database_file"].as_str().unwrap());
    assert!(
        full.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("files_and_database-")
    );
    assert!(dbfile.extension().unwrap() == "backup");
    assert_eq!(report["files"]["included"], 45);
    assert_eq!(report["files"]["legacy_layout"], 3);
    assert_eq!(report["dump_archive_version"], "1.14.0");
    assert!(
        report["warnings"]
            .to_string()
            .contains("legacy numeric layout")
    );

    // Exactly the cloud's members, in the cloud's order.
    let names: Vec<String> = tool_ok("tar", &["-tzf", full.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names[0], ".metadata");
    assert_eq!(names[1], "db/db.backup");
    assert_eq!(names.len(), 2 + 45);
    assert!(names[2..].iter().all(|n| n.starts_with("tree/")));
    ok(mxsnap(&["verify", full.to_str().unwrap()]));
    ok(mxsnap(&["verify", dbfile.to_str().unwrap()]));

    // The database file is the same dump as the snapshot's (one consistent pair).
    let tar = gunzip(&std::fs::read(&full).unwrap());
    let inner = members(&tar)
        .into_iter()
        .find(|(n, _, _)| n == "db/db.backup")
        .unwrap()
        .1;
    assert_eq!(inner, std::fs::read(&dbfile).unwrap());

    // And it restores.
    let target = Db::new("upload_target");
    let files = dir.path().join("target/files");
    let url = target.url();
    ok(mxsnap(&[
        "restore",
        full.to_str().unwrap(),
        "--database",
        &url,
        "--files",
        files.to_str().unwrap(),
        "--yes",
    ]));
    assert_eq!(target.checksums(), db.checksums());
    assert_eq!(tree_hashes(&files).len(), 45);
}

#[test]
fn a_running_app_is_refused_unless_allowed() {
    let db = Db::with_fixture("upload_running");
    let dir = tempfile::tempdir().unwrap();
    let m2ee = app(&db, dir.path());
    // The pid file m2ee.yaml names holds a live process: this test.
    let pid_file = dir.path().join("app/.m2ee/m2ee.pid");
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    let out = dir.path().join("upload");
    let args = [
        "prepare-upload",
        "--m2ee",
        m2ee.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    let run = mxsnap(&args);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("app is running"), "{}", run.stderr);
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);
    let mut allowed = args.to_vec();
    allowed.push("--allow-running");
    let run = ok(mxsnap(&allowed));
    assert!(run.stdout.contains("--allow-running"), "{}", run.stdout);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[test]
fn a_pg_dump_newer_than_the_cloud_accepts_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let db = Db::with_fixture("upload_new");
    let dir = tempfile::tempdir().unwrap();
    let m2ee = app(&db, dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for program in ["pg_dump", "pg_restore"] {
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{program} (PostgreSQL) 17.2'; exit 0; fi\nexec {} \"$@\"\n",
            pg_tool(program)
        );
        std::fs::write(bin.join(program), script).unwrap();
        std::fs::set_permissions(bin.join(program), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let out = dir.path().join("upload");
    let run = mxsnap(&[
        "prepare-upload",
        "--m2ee",
        m2ee.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--pg-bin",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("1.15"), "{}", run.stderr);
    assert!(run.stderr.contains("--pg-bin"), "{}", run.stderr);
    assert!(!out.exists());
}

#[test]
fn a_bad_m2ee_yaml_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m2ee.yaml");
    std::fs::write(
        &path,
        "m2ee:\n  app_base: /srv/x\nmxruntime:\n  DatabaseHost: db:5432\n  DatabaseUserName: u\n",
    )
    .unwrap();
    let run = mxsnap(&[
        "prepare-upload",
        "--m2ee",
        path.to_str().unwrap(),
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("mxruntime.DatabaseName is missing"),
        "{}",
        run.stderr
    );
}
