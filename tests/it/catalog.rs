//! `mxsnap snapshots`: the catalogue, its API v1 output, downloads, restores and pruning.

use std::path::{Path, PathBuf};

use crate::harness::{self, Db, tree_hashes};
use crate::support::*;

fn repo_args<'a>(repo: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["snapshots", rest[0], "--repo", repo.to_str().unwrap()];
    v.extend_from_slice(&rest[1..]);
    v
}

fn snap(repo: &Path, db: &Db, env: &str, extra: &[&str]) -> String {
    let url = db.url();
    let store = store();
    let mut args = repo_args(
        repo,
        &[
            "create",
            "--env",
            env,
            "--database",
            &url,
            "--files",
            store.to_str().unwrap(),
        ],
    );
    args.extend_from_slice(extra);
    ok(mxsnap(&args)).stdout.trim().to_string()
}

#[test]
fn snapshots_are_listed_shown_commented_and_deleted_with_api_v1_fields() {
    let db = Db::with_fixture("cat");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let a = snap(
        &repo,
        &db,
        "Production",
        &[
            "--comment",
            "before release",
            "--model-version",
            "1.0.11.50",
        ],
    );
    let b = snap(&repo, &db, "Production", &["--nightly"]);
    let c = snap(&repo, &db, "Test", &[]);

    let list = ok(mxsnap(&repo_args(
        &repo,
        &["list", "--env", "Production", "--json"],
    )))
    .json();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2);
    let first = items[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Comment",
            "CreatedOn",
            "ExpiresOn",
            "ModelVersion",
            "SnapshotID",
            "State"
        ]
    );
    assert_eq!(first["SnapshotID"], a);
    assert_eq!(first["Comment"], "before release");
    assert_eq!(first["State"], "Completed");
    assert_eq!(first["ModelVersion"], "1.0.11.50");
    let created = first["CreatedOn"].as_i64().unwrap();
    let expires = first["ExpiresOn"].as_i64().unwrap();
    // Manual: about three months (89 to 92 days).
    let days = (expires - created) / 86_400_000;
    assert!((89..=92).contains(&days), "{days}");
    // The nightly made today is kept two weeks, or longer if today is a Sunday.
    let nightly = &items[1];
    assert_eq!(nightly["SnapshotID"], b);
    let days = (nightly["ExpiresOn"].as_i64().unwrap() - nightly["CreatedOn"].as_i64().unwrap())
        / 86_400_000;
    assert!(days == 14 || days >= 89, "{days}");

    let show = ok(mxsnap(&repo_args(&repo, &["show", &b[..8], "--json"]))).json();
    assert_eq!(show["CreatedBy"], "Nightly");
    assert_eq!(show["Environment"], "Production");
    assert_eq!(show["FileCount"], 45);
    let text = ok(mxsnap(&repo_args(&repo, &["list"]))).stdout;
    assert!(text.contains(&c) && text.contains("Test"), "{text}");

    ok(mxsnap(&repo_args(
        &repo,
        &["comment", &c, "kept for the audit"],
    )));
    let show = ok(mxsnap(&repo_args(&repo, &["show", &c, "--json"]))).json();
    assert_eq!(show["Comment"], "kept for the audit");

    let archive = repo.join("archives").join(format!("{a}.tar.gz"));
    assert!(archive.is_file());
    ok(mxsnap(&repo_args(&repo, &["delete", &a])));
    assert!(!archive.exists());
    let run = mxsnap(&repo_args(&repo, &["show", &a]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(
        ok(mxsnap(&repo_args(&repo, &["list", "--json"])))
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn downloads_stream_out_of_the_stored_snapshot_in_the_cloud_formats() {
    let db = Db::with_fixture("catdl");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let id = snap(&repo, &db, "Acceptance", &[]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let download = |variant: &str| -> PathBuf {
        let run = ok(mxsnap(&repo_args(
            &repo,
            &[
                "download",
                &id,
                "--variant",
                variant,
                "--output",
                out.to_str().unwrap(),
            ],
        )));
        PathBuf::from(run.stdout.trim())
    };
    let full = download("full");
    let database = download("database");
    let files = download("files");
    let tag = &id.replace('-', "")[..8];
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name(&full).starts_with(&format!("files_and_database-{tag}-")),
        "{}",
        name(&full)
    );
    assert!(
        name(&database).starts_with(&format!("database-{tag}-"))
            && name(&database).ends_with(".backup")
    );
    assert!(
        name(&files).starts_with(&format!("files-{tag}-")) && name(&files).ends_with(".tar.gz")
    );

    let stored = std::fs::read(repo.join("archives").join(format!("{id}.tar.gz"))).unwrap();
    assert_eq!(std::fs::read(&full).unwrap(), stored);
    let inner = members(&gunzip(&stored));
    let dump = &inner
        .iter()
        .find(|(n, _, _)| n == "db/db.backup")
        .unwrap()
        .1;
    assert_eq!(&std::fs::read(&database).unwrap(), dump);
    tool_ok(
        &pg_tool("pg_restore"),
        &["--list", database.to_str().unwrap()],
    );
    let tree: Vec<String> = inner
        .iter()
        .filter(|(n, _, _)| n.starts_with("tree/"))
        .map(|(n, _, _)| n.clone())
        .collect();
    let mut listed: Vec<String> = tool_ok("tar", &["-tzf", files.to_str().unwrap()])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(listed.pop().as_deref(), Some(".mxsnap-manifest"));
    assert_eq!(listed, tree);
    ok(mxsnap(&["verify", files.to_str().unwrap()]));

    // Restore into another environment from the catalogue.
    let target = Db::new("catdl_target");
    let target_files = dir.path().join("target/files");
    let url = target.url();
    ok(mxsnap(&repo_args(
        &repo,
        &[
            "restore",
            &id,
            "--database",
            &url,
            "--files",
            target_files.to_str().unwrap(),
            "--yes",
        ],
    )));
    assert_eq!(target.checksums(), db.checksums());
    assert_eq!(tree_hashes(&target_files).len(), 45);
}

/// Writes a Completed record (and a stand-in archive) dated `created`.
fn plant(repo: &Path, id: &str, env: &str, created: &str, kind: &str, state: &str) {
    let rec = serde_json::json!({
        "id": id, "environment": env, "created_by": if kind == "nightly" { "Nightly" } else { "ops" },
        "kind": kind, "state": state, "status_message": null, "created_on": created,
        "finished_on": created, "expires_on": null, "model_version": "1.0", "comment": null,
        "archive": format!("{id}.tar.gz"), "archive_bytes": 1, "archive_sha256": null,
        "dump_bytes": null, "files_bytes": null, "database_bytes": null, "file_count": null, "pid": null,
    });
    std::fs::write(
        repo.join("snapshots").join(format!("{id}.json")),
        rec.to_string(),
    )
    .unwrap();
    std::fs::write(repo.join("archives").join(format!("{id}.tar.gz")), b"x").unwrap();
}

#[test]
fn prune_deletes_what_the_schedule_lets_expire_and_nothing_else() {
    let db = Db::with_fixture("catprune");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // A real snapshot makes the catalogue; the rest are planted with past dates.
    let real = snap(&repo, &db, "Production", &[]);
    plant(
        &repo,
        "n-2028-10-01",
        "Production",
        "2028-10-01T19:00:00Z",
        "nightly",
        "Completed",
    );
    plant(
        &repo,
        "n-2028-10-04",
        "Production",
        "2028-10-04T19:00:00Z",
        "nightly",
        "Completed",
    );
    plant(
        &repo,
        "n-2028-10-08",
        "Production",
        "2028-10-08T19:00:00Z",
        "nightly",
        "Completed",
    );
    plant(
        &repo,
        "n-2028-10-20",
        "Production",
        "2028-10-20T19:00:00Z",
        "nightly",
        "Completed",
    );
    plant(
        &repo,
        "m-2028-08-01",
        "Production",
        "2028-08-01T09:00:00Z",
        "manual",
        "Completed",
    );
    plant(
        &repo,
        "f-2028-10-24",
        "Production",
        "2028-10-24T09:00:00Z",
        "manual",
        "Failed",
    );
    plant(
        &repo,
        "f-2028-10-25",
        "Production",
        "2028-10-25T09:00:00Z",
        "manual",
        "Failed",
    );
    plant(
        &repo,
        "t-2028-10-04",
        "Test",
        "2028-10-04T19:00:00Z",
        "nightly",
        "Completed",
    );
    let now = "2028-10-25T12:00:00Z";

    let dry = ok(mxsnap(&repo_args(
        &repo,
        &["prune", "--now", now, "--dry-run", "--json"],
    )))
    .json();
    let verdict = |id: &str| -> (bool, String) {
        let e = dry
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["SnapshotID"] == id)
            .unwrap();
        (
            e["Keep"].as_bool().unwrap(),
            e["Rule"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(verdict("n-2028-10-01"), (true, "monthly".into()));
    assert_eq!(verdict("n-2028-10-04"), (false, "nightly".into()));
    assert_eq!(verdict("n-2028-10-08"), (true, "weekly".into()));
    assert_eq!(verdict("n-2028-10-20"), (true, "nightly".into()));
    assert_eq!(verdict("m-2028-08-01"), (true, "ondemand".into()));
    assert_eq!(verdict("f-2028-10-24"), (false, "failed".into()));
    assert_eq!(verdict("f-2028-10-25"), (true, "failed".into()));
    assert_eq!(verdict("t-2028-10-04"), (false, "nightly".into()));
    // The snapshot made for real today is on demand, and long expired at that "now" in 2028.
    assert_eq!(verdict(&real), (false, "ondemand".into()));
    let text = ok(mxsnap(&repo_args(
        &repo,
        &["prune", "--now", now, "--dry-run"],
    )))
    .stdout;
    assert!(
        text.contains("delete") && text.contains("weekly (Sunday nightly): 3 months"),
        "{text}"
    );
    let before = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(before, 9, "dry run deleted something");

    // Only Production, then everything.
    ok(mxsnap(&repo_args(
        &repo,
        &["prune", "--now", now, "--env", "Production"],
    )));
    assert!(!repo.join("snapshots/n-2028-10-04.json").exists());
    assert!(!repo.join("archives/n-2028-10-04.tar.gz").exists());
    assert!(!repo.join("snapshots/f-2028-10-24.json").exists());
    assert!(repo.join("snapshots/t-2028-10-04.json").exists());
    ok(mxsnap(&repo_args(&repo, &["prune", "--now", now])));
    assert!(!repo.join("snapshots/t-2028-10-04.json").exists());
    let left: Vec<String> = ok(mxsnap(&repo_args(&repo, &["list", "--json"])))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["SnapshotID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        vec![
            "m-2028-08-01",
            "n-2028-10-01",
            "n-2028-10-08",
            "n-2028-10-20",
            "f-2028-10-25"
        ]
    );
    assert!(
        !repo
            .join("archives")
            .join(format!("{real}.tar.gz"))
            .exists()
    );
}

#[test]
fn a_failed_or_crashed_create_is_never_listed_as_completed() {
    let db = Db::with_fixture("catfail");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let store = store();
    // Failed: the database does not exist.
    let bad = harness::url_for("no_such_database");
    let run = mxsnap(&repo_args(
        &repo,
        &[
            "create",
            "--env",
            "Test",
            "--database",
            &bad,
            "--files",
            store.to_str().unwrap(),
        ],
    ));
    assert_eq!(run.code, 5, "{}", run.stderr);
    let list = ok(mxsnap(&repo_args(&repo, &["list", "--json"]))).json();
    assert_eq!(list[0]["State"], "Failed");
    let id = list[0]["SnapshotID"].as_str().unwrap().to_string();
    let show = ok(mxsnap(&repo_args(&repo, &["show", &id, "--json"]))).json();
    assert!(
        show["StatusMessage"]
            .as_str()
            .unwrap()
            .contains("no_such_database")
    );

    // Crashed: killed with SIGKILL while writing the archive.
    let url = db.url();
    let out = mxsnap_cmd(&repo_args(
        &repo,
        &[
            "create",
            "--env",
            "Test",
            "--database",
            &url,
            "--files",
            store.to_str().unwrap(),
        ],
    ))
    .env("MXSNAP_CRASH_AT", "create-writing")
    .output()
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9));
    let partials = || {
        std::fs::read_dir(repo.join("archives"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
            .count()
    };
    assert!(
        partials() > 0,
        "the crash left no partial archive to clean up"
    );
    let list = ok(mxsnap(&repo_args(&repo, &["list", "--json"]))).json();
    let crashed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["SnapshotID"] != id.as_str())
        .unwrap();
    assert_eq!(crashed["State"], "Failed");
    let cid = crashed["SnapshotID"].as_str().unwrap().to_string();
    let show = ok(mxsnap(&repo_args(&repo, &["show", &cid, "--json"]))).json();
    assert!(
        show["StatusMessage"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
    let run = mxsnap(&repo_args(
        &repo,
        &[
            "restore",
            &cid,
            "--database",
            &url,
            "--files",
            "/tmp/x",
            "--yes",
        ],
    ));
    assert_eq!(run.code, 2, "{}", run.stderr);
    // The next prune marks it for good and removes its partial archive and dump spool.
    ok(mxsnap(&repo_args(&repo, &["prune"])));
    assert_eq!(partials(), 0);
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("snapshots").join(format!("{cid}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["state"], "Failed");
}
