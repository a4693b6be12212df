//! `mxsnap remote`: the Backups API client against a real `mxsnap serve` on 127.0.0.1, over
//! both API versions: list, create and wait, links, downloads that resume after a kill, a
//! restore streamed from the API into a target, a restore on the server refused while the
//! environment runs, and the API's refusals as messages that say what to do.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::harness::tree_hashes;
use crate::restore::Env;
use crate::serve::{ACC, ALICE, BOB, PROJECT, Server, TEST, setup, start};
use crate::support::*;

/// `mxsnap remote --api-url <server> <args>` as `user`, with the credentials in the
/// environment; asserts that the key shows nowhere.
fn remote_as(server: &Server, user: (&str, &str), args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = mxsnap_cmd(&["remote", "--api-url", &server.base]);
    cmd.args(args)
        .env("MENDIX_USERNAME", user.0)
        .env("MENDIX_APIKEY", user.1)
        .envs(env.iter().copied());
    let run = finish(cmd.output().unwrap());
    assert!(
        !run.stdout.contains(user.1) && !run.stderr.contains(user.1),
        "the key was shown: {}{}",
        run.stdout,
        run.stderr
    );
    run
}

fn remote(server: &Server, args: &[&str]) -> Run {
    remote_as(server, ALICE, args, &[])
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn sha(path: &Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("partial"))
        .collect()
}

#[test]
fn v1_lists_creates_downloads_and_restores_locally_and_on_the_server() {
    let s = setup("rapi1");
    let server = start(&s, &[]);
    let acc = ["--app", "calc", "--env", "acceptance"];
    let run = ok(remote(&server, &[&acc[..], &["list"]].concat()));
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);

    // create and wait: one command until it is completed
    let run = ok(remote(
        &server,
        &[
            &acc[..],
            &["create", "--comment", "from the client", "--wait", "--json"],
        ]
        .concat(),
    ));
    let snap = json(&run);
    assert_eq!(snap["state"], "completed");
    let id = snap["id"].as_str().unwrap().to_string();
    let listed = json(&ok(remote(
        &server,
        &[&acc[..], &["list", "--json"]].concat(),
    )));
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["comment"], "from the client");
    assert_eq!(listed[0]["model_version"], "1.0.0.40");
    // the mode is matched case-insensitively, as in the cloud
    ok(remote(
        &server,
        &["--app", "calc", "--env", "Acceptance", "list"],
    ));

    // a link of each variant is one of the service's
    let link = ok(remote(
        &server,
        &[&acc[..], &["link", "latest", "--variant", "database"]].concat(),
    ));
    assert!(
        link.stdout.trim().starts_with(&server.base),
        "{}",
        link.stdout
    );

    // download into a directory: the cloud's name, verified, nothing partial left
    let dir = tempfile::tempdir().unwrap();
    let run = ok(remote(
        &server,
        &[
            &acc[..],
            &["download", "latest", "-o", dir.path().to_str().unwrap()],
        ]
        .concat(),
    ));
    let file = std::path::PathBuf::from(run.stdout.trim());
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("files_and_database-") && name.ends_with(".tar.gz"),
        "{name}"
    );
    assert!(
        run.stderr.contains("downloaded and verified"),
        "{}",
        run.stderr
    );
    assert!(leftovers(dir.path()).is_empty());
    ok(mxsnap(&["verify", file.to_str().unwrap()]));
    // a second download to the same name is refused, --force replaces it
    let again = remote(
        &server,
        &[&acc[..], &["download", &id, "-o", file.to_str().unwrap()]].concat(),
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    ok(remote(
        &server,
        &[
            &acc[..],
            &["download", &id, "-o", file.to_str().unwrap(), "--force"],
        ]
        .concat(),
    ));

    // restore `latest` straight from the API into a stopped target: rows and files arrive
    let local = Env::new("rapi1_local");
    let run = ok(remote(
        &server,
        &[
            &acc[..],
            &[
                "restore",
                "latest",
                "--database",
                &local.db.url(),
                "--files",
                local.files.to_str().unwrap(),
                "--yes",
            ],
        ]
        .concat(),
    ));
    assert!(run.stderr.contains(&id), "{}", run.stderr);
    assert_eq!(local.db.checksums(), s.source.checksums());
    assert_eq!(tree_hashes(&local.files).len(), 45);

    // a restore on the server into Test: refused while it runs, nothing changed
    std::fs::write(
        s.dir.path().join("test.pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    let before = s.target.state();
    let test = ["--app", "calc", "--env", "test"];
    let refused = remote(
        &server,
        &[&test[..], &["restore-there", &id, "--yes"]].concat(),
    );
    assert_eq!(refused.code, 6, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("ERROR_NOT_ALLOWED"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("hint: stop the environment first"),
        "{}",
        refused.stderr
    );
    assert_eq!(s.target.state(), before);
    std::fs::remove_file(s.dir.path().join("test.pid")).unwrap();
    ok(remote(
        &server,
        &[&test[..], &["restore-there", &id, "--yes"]].concat(),
    ));
    assert_eq!(s.target.db.checksums(), s.source.checksums());

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(ALICE.1), "the key was logged: {log}");
}

#[test]
fn v2_archives_are_polled_and_parts_restore_alone() {
    let s = setup("rapi2");
    let server = start(&s, &[]);
    let acc = ["--app", PROJECT, "--env", ACC];
    let snap = json(&ok(remote(
        &server,
        &[&acc[..], &["create", "--wait", "--json"]].concat(),
    )));
    let id = snap["id"].as_str().unwrap().to_string();
    assert!(snap["created_at"].as_str().unwrap().starts_with("20"));

    // the database-only download: a bare dump, verified by pg_restore; progress lines with
    // the rate when there is no terminal
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("db.backup");
    let run = ok(remote_as(
        &server,
        ALICE,
        &[
            &acc[..],
            &[
                "download",
                &id,
                "--variant",
                "database",
                "-o",
                out.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[("MXSNAP_PROGRESS_SECS", "0")],
    ));
    assert!(run.stderr.contains("downloading: "), "{}", run.stderr);
    assert!(run.stderr.contains("/s"), "{}", run.stderr);
    let verified = json(&ok(mxsnap(&["verify", out.to_str().unwrap(), "--json"])));
    assert_eq!(verified["variant"], "database");
    let link = json(&ok(remote(
        &server,
        &[&acc[..], &["link", &id, "--json"]].concat(),
    )));
    assert!(link["expires_at"].as_str().is_some(), "{link}");

    // only the files of the latest snapshot: the database is left alone
    let local = Env::new("rapi2_local");
    let db_before = local.db.checksums();
    ok(remote(
        &server,
        &[
            &acc[..],
            &[
                "restore",
                "latest",
                "--variant",
                "files",
                "--database",
                &local.db.url(),
                "--files",
                local.files.to_str().unwrap(),
                "--yes",
            ],
        ]
        .concat(),
    ));
    assert_eq!(local.db.checksums(), db_before);
    // the referenced files of the store, and only those
    let got = tree_hashes(&local.files);
    let store = tree_hashes(&store());
    assert_eq!(got.len(), 45);
    assert!(got.iter().all(|(k, v)| store.get(k) == Some(v)));

    // one command from "the API has a backup" to a local environment that runs on it
    let env_dir = dir.path().join("local-env");
    let env_s = env_dir.to_str().unwrap();
    let run = ok(remote(
        &server,
        &[&acc[..], &["restore", "latest", "--into", env_s, "--json"]].concat(),
    ));
    let report = json(&run);
    assert_eq!(report["local"]["created"], true, "{report}");
    assert_eq!(tree_hashes(&env_dir.join("data/files")).len(), 45);
    let status = ok(mxsnap(&["env", "status", env_s, "--json"]));
    assert_eq!(json(&status)["running"], true);
    ok(mxsnap(&["env", "stop", env_s]));

    // a database-only restore on the server, polled as a v2 job
    let files_before = tree_hashes(&s.target.files);
    ok(remote(
        &server,
        &[
            &["--app", PROJECT, "--env", TEST][..],
            &["restore-there", &id, "--db-only", "--yes"],
        ]
        .concat(),
    ));
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    assert_eq!(tree_hashes(&s.target.files), files_before);
}

#[test]
fn a_killed_download_resumes_and_is_renamed_only_when_verified() {
    let s = setup("rapi3");
    let server = start(&s, &[]);
    let acc = ["--app", "calc", "--env", "acceptance"];
    let id = json(&ok(remote(
        &server,
        &[&acc[..], &["create", "--wait", "--json"]].concat(),
    )))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.tar.gz");
    ok(remote(
        &server,
        &[
            &acc[..],
            &["download", &id, "-o", reference.to_str().unwrap()],
        ]
        .concat(),
    ));

    for (point, says) in [
        ("download", "resuming the download at byte 65536"),
        ("download-complete", "is complete: verifying it"),
    ] {
        let out = dir.path().join(format!("{point}.tar.gz"));
        let args = [&acc[..], &["download", &id, "-o", out.to_str().unwrap()]].concat();
        let killed = remote_as(&server, ALICE, &args, &[("MXSNAP_CRASH_AT", point)]);
        assert_eq!(killed.code, -1, "not killed at {point}: {}", killed.stderr);
        assert!(!out.exists());
        let partial = mxsnap::remote::fetch::partial_path(&out);
        assert!(std::fs::metadata(&partial).unwrap().len() > 0);
        let run = ok(remote(&server, &args));
        assert!(run.stderr.contains(says), "{point}: {}", run.stderr);
        assert_eq!(sha(&out), sha(&reference));
        assert!(!partial.exists());
    }
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

#[test]
fn refusals_say_what_to_do_and_credentials_stay_secret() {
    let s = setup("rapi4");
    let server = start(&s, &[]);
    let acc = ["--app", "calc", "--env", "acceptance"];
    let list = [&acc[..], &["list"]].concat();

    let wrong = remote_as(&server, (ALICE.0, "not-the-key-0000"), &list, &[]);
    assert_eq!(wrong.code, 2, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    assert!(wrong.stderr.contains("MENDIX_APIKEY"), "{}", wrong.stderr);

    let bob = remote_as(&server, BOB, &list, &[]);
    assert_eq!(bob.code, 6, "{}", bob.stderr);
    assert!(bob.stderr.contains("NO_ACCESS"), "{}", bob.stderr);

    let nowhere = remote(&server, &["--app", "calc", "--env", "staging", "list"]);
    assert_eq!(nowhere.code, 2, "{}", nowhere.stderr);
    assert!(
        nowhere.stderr.contains("ENVIRONMENT_NOT_FOUND") && nowhere.stderr.contains("--env"),
        "{}",
        nowhere.stderr
    );

    let missing = remote(
        &server,
        &[&acc[..], &["download", "no-such-snapshot", "-o", "x"]].concat(),
    );
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("remote list"), "{}", missing.stderr);
    let latest = remote(
        &server,
        &[&acc[..], &["restore", "latest", "--into", "x"]].concat(),
    );
    assert_eq!(latest.code, 2, "{}", latest.stderr);
    assert!(
        latest.stderr.contains("no completed snapshot"),
        "{}",
        latest.stderr
    );

    let v2_by_name = remote(&server, &[&acc[..], &["--api", "v2", "list"]].concat());
    assert_eq!(v2_by_name.code, 2, "{}", v2_by_name.stderr);
    assert!(v2_by_name.stderr.contains("UUID"), "{}", v2_by_name.stderr);

    // no credentials at all; a file others may read; an owner-only file
    let home = tempfile::tempdir().unwrap();
    let bare = |extra: &[&str]| {
        let mut cmd = mxsnap_cmd(&["remote", "--api-url", &server.base]);
        cmd.args(&list)
            .args(extra)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME");
        finish(cmd.output().unwrap())
    };
    let none = bare(&[]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("MENDIX_USERNAME"), "{}", none.stderr);
    let creds = home.path().join("creds.toml");
    std::fs::write(
        &creds,
        format!("username = \"{}\"\napi_key = \"{}\"\n", ALICE.0, ALICE.1),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = bare(&["--credentials", creds.to_str().unwrap()]);
    assert_eq!(open.code, 2, "{}", open.stderr);
    assert!(open.stderr.contains("chmod 600"), "{}", open.stderr);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let by_file = ok(bare(&["--credentials", creds.to_str().unwrap()]));
    assert!(!by_file.stdout.contains(ALICE.1) && !by_file.stderr.contains(ALICE.1));
    // the default place is found without naming it
    let config = home.path().join(".config/mxsnap");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::rename(&creds, config.join("credentials.toml")).unwrap();
    ok(bare(&[]));

    // the service gone: a clear error after the bounded retries
    let base = server.base.clone();
    drop(server);
    let mut cmd = mxsnap_cmd(&["remote", "--api-url", &base]);
    cmd.args(&list)
        .env("MENDIX_USERNAME", ALICE.0)
        .env("MENDIX_APIKEY", ALICE.1)
        .env("MXSNAP_HTTP_GIVE_UP_SECS", "1");
    let gone = finish(cmd.output().unwrap());
    assert_eq!(gone.code, 5, "{}", gone.stderr);
    assert!(gone.stderr.contains("--api-url"), "{}", gone.stderr);
}
