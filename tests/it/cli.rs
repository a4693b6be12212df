//! What every command does with a closed standard output and with `--dry-run`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::harness::{Db, tree_hashes};
use crate::restore::Env;
use crate::support::*;

/// Runs mxsnap with its stdout a pipe whose reader is closed before mxsnap writes anything.
fn with_closed_stdout(args: &[&str]) -> (i32, String) {
    let mut child = mxsnap_cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet_pipe_end(args: &[&str]) {
    let (code, stderr) = with_closed_stdout(args);
    assert_eq!(code, 141, "{args:?}: exit {code}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("error"), "{args:?}: {stderr}");
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A catalogue holding one snapshot of a fixture database: (repo, snapshot id).
fn catalogue(dir: &Path, db: &Db) -> (PathBuf, String) {
    let repo = dir.join("repo");
    let url = db.url();
    let store = store();
    let run = ok(mxsnap(&[
        "snapshots",
        "create",
        "--repo",
        repo.to_str().unwrap(),
        "--env",
        "Test",
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
        "--comment",
        "first",
    ]));
    (repo, run.stdout.trim().to_string())
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let sample = crate::harness::fixtures().join("sample-full.tar.gz");
    let sample = sample.to_str().unwrap();
    assert_quiet_pipe_end(&["inspect", sample]);
    assert_quiet_pipe_end(&["inspect", sample, "--json"]);
    assert_quiet_pipe_end(&["verify", sample]);
    assert_quiet_pipe_end(&["verify", sample, "--json"]);
    let store = store();
    let store = store.to_str().unwrap();
    assert_quiet_pipe_end(&["create", "--variant", "files", "--files", store, "-o", "-"]);

    let db = Db::with_fixture("pipes");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    assert_quiet_pipe_end(&["create", "--database", &url, "--files", store, "-o", "-"]);
    assert_quiet_pipe_end(&[
        "create",
        "--database",
        &url,
        "--files",
        store,
        "-o",
        out,
        "--json",
    ]);
    assert_eq!(
        dir_entries(dir.path()).len(),
        1,
        "only the one --json create's file"
    );
    let out = dir.path().join("not-written");
    let out = out.to_str().unwrap();
    assert_quiet_pipe_end(&[
        "create",
        "--database",
        &url,
        "--files",
        store,
        "-o",
        out,
        "--dry-run",
    ]);
    assert_quiet_pipe_end(&[
        "prepare-upload",
        "--database",
        &url,
        "--files",
        store,
        "-o",
        out,
        "--dry-run",
    ]);
    let (repo, id) = catalogue(dir.path(), &db);
    let repo = repo.to_str().unwrap();
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["show", &id],
        vec!["show", &id, "--json"],
        vec!["prune", "--dry-run"],
        vec!["download", &id, "-o", "-"],
        vec!["download", &id, "--variant", "database", "-o", "-"],
        vec!["download", &id, "--variant", "files", "-o", "-"],
        vec!["delete", &id, "--dry-run"],
    ] {
        let mut full = vec!["snapshots", args[0], "--repo", repo];
        full.extend_from_slice(&args[1..]);
        assert_quiet_pipe_end(&full);
    }
    let env = Env::new("pipes_restore");
    let files = env.files.to_str().unwrap().to_string();
    let target_url = env.db.url();
    assert_quiet_pipe_end(&[
        "restore",
        sample,
        "--database",
        &target_url,
        "--files",
        &files,
        "--dry-run",
    ]);
    env.assert_clean();
}

#[test]
fn dry_runs_of_create_prepare_and_the_catalogue_change_nothing() {
    let db = Db::with_fixture("dry_cli");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let store = store();
    let store_s = store.to_str().unwrap();
    let store_before = tree_hashes(&store);

    // create: the plan names the cloud's file, and nothing is written.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let out_s = out.to_str().unwrap();
    let run = ok(mxsnap(&[
        "create",
        "--database",
        &url,
        "--files",
        store_s,
        "-o",
        out_s,
        "--dry-run",
    ]));
    assert!(run.stdout.contains("files_and_database-"), "{}", run.stdout);
    assert!(run.stdout.contains("pg_dump --snapshot"), "{}", run.stdout);
    let json = ok(mxsnap(&[
        "create",
        "--database",
        &url,
        "--files",
        store_s,
        "-o",
        out_s,
        "--dry-run",
        "--json",
    ]))
    .json();
    assert_eq!(json["file_selection"], "referenced");
    assert!(json["steps"].as_array().unwrap().len() >= 3);
    assert!(
        dir_entries(&out).is_empty(),
        "create --dry-run wrote {:?}",
        dir_entries(&out)
    );
    // A plan still refuses what would fail: an unreachable database, a bad level.
    let bad = crate::harness::url_for("no_such_database");
    let run = mxsnap(&[
        "create",
        "--database",
        &bad,
        "--files",
        store_s,
        "-o",
        out_s,
        "--dry-run",
    ]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    let run = mxsnap(&[
        "create",
        "--variant",
        "files",
        "--files",
        store_s,
        "--level",
        "42",
        "-o",
        out_s,
        "--dry-run",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);

    // prepare-upload: not even its output directory is made.
    let upload = dir.path().join("upload");
    let run = ok(mxsnap(&[
        "prepare-upload",
        "--database",
        &url,
        "--files",
        store_s,
        "-o",
        upload.to_str().unwrap(),
        "--dry-run",
    ]));
    assert!(run.stdout.contains("check ok:"), "{}", run.stdout);
    assert!(run.stdout.contains(".backup"), "{}", run.stdout);
    assert!(
        !upload.exists(),
        "prepare-upload --dry-run made its output directory"
    );

    // snapshots create: not even the catalogue is made.
    let repo = dir.path().join("repo");
    let repo_s = repo.to_str().unwrap();
    let run = ok(mxsnap(&[
        "snapshots",
        "create",
        "--repo",
        repo_s,
        "--env",
        "Test",
        "--database",
        &url,
        "--files",
        store_s,
        "--dry-run",
    ]));
    assert!(
        run.stdout.contains("the catalogue is made first"),
        "{}",
        run.stdout
    );
    assert!(
        !repo.exists(),
        "snapshots create --dry-run made the catalogue"
    );

    let (repo, id) = catalogue(dir.path(), &db);
    let repo_s = repo.to_str().unwrap();
    let records = |repo: &Path| {
        let mut v = dir_entries(&repo.join("snapshots"));
        v.extend(dir_entries(&repo.join("archives")));
        v
    };
    let before = records(&repo);
    let show = || {
        ok(mxsnap(&[
            "snapshots",
            "show",
            "--repo",
            repo_s,
            &id,
            "--json",
        ]))
        .json()
    };
    let shown = show();

    let run = ok(mxsnap(&[
        "snapshots",
        "delete",
        "--repo",
        repo_s,
        &id,
        "--dry-run",
    ]));
    assert!(run.stdout.contains("delete snapshot"), "{}", run.stdout);
    let run = ok(mxsnap(&[
        "snapshots",
        "comment",
        "--repo",
        repo_s,
        &id,
        "changed",
        "--dry-run",
    ]));
    assert!(run.stdout.contains("\"changed\""), "{}", run.stdout);
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let run = ok(mxsnap(&[
        "snapshots",
        "download",
        "--repo",
        repo_s,
        &id,
        "--variant",
        "database",
        "-o",
        downloads.to_str().unwrap(),
        "--dry-run",
    ]));
    assert!(run.stdout.contains("db/db.backup"), "{}", run.stdout);
    assert!(
        dir_entries(&downloads).is_empty(),
        "download --dry-run wrote a file"
    );
    let run = ok(mxsnap(&[
        "snapshots",
        "prune",
        "--repo",
        repo_s,
        "--now",
        "2099-01-01T00:00:00Z",
        "--dry-run",
    ]));
    assert!(run.stdout.starts_with("delete"), "{}", run.stdout);

    assert_eq!(records(&repo), before, "a dry run changed the catalogue");
    assert_eq!(show(), shown, "a dry run changed the record");
    assert_eq!(tree_hashes(&store), store_before);
}

#[test]
fn a_local_environment_is_planned_made_stopped_and_started() {
    let dir = tempfile::tempdir().unwrap();
    let sample = crate::harness::fixtures().join("sample-full.tar.gz");
    let sample = sample.to_str().unwrap();
    let env_dir = dir.path().join("local-env");
    let env_s = env_dir.to_str().unwrap();

    // Planned only: nothing is made.
    let run = ok(mxsnap(&["restore", sample, "--into", env_s, "--dry-run"]));
    assert!(
        run.stdout.contains("make a local environment"),
        "{}",
        run.stdout
    );
    assert!(
        !env_dir.exists(),
        "restore --into --dry-run made the environment"
    );

    // Made, restored into, left running; the report says how to connect.
    let run = ok(mxsnap(&["restore", sample, "--into", env_s, "--json"]));
    let report = run.json();
    let port = report["local"]["port"].as_u64().unwrap();
    assert!(port > 0);
    assert_eq!(report["local"]["created"], true);
    assert!(
        report["local"]["password"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
    );
    let status = |args: &[&str]| {
        let mut v = vec!["env", "status", env_s, "--json"];
        v.extend_from_slice(args);
        ok(mxsnap(&v)).json()["running"].as_bool().unwrap()
    };
    assert!(status(&[]));
    assert_quiet_pipe_end(&["env", "status", env_s]);
    assert_quiet_pipe_end(&["env", "status", env_s, "--json"]);

    // A dry run of stop leaves it running; a real one stops it.
    let run = ok(mxsnap(&["env", "stop", env_s, "--dry-run"]));
    assert!(run.stdout.contains("stop PostgreSQL"), "{}", run.stdout);
    assert!(status(&[]), "env stop --dry-run stopped the server");
    ok(mxsnap(&["env", "stop", env_s]));
    assert!(!status(&[]));
    let run = ok(mxsnap(&["env", "start", env_s, "--dry-run"]));
    assert!(run.stdout.contains("start PostgreSQL"), "{}", run.stdout);
    assert!(!status(&[]), "env start --dry-run started the server");

    // Restoring into a stopped environment starts it (and asks first: data is replaced).
    let run = mxsnap(&["restore", sample, "--into", env_s]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert!(!status(&[]), "a refused restore started the server");
    ok(mxsnap(&["restore", sample, "--into", env_s, "--yes", "-q"]));
    assert!(status(&[]));
    ok(mxsnap(&["env", "stop", env_s]));
}
