//! The catalogue in an object store (`--repo s3://bucket/prefix`), against a real
//! S3-protocol server: moto's, started on a free loopback port (`.ci/run` installs it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Db, tree_hashes};
use crate::serve;
use crate::support::*;

/// A moto S3 server on 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        // On PATH, or where .ci/run puts it.
        let program = if Command::new("moto_server").arg("--help").output().is_ok() {
            "moto_server".to_string()
        } else {
            "/opt/mxsnap-ci/moto/bin/moto_server".to_string()
        };
        for _attempt in 0..3 {
            let port = free_port();
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server (pip install \"moto[server]\"; .ci/run installs it)");
            let mut moto = Moto { child, port };
            // Up when the port answers as S3 does and our process still runs (had another
            // server taken the port, moto would have exited).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if moto.child.try_wait().unwrap().is_some() {
                    break;
                }
                let answer = ureq::get(&moto.url("/"))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok());
                if answer.is_some_and(|b| b.contains("ListAllMyBucketsResult"))
                    && moto.child.try_wait().unwrap().is_none()
                {
                    return moto;
                }
                assert!(Instant::now() < deadline, "moto_server did not start");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("moto_server exited at start three times (its ports taken?)");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url("")),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("MXSNAP_S3_RETRY_SECS", "3".into()),
        ]
    }

    fn make_bucket(&self, name: &str) {
        // Public-read, so that the tests can look at objects with unsigned requests.
        ureq::put(&self.url(&format!("/{name}")))
            .header("x-amz-acl", "public-read")
            .send_empty()
            .expect("making a bucket");
    }

    /// Every key in `bucket`, as the server lists them.
    fn keys(&self, bucket: &str) -> Vec<String> {
        let body = ureq::get(&self.url(&format!("/{bucket}?list-type=2")))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .map(|s| s.split("</Key>").next().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    }

    /// How many multipart uploads in `bucket` are neither completed nor aborted.
    fn open_uploads(&self, bucket: &str) -> usize {
        let body = ureq::get(&self.url(&format!("/{bucket}?uploads")))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        body.matches("<UploadId>").count()
    }

    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        ureq::get(&self.url(&format!("/{bucket}/{key}")))
            .call()
            .unwrap()
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_in(moto: &Moto, args: &[&str]) -> Run {
    let mut cmd = mxsnap_cmd(args);
    cmd.envs(moto.env());
    finish(cmd.output().unwrap())
}

fn create_cmd(moto: &Moto, repo: &str, db: &Db, env: &str, extra: &[&str]) -> Command {
    let url = db.url();
    let store = store();
    let mut args = vec![
        "snapshots",
        "create",
        "--repo",
        repo,
        "--env",
        env,
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = mxsnap_cmd(&args);
    cmd.envs(moto.env());
    cmd
}

fn create_in(moto: &Moto, repo: &str, db: &Db, env: &str, extra: &[&str]) -> String {
    let run = finish(create_cmd(moto, repo, db, env, extra).output().unwrap());
    ok(run).stdout.trim().to_string()
}

fn list_in(moto: &Moto, repo: &str) -> Vec<serde_json::Value> {
    ok(run_in(
        moto,
        &["snapshots", "list", "--repo", repo, "--json"],
    ))
    .json()
    .as_array()
    .unwrap()
    .clone()
}

#[test]
fn an_object_store_catalogue_round_trips_every_variant() {
    let moto = Moto::start();
    moto.make_bucket("team");
    let repo = "s3://team/apps/shop";
    let db = Db::with_fixture("s3rt");
    let id = create_in(&moto, repo, &db, "Production", &["--comment", "first"]);

    // Records and archives are objects under the prefix; nothing else is written.
    let keys = moto.keys("team");
    assert_eq!(
        keys,
        [
            format!("apps/shop/archives/{id}.tar.gz"),
            "apps/shop/mxsnap-repo.json".to_string(),
            format!("apps/shop/snapshots/{id}.json"),
        ]
    );
    // The stored archive is an ordinary one: GNU tar reads it.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.tar.gz");
    std::fs::write(
        &raw,
        moto.get("team", &format!("apps/shop/archives/{id}.tar.gz")),
    )
    .unwrap();
    tool_ok("tar", &["-tzf", raw.to_str().unwrap()]);

    let items = list_in(&moto, repo);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["SnapshotID"], id.as_str());
    assert_eq!(items[0]["State"], "Completed");
    assert_eq!(items[0]["Comment"], "first");

    ok(run_in(
        &moto,
        &["snapshots", "comment", "--repo", repo, &id, "second"],
    ));
    assert_eq!(list_in(&moto, repo)[0]["Comment"], "second");

    // Each download variant streams out of the store and verifies.
    for variant in ["full", "database", "files"] {
        let out = dir.path().join(variant);
        std::fs::create_dir(&out).unwrap();
        ok(run_in(
            &moto,
            &[
                "snapshots",
                "download",
                "--repo",
                repo,
                &id,
                "--variant",
                variant,
                "--output",
                out.to_str().unwrap(),
            ],
        ));
        let file = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        ok(mxsnap(&["verify", file.to_str().unwrap()]));
    }

    // Restore into another environment, straight from the store.
    let target = Db::new("s3rt_target");
    let target_files = dir.path().join("target/files");
    let url = target.url();
    ok(run_in(
        &moto,
        &[
            "snapshots",
            "restore",
            "--repo",
            repo,
            &id,
            "--database",
            &url,
            "--files",
            target_files.to_str().unwrap(),
            "--yes",
        ],
    ));
    assert_eq!(target.checksums(), db.checksums());
    let wanted = expected_tree(&db);
    let referenced: std::collections::BTreeMap<_, _> = tree_hashes(&store())
        .into_iter()
        .filter(|(rel, _)| wanted.contains(rel))
        .collect();
    assert_eq!(tree_hashes(&target_files), referenced);

    ok(run_in(&moto, &["snapshots", "delete", "--repo", repo, &id]));
    assert!(list_in(&moto, repo).is_empty());
    assert_eq!(moto.keys("team"), ["apps/shop/mxsnap-repo.json"]);
}

#[test]
fn hosts_racing_on_one_object_store_catalogue_lose_nothing() {
    let moto = Moto::start();
    moto.make_bucket("race");
    let repo = "s3://race/cat";
    let db = Db::with_fixture("s3race");
    let first = create_in(&moto, repo, &db, "Test", &[]);

    // Eight processes at once: five creates, two prunes and one run of comments on the
    // snapshot that exists (each comment a compare-and-swap against the others' writes).
    let mut children: Vec<Child> = (0..5)
        .map(|i| {
            create_cmd(
                &moto,
                repo,
                &db,
                "Test",
                &["--comment", &format!("racer {i}")],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for _ in 0..2 {
        let mut cmd = mxsnap_cmd(&["snapshots", "prune", "--repo", repo]);
        cmd.envs(moto.env());
        children.push(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let commenter = {
        let repo = repo.to_string();
        let first = first.clone();
        let env = moto.env();
        std::thread::spawn(move || {
            for i in 0..5 {
                let mut cmd = mxsnap_cmd(&[
                    "snapshots",
                    "comment",
                    "--repo",
                    &repo,
                    &first,
                    &format!("note {i}"),
                ]);
                cmd.envs(env.clone());
                ok(finish(cmd.output().unwrap()));
            }
        })
    };
    let mut made = vec![first.clone()];
    for (i, child) in children.into_iter().enumerate() {
        let run = finish(child.wait_with_output().unwrap());
        let run = ok(run);
        if i < 5 {
            made.push(run.stdout.trim().to_string());
        }
    }
    commenter.join().unwrap();

    let items = list_in(&moto, repo);
    let mut listed: Vec<String> = items
        .iter()
        .map(|r| r["SnapshotID"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    made.sort();
    assert_eq!(
        listed, made,
        "exactly the snapshots made, none lost or pruned"
    );
    for item in &items {
        assert_eq!(item["State"], "Completed", "{item}");
        let id = item["SnapshotID"].as_str().unwrap();
        if id == first {
            assert_eq!(item["Comment"], "note 4", "the last comment stands");
        } else {
            assert!(item["Comment"].as_str().unwrap().starts_with("racer "));
        }
    }
    // Every archive is whole: one per record, and each restores as a stream would (verify).
    let keys = moto.keys("race");
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("cat/archives/"))
            .count(),
        6
    );
    let dir = tempfile::tempdir().unwrap();
    for id in &made {
        let out = dir.path().join(format!("{id}.tar.gz"));
        ok(run_in(
            &moto,
            &[
                "snapshots",
                "download",
                "--repo",
                repo,
                id,
                "--output",
                out.to_str().unwrap(),
            ],
        ));
        ok(mxsnap(&["verify", out.to_str().unwrap()]));
    }
}

#[test]
fn a_create_killed_mid_upload_leaves_nothing_completed_and_prune_cleans_up() {
    let moto = Moto::start();
    moto.make_bucket("crash");
    let repo = "s3://crash/c";
    let db = Db::with_fixture("s3crash");
    let run = finish(
        create_cmd(&moto, repo, &db, "Test", &[])
            .env("MXSNAP_CRASH_AT", "create-writing")
            .output()
            .unwrap(),
    );
    assert_ne!(run.code, 0);
    let items = list_in(&moto, repo);
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["State"], "Failed",
        "a dead maker is read as Failed"
    );
    assert!(
        !moto.keys("crash").iter().any(|k| k.contains("/archives/")),
        "an unfinished upload is not an archive"
    );
    assert_eq!(
        moto.open_uploads("crash"),
        1,
        "the killed create's upload is open"
    );
    ok(run_in(&moto, &["snapshots", "prune", "--repo", repo]));
    assert_eq!(
        moto.open_uploads("crash"),
        0,
        "prune aborted the crashed upload"
    );
    let id = items[0]["SnapshotID"].as_str().unwrap();
    let rec: serde_json::Value =
        serde_json::from_slice(&moto.get("crash", &format!("c/snapshots/{id}.json"))).unwrap();
    assert_eq!(rec["state"], "Failed");
    assert!(
        rec["status_message"]
            .as_str()
            .unwrap()
            .contains("interrupted")
    );
}

#[test]
fn the_object_store_going_away_mid_create_is_a_clear_error() {
    let mut moto = Moto::start();
    moto.make_bucket("gone");
    let db = Db::with_fixture("s3gone");
    let child = create_cmd(&moto, "s3://gone/c", &db, "Test", &[])
        .env("MXSNAP_PAUSE_AT", "create-writing")
        .env("MXSNAP_PAUSE_MS", "3000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();
    let started = Instant::now();
    let run = finish(child.wait_with_output().unwrap());
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("127.0.0.1") || run.stderr.contains("upload"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_missing_bucket_or_no_server_is_a_clear_error_with_the_fix() {
    let moto = Moto::start();
    let db = Db::with_fixture("s3nob");
    let run = finish(
        create_cmd(&moto, "s3://no-such-bucket/x", &db, "Test", &[])
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("bucket"), "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("testing"),
        "no credentials in messages"
    );

    let run = run_in(
        &moto,
        &["snapshots", "list", "--repo", "s3://no-such-bucket/x"],
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);

    // Wrong credentials: moto checks keys once its authentication is switched on (it then
    // knows no key at all, so every key is a wrong one).
    moto.make_bucket("locked");
    ureq::post(&moto.url("/moto-api/reset-auth"))
        .send("0")
        .expect("switching moto's authentication on");
    let run = run_in(&moto, &["snapshots", "list", "--repo", "s3://locked/x"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("testing"),
        "no credentials in messages"
    );

    // Nothing listening: a clear error, soon.
    let port = free_port();
    let mut cmd = mxsnap_cmd(&["snapshots", "list", "--repo", "s3://team/x"]);
    cmd.envs(moto.env())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let run = finish(cmd.output().unwrap());
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("cannot be reached"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn snapshots_copy_between_a_directory_and_an_object_store_verifying_each() {
    let moto = Moto::start();
    moto.make_bucket("copies");
    let db = Db::with_fixture("s3copy");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let local_s = local.to_str().unwrap().to_string();
    let a = create_in(&moto, &local_s, &db, "Production", &["--comment", "a"]);
    let b = create_in(&moto, &local_s, &db, "Test", &[]);
    let copy = |from: &str, to: &str, extra: &[&str]| {
        let mut args = vec!["snapshots", "copy", "--from", from, "--to", to];
        args.extend_from_slice(extra);
        run_in(&moto, &args)
    };
    let shas = |repo: &str| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = list_in(&moto, repo)
            .iter()
            .map(|r| {
                let id = r["SnapshotID"].as_str().unwrap().to_string();
                let show = ok(run_in(
                    &moto,
                    &["snapshots", "show", "--repo", repo, &id, "--json"],
                ))
                .json();
                assert_eq!(show["State"], "Completed", "{show}");
                (
                    id,
                    show["ArchiveSHA256"].as_str().unwrap().to_string(),
                    show["Comment"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };

    // Directory to object store: both, each verified, the records as they were.
    let s3 = "s3://copies/team";
    let run = ok(copy(&local_s, s3, &[]));
    let mut copied: Vec<&str> = run.stdout.lines().collect();
    copied.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(copied, want);
    assert_eq!(shas(s3), shas(&local_s));
    assert_eq!(moto.open_uploads("copies"), 0);

    // Again: nothing to do.
    let run = ok(copy(&local_s, s3, &[]));
    assert!(run.stdout.trim().is_empty(), "{}", run.stdout);
    assert!(run.stderr.contains("already there"), "{}", run.stderr);

    // Object store to a new directory, one snapshot; it restores from there as from anywhere.
    let back = dir.path().join("back");
    let back_s = back.to_str().unwrap().to_string();
    let run = ok(copy(s3, &back_s, &[&a[..8]]));
    assert_eq!(run.stdout.trim(), a);
    let got = shas(&back_s);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        shas(&local_s).into_iter().find(|s| s.0 == a).unwrap()
    );
    let out = dir.path().join("a.tar.gz");
    ok(run_in(
        &moto,
        &[
            "snapshots",
            "download",
            "--repo",
            &back_s,
            &a,
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    ok(mxsnap(&["verify", out.to_str().unwrap()]));

    // A damaged source archive is refused, and nothing of it appears at the destination.
    let archive = std::fs::read_dir(local.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&b))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&archive, bytes).unwrap();
    let other = "s3://copies/other";
    let run = copy(&local_s, other, &[&b]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(list_in(&moto, other).is_empty());
    assert!(
        !moto
            .keys("copies")
            .iter()
            .any(|k| k.starts_with("other/archives/")),
        "no archive of a failed copy"
    );
    assert_eq!(moto.open_uploads("copies"), 0, "its upload was aborted");
    // And into a directory: no record, no partial file.
    let run = copy(&local_s, &dir.path().join("d2").to_string_lossy(), &[&b]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("d2/archives"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        std::fs::read_dir(dir.path().join("d2/snapshots"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// A service's config on an object-store catalogue: the app `calc` with `envs` (mode, id,
/// database URL, files directory), its own `state_dir`, alice allowed everywhere.
fn fleet_config(
    dir: &std::path::Path,
    name: &str,
    repo: &str,
    envs: &[(&str, &str, String, String)],
) -> std::path::PathBuf {
    use std::fmt::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nrepo = \"{repo}\"\nstate_dir = \"{}\"\n\n[[apps]]\nid = \"calc\"\nproject_id = \"{}\"\n",
        dir.join(format!("{name}-state")).display(),
        serve::PROJECT
    );
    for (mode, id, database, files) in envs {
        write!(
            text,
            "\n[[apps.environments]]\nmode = \"{mode}\"\nid = \"{id}\"\ndatabase = \"{database}\"\nfiles = \"{files}\"\n"
        )
        .unwrap();
    }
    write!(
        text,
        "\n[[users]]\nname = \"{}\"\nkey_sha256 = \"{}\"\nenvironments = [\"calc/*\"]\n",
        serve::ALICE.0,
        mxsnap::serve::hash_key(serve::ALICE.1)
    )
    .unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The job records in the bucket, as JSON.
fn job_objects(moto: &Moto, bucket: &str, prefix: &str) -> Vec<serde_json::Value> {
    moto.keys(bucket)
        .into_iter()
        .filter(|k| k.starts_with(&format!("{prefix}/serve/jobs/")))
        .map(|k| serde_json::from_slice(&moto.get(bucket, &k)).unwrap())
        .collect()
}

#[test]
fn two_services_share_one_object_store_catalogue() {
    use serve::{ACC, ALICE, TEST, finished, poll, v1, v2};
    let moto = Moto::start();
    moto.make_bucket("fleet");
    let repo = "s3://fleet/calc";
    let dir = tempfile::tempdir().unwrap();
    let source = Db::with_fixture("s3srv_src");
    let target = crate::restore::Env::new("s3srv_dst");
    let store_dir = store().display().to_string();
    let acceptance = ("Acceptance", ACC, source.url(), store_dir);
    // Host A serves Acceptance; host B serves Test and sees Acceptance's snapshots.
    let a_config = fleet_config(dir.path(), "a", repo, std::slice::from_ref(&acceptance));
    let b_config = fleet_config(
        dir.path(),
        "b",
        repo,
        &[
            acceptance,
            (
                "Test",
                TEST,
                target.db.url(),
                target.files.display().to_string(),
            ),
        ],
    );
    let mut a_env = moto.env();
    a_env.push(("MXSNAP_PAUSE_AT", "create-writing".into()));
    a_env.push(("MXSNAP_PAUSE_MS", "1500".into()));
    let a = serve::start_with(&a_config, &a_env);
    let b = serve::start_with(&b_config, &moto.env());

    // A snapshot made by A is seen by B while it is made, and when done.
    let snaps = format!("{}/snapshots", v2(ACC));
    let created = a.post(&snaps, ALICE, r#"{"comment": "made on A"}"#);
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let id = created.json()["snapshot_id"].as_str().unwrap().to_string();
    let seen = b.get(&format!("{snaps}/{id}"), ALICE);
    assert_eq!(seen.status, 200, "{}", String::from_utf8_lossy(&seen.body));
    assert!(
        matches!(seen.json()["state"].as_str(), Some("queued" | "running")),
        "{}",
        seen.json()
    );
    let done = poll(&a, &format!("{snaps}/{id}"), finished);
    assert_eq!(done.json()["state"], "completed", "{}", done.json());
    let at_b = poll(&b, &format!("{snaps}/{id}"), finished);
    assert_eq!(at_b.json()["state"], "completed");
    assert_eq!(at_b.json()["comment"], "made on A");

    // Its job is an object in the catalogue, named by service; nothing of it is on A's disk.
    let jobs = job_objects(&moto, "fleet", "calc");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "completed");
    assert_eq!(jobs[0]["snapshot_id"], id.as_str());
    assert!(jobs[0]["service"].is_string(), "{}", jobs[0]);
    assert!(!dir.path().join("a-state/jobs").exists());
    assert!(dir.path().join("a-state/secret").exists());

    // A comment edited on B is what A shows.
    let put = b.call(
        "PUT",
        &format!("{snaps}/{id}"),
        Some(ALICE),
        Some(r#"{"comment": "edited on B"}"#),
        &[],
    );
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(
        a.get(&format!("{snaps}/{id}"), ALICE).json()["comment"],
        "edited on B"
    );

    // B's v1 list and links: the archive streams out of the bucket into B's own state.
    let listed = b
        .get(&format!("{}/snapshots", v1("acceptance")), ALICE)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["SnapshotID"], id.as_str());
    let links = poll(&b, &format!("{}/snapshots/{id}", v1("acceptance")), |r| {
        r.status != 500
    });
    assert_eq!(
        links.status,
        200,
        "{}",
        String::from_utf8_lossy(&links.body)
    );
    let links = links.json();
    for (key, name) in [
        ("DatabaseAndFiles", "full.tar.gz"),
        ("FilesOnly", "files.tar.gz"),
    ] {
        let url = links[key].as_str().unwrap();
        assert!(url.starts_with(&b.base), "{url}");
        let got = b.call("GET", url, None, None, &[]);
        assert_eq!(got.status, 200, "{key}");
        let file = serve::save(dir.path(), name, &got.body);
        ok(mxsnap(&["verify", file.to_str().unwrap()]));
    }

    // An archive job on B: its record in the bucket, its file in B's state.
    let job = b.post(
        &format!("{snaps}/{id}/archives?data_type=database_only"),
        ALICE,
        "",
    );
    assert_eq!(job.status, 201, "{}", String::from_utf8_lossy(&job.body));
    let archive = job.json()["archive_id"].as_str().unwrap().to_string();
    let job = poll(&b, &format!("{snaps}/{id}/archives/{archive}"), finished).json();
    assert_eq!(job["state"], "completed", "{job}");
    let got = b.call("GET", job["url"].as_str().unwrap(), None, None, &[]);
    assert_eq!(got.status, 200);
    let file = serve::save(dir.path(), "db.backup", &got.body);
    ok(mxsnap(&["verify", file.to_str().unwrap()]));

    // B restores A's snapshot into its Test environment: rows and the referenced files arrive.
    let restored = b.post(&format!("{}/restore/{id}", v1("test")), ALICE, "");
    assert_eq!(
        restored.status,
        200,
        "{}",
        String::from_utf8_lossy(&restored.body)
    );
    assert_eq!(target.db.checksums(), source.checksums());
    let wanted = expected_tree(&source);
    let referenced: std::collections::BTreeMap<_, _> = tree_hashes(&store())
        .into_iter()
        .filter(|(rel, _)| wanted.contains(rel))
        .collect();
    assert_eq!(tree_hashes(&target.files), referenced);
    let jobs = job_objects(&moto, "fleet", "calc");
    assert_eq!(
        jobs.len(),
        3,
        "a snapshot, an archive and a restore: {jobs:?}"
    );
    assert!(jobs.iter().all(|j| j["state"] == "completed"), "{jobs:?}");
    let services: std::collections::BTreeSet<_> = jobs
        .iter()
        .map(|j| j["service"].as_str().unwrap())
        .collect();
    assert_eq!(services.len(), 2, "A's and B's: {jobs:?}");
    a.kill();

    // A killed while it makes a snapshot: B's restart leaves that job alone (it is A's, on the
    // same machine); A's own restart fails it as interrupted.
    let mut slow_env = moto.env();
    slow_env.push(("MXSNAP_PAUSE_AT", "create-writing".into()));
    slow_env.push(("MXSNAP_PAUSE_MS", "60000".into()));
    let a = serve::start_with(&a_config, &slow_env);
    let created = a.post(&snaps, ALICE, "");
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let second = created.json()["snapshot_id"].as_str().unwrap().to_string();
    let job_of = |moto: &Moto| {
        job_objects(moto, "fleet", "calc")
            .into_iter()
            .find(|j| j["snapshot_id"] == second.as_str())
    };
    let t0 = Instant::now();
    while job_of(&moto).is_none_or(|j| j["state"] != "running") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:?}",
            job_of(&moto)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.kill();
    let (status, log) = b.terminate();
    assert!(status.success(), "{log}");
    let b = serve::start_with(&b_config, &moto.env());
    assert_eq!(
        job_of(&moto).unwrap()["state"],
        "running",
        "B judged A's job"
    );
    let a = serve::start_with(&a_config, &moto.env());
    let job = job_of(&moto).unwrap();
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["status_message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{job}"
    );
    assert!(a.log.lock().unwrap().contains("interrupted"));
    // The snapshot it was making is Failed, and every job B sees is as it was.
    let snap = poll(&b, &format!("{snaps}/{second}"), finished);
    assert_eq!(snap.json()["state"], "failed", "{}", snap.json());
    drop((a, b));
}
