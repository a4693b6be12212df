//! `mxsnap serve`: a real service on 127.0.0.1 (an ephemeral port) over the real PostgreSQL,
//! talked to over HTTP by a real client (ureq): every endpoint of v1 and v2 and their error
//! codes, downloads resumed with Range, a restart after a crash, SIGTERM during a restore.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Db, tree_hashes};
use crate::restore::Env;
use crate::support::*;

pub(crate) const PROJECT: &str = "8c3a2d7e-0d55-4f0e-9a6b-6f1f4a1e2b3c";
pub(crate) const ACC: &str = "0f6b1c52-8e2b-4d8e-a1f5-2b7c9d0e4a11";
pub(crate) const TEST: &str = "5d1e9c3a-7b2f-4e8d-9a6c-1f0e2d3c4b5a";
const OTHER_PROJECT: &str = "11111111-2222-4333-8444-555555555555";
const OTHER_ENV: &str = "66666666-7777-4888-9999-000000000000";
pub(crate) const ALICE: (&str, &str) = ("alice@example.com", "alice-key-26587896");
pub(crate) const BOB: (&str, &str) = ("bob@example.com", "bob-key-1cef4483");

/// A configured service: the fixture app as calc/Acceptance (the source), a target of its
/// own as calc/Test, and another app; alice may use all of calc, bob only calc/Test.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) source: Db,
    pub(crate) target: Env,
    _other: Db,
}

pub(crate) fn setup(tag: &str) -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let source = Db::with_fixture(&format!("{tag}_src"));
    let target = Env::new(&format!("{tag}_dst"));
    let other = Db::new(&format!("{tag}_oth"));
    let other_files = dir.path().join("other-files");
    std::fs::create_dir(&other_files).unwrap();
    let config = dir.path().join("serve.toml");
    let text = format!(
        r#"listen = "127.0.0.1:0"
repo = "{repo}"

[[apps]]
id = "calc"
project_id = "{PROJECT}"

[[apps.environments]]
mode = "Acceptance"
id = "{ACC}"
database = "{src}"
files = "{store}"
model_version = "1.0.0.40"

[[apps.environments]]
mode = "Test"
id = "{TEST}"
database = "{dst}"
files = "{dst_files}"
pid_file = "{pid}"

[[apps]]
id = "other"
project_id = "{OTHER_PROJECT}"

[[apps.environments]]
mode = "Production"
id = "{OTHER_ENV}"
database = "{oth}"
files = "{oth_files}"

[[users]]
name = "{alice}"
key_sha256 = "{alice_hash}"
environments = ["calc/*", "other/*"]

[[users]]
name = "{bob}"
key_sha256 = "{bob_hash}"
environments = ["calc/test"]
"#,
        repo = dir.path().join("repo").display(),
        src = source.url(),
        store = store().display(),
        dst = target.db.url(),
        dst_files = target.files.display(),
        pid = dir.path().join("test.pid").display(),
        oth = other.url(),
        oth_files = other_files.display(),
        alice = ALICE.0,
        alice_hash = mxsnap::serve::hash_key(ALICE.1),
        bob = BOB.0,
        bob_hash = mxsnap::serve::hash_key(BOB.1),
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    Setup {
        dir,
        config,
        source,
        target,
        _other: other,
    }
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    pub(crate) log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub(crate) fn code(&self) -> String {
        self.json()["errorCode"].as_str().unwrap_or("").to_string()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn start(setup: &Setup, env: &[(&str, &str)]) -> Server {
    start_with(&setup.config, env)
}

/// A service from the config file at `config`, with `env` added to its environment.
pub(crate) fn start_with<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    config: &Path,
    env: &[(K, V)],
) -> Server {
    let mut cmd = mxsnap_cmd(&["serve", "--config", config.to_str().unwrap()]);
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let _ = tx.send(
                    line[at + "listening on ".len()..]
                        .split(' ')
                        .next()
                        .unwrap()
                        .to_string(),
                );
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the service did not start: {}", log.lock().unwrap()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    Server {
        child,
        base,
        log,
        agent,
    }
}

impl Server {
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<(&str, &str)>,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some((u, k)) = user {
            req = req.header("Mendix-Username", u).header("Mendix-ApiKey", k);
        }
        for (n, v) in extra {
            req = req.header(*n, *v);
        }
        req = req.header("Content-Type", "application/json");
        let resp = self
            .agent
            .run(req.body(body.unwrap_or("").to_string()).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        Reply {
            status,
            body,
            headers,
        }
    }

    pub(crate) fn get(&self, path: &str, user: (&str, &str)) -> Reply {
        self.call("GET", path, Some(user), None, &[])
    }

    pub(crate) fn post(&self, path: &str, user: (&str, &str), body: &str) -> Reply {
        self.call("POST", path, Some(user), Some(body), &[])
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill on a child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_for(&mut self.child, Duration::from_secs(60));
        let log = self.log.lock().unwrap().clone();
        (status, log)
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test that fails leaves no service behind.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t0.elapsed() < limit, "the service did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn v1(mode: &str) -> String {
    format!("/api/1/apps/calc/environments/{mode}")
}

pub(crate) fn v2(env: &str) -> String {
    format!("/api/v2/apps/{PROJECT}/environments/{env}")
}

/// Polls until `done` says so (a job or snapshot finishing), at most a minute.
pub(crate) fn poll(server: &Server, path: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let t0 = Instant::now();
    loop {
        let r = server.get(path, ALICE);
        if done(&r) {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn finished(r: &Reply) -> bool {
    matches!(r.json()["state"].as_str(), Some("completed" | "failed"))
}

pub(crate) fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn v1_lists_creates_downloads_and_restores_as_the_seed_says() {
    let s = setup("srv1");
    // Each create holds for a moment, so the snapshot is seen while it is being made.
    let server = start(
        &s,
        &[
            ("MXSNAP_PAUSE_AT", "create-writing"),
            ("MXSNAP_PAUSE_MS", "1500"),
        ],
    );
    let listed = server.get(&format!("{}/snapshots", v1("acceptance")), ALICE);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json(), serde_json::json!([]));

    // create: answers at once; the links are a 500 until the snapshot is made
    let created = server.post(
        &format!("{}/snapshots/", v1("acceptance")),
        ALICE,
        r#"{"Comment": "My user comment"}"#,
    );
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let snap = created.json();
    let id = snap["SnapshotID"].as_str().unwrap().to_string();
    assert_eq!(snap["Comment"], "My user comment");
    assert_eq!(snap["ModelVersion"], "1.0.0.40");
    let links_path = format!("{}/snapshots/{id}", v1("acceptance"));
    let early = server.get(&links_path, ALICE);
    assert_eq!(
        (early.status, early.code().as_str()),
        (500, "INTERNAL_SERVER_ERROR")
    );
    let links = poll(&server, &links_path, |r| {
        if r.status == 500 {
            assert_eq!(r.code(), "INTERNAL_SERVER_ERROR");
        }
        r.status != 500
    });
    assert_eq!(
        links.status,
        200,
        "{}",
        String::from_utf8_lossy(&links.body)
    );
    let links = links.json();
    let listed = server
        .get(&format!("{}/snapshots", v1("Acceptance")), ALICE)
        .json();
    assert_eq!(listed[0]["SnapshotID"], id.as_str());
    assert_eq!(listed[0]["State"], "Completed");
    assert!(listed[0]["CreatedOn"].as_i64().unwrap() > 1_700_000_000_000);

    // the three links, each a file that verifies
    let dir = tempfile::tempdir().unwrap();
    for (key, name) in [
        ("DatabaseAndFiles", "full.tar.gz"),
        ("DatabaseOnly", "db.backup"),
        ("FilesOnly", "files.tar.gz"),
    ] {
        let url = links[key].as_str().unwrap();
        assert!(url.starts_with(&server.base), "{url}");
        let got = server.call("GET", url, None, None, &[]);
        assert_eq!(got.status, 200, "{key}");
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert!(
            got.header("content-disposition")
                .unwrap()
                .contains("attachment")
        );
        let file = save(dir.path(), name, &got.body);
        ok(mxsnap(&["verify", file.to_str().unwrap()]));
    }
    // a link is also a source: verify streams it from the service
    ok(mxsnap(&[
        "verify",
        links["DatabaseAndFiles"].as_str().unwrap(),
    ]));
    // a forged link
    let forged = links["FilesOnly"]
        .as_str()
        .unwrap()
        .replace(".files.", ".full.");
    assert_eq!(server.call("GET", &forged, None, None, &[]).status, 404);

    // restore into the stopped Test environment of the same app: rows and files arrive
    let restore_path = format!("{}/restore/{id}", v1("test"));
    let restored = server.post(&restore_path, ALICE, "");
    assert_eq!(
        restored.status,
        200,
        "{}",
        String::from_utf8_lossy(&restored.body)
    );
    assert_eq!(restored.json()["SnapshotID"], id.as_str());
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    let restored_files = tree_hashes(&s.target.files);
    assert_eq!(restored_files.len(), 45);

    // while it runs (a live pid in its pid file) it is refused and nothing changes
    std::fs::write(
        s.dir.path().join("test.pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    s.target
        .db
        .psql("INSERT INTO \"shop$customer\" VALUES (98, 'Newer', 'n@example.com')");
    let before = s.target.state();
    let refused = server.post(&restore_path, ALICE, "");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.code(), "ERROR_NOT_ALLOWED");
    assert!(
        refused.json()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("stop")
    );
    assert_eq!(s.target.state(), before);
    std::fs::remove_file(s.dir.path().join("test.pid")).unwrap();

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(ALICE.1), "the key was logged: {log}");
}

#[test]
fn v1_error_codes_have_the_seeds_statuses() {
    let s = setup("srv1e");
    let server = start(&s, &[]);
    let list = format!("{}/snapshots", v1("acceptance"));
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            server.call("GET", &list, None, None, &[]),
            401,
            "UNAUTHORIZED",
        ),
        (server.get(&list, (ALICE.0, "wrong")), 401, "UNAUTHORIZED"),
        (
            server.get(&list, ("mallory@example.com", ALICE.1)),
            401,
            "UNAUTHORIZED",
        ),
        (server.get(&list, BOB), 403, "NO_ACCESS"),
        (
            server.get("/api/1/apps/calc/environments/b%40d!/snapshots", ALICE),
            400,
            "INVALID_ENVIRONMENT",
        ),
        (
            server.get("/api/1/apps/calc/environments//snapshots", ALICE),
            400,
            "INVALID_PARAMETERS",
        ),
        (
            server.get(&format!("{}/snapshots", v1("staging")), ALICE),
            404,
            "ENVIRONMENT_NOT_FOUND",
        ),
        (
            server.get("/api/1/apps/nosuch/environments/test/snapshots", ALICE),
            404,
            "ENVIRONMENT_NOT_FOUND",
        ),
        (
            server.get(
                &format!("{list}/0c982ca3-621f-40e9-9c6e-96492934170a"),
                ALICE,
            ),
            404,
            "SNAPSHOT_NOT_FOUND",
        ),
        (
            server.get(&format!("{list}/..%2F..%2Fetc"), ALICE),
            404,
            "SNAPSHOT_NOT_FOUND",
        ),
        (
            server.get(&format!("{list}/../../etc"), ALICE),
            404,
            "NOT_FOUND",
        ),
        (
            server.post(
                &format!(
                    "{}/restore/0c982ca3-621f-40e9-9c6e-96492934170a",
                    v1("test")
                ),
                ALICE,
                "",
            ),
            400,
            "NOT_FOUND",
        ),
        (
            server.post(
                &format!("{}/snapshots", v1("acceptance")),
                ALICE,
                "{not json",
            ),
            400,
            "INVALID_PARAMETERS",
        ),
    ];
    for (reply, status, code) in cases {
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (status, code),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // a catalogue that cannot be read
    std::fs::create_dir_all(s.dir.path().join("repo/snapshots/broken.json")).unwrap();
    let r = server.get(&list, ALICE);
    assert_eq!(
        (r.status, r.code().as_str()),
        (500, "SNAPSHOT_LISTING_FAILED")
    );
    server.kill();
}

/// The archive is catalogued before its job has ended; until the job ends the snapshot shows
/// running, so a client that sees it completed may start the next job at once (a CI run once
/// got ENVIRONMENT_BUSY there).
#[test]
fn a_snapshot_seen_completed_leaves_its_environment_free() {
    let s = setup("srvfree");
    let server = start(
        &s,
        &[
            ("MXSNAP_PAUSE_AT", "job-ending"),
            ("MXSNAP_PAUSE_MS", "1500"),
        ],
    );
    let snaps = format!("{}/snapshots", v2(ACC));
    let created = server.post(&snaps, ALICE, "");
    assert_eq!(created.status, 201);
    let id = created.json()["snapshot_id"].as_str().unwrap().to_string();
    let seen_running_when_catalogued = std::cell::Cell::new(false);
    let done = poll(&server, &format!("{snaps}/{id}"), |r| {
        let catalogued = s.dir.path().join(format!("repo/snapshots/{id}.json"));
        let ended = finished(r);
        if !ended && std::fs::read_to_string(&catalogued).is_ok_and(|t| t.contains("ompleted")) {
            seen_running_when_catalogued.set(true);
        }
        ended
    });
    assert_eq!(done.json()["state"], "completed", "{}", done.json());
    let next = server.post(&snaps, ALICE, "");
    assert_eq!(next.status, 201, "{}", String::from_utf8_lossy(&next.body));
    poll(
        &server,
        &format!("{snaps}/{}", next.json()["snapshot_id"].as_str().unwrap()),
        finished,
    );
    server.kill();
    assert!(
        seen_running_when_catalogued.get(),
        "the pause after the work did not show: the test checks nothing"
    );
}

#[test]
fn v2_jobs_archives_ranges_comments_and_deletes() {
    let s = setup("srv2");
    let server = start(
        &s,
        &[
            ("MXSNAP_PAUSE_AT", "create-writing"),
            ("MXSNAP_PAUSE_MS", "1500"),
        ],
    );
    let snaps = format!("{}/snapshots", v2(ACC));
    let created = server.post(&snaps, ALICE, r#"{"comment": "first"}"#);
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let id = created.json()["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(created.json()["state"], "queued");
    // one job per environment: a second create, or an archive of the unfinished snapshot
    let second = server.post(&snaps, ALICE, "");
    assert_eq!(
        (second.status, second.code().as_str()),
        (400, "ENVIRONMENT_BUSY")
    );
    let early = server.post(&format!("{snaps}/{id}/archives"), ALICE, "");
    assert_eq!(
        (early.status, early.code().as_str()),
        (400, "INVALID_STATE")
    );
    let done = poll(&server, &format!("{snaps}/{id}"), finished);
    assert_eq!(done.json()["state"], "completed", "{}", done.json());
    assert!(done.json()["finished_at"].as_str().unwrap().ends_with('Z'));

    // paging
    let second = server.post(&snaps, ALICE, r#"{"comment": "second"}"#);
    let id2 = second.json()["snapshot_id"].as_str().unwrap().to_string();
    poll(&server, &format!("{snaps}/{id2}"), finished);
    let page = server
        .get(&format!("{snaps}?offset=0&limit=1"), ALICE)
        .json();
    assert_eq!(page["total"], 2);
    assert_eq!(page["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["snapshots"][0]["snapshot_id"],
        id2.as_str(),
        "newest first"
    );
    let page = server
        .get(&format!("{snaps}?offset=1&limit=1"), ALICE)
        .json();
    assert_eq!(page["snapshots"][0]["snapshot_id"], id.as_str());
    let bad = server.get(&format!("{snaps}?limit=0"), ALICE);
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (400, "INVALID_PARAMETERS")
    );

    // comment edit keeps updated_at
    let before = server.get(&format!("{snaps}/{id}"), ALICE).json();
    let put = server.call(
        "PUT",
        &format!("{snaps}/{id}"),
        Some(ALICE),
        Some(r#"{"comment": "edited"}"#),
        &[],
    );
    assert_eq!(put.status, 200);
    assert_eq!(put.json()["comment"], "edited");
    assert_eq!(put.json()["updated_at"], before["updated_at"]);

    // an archive job of the database, downloaded in two resumed halves
    let unsupported = server.post(
        &format!("{snaps}/{id}/archives?data_type=everything"),
        ALICE,
        "",
    );
    assert_eq!(
        (unsupported.status, unsupported.code().as_str()),
        (400, "UNSUPPORTED")
    );
    let job = server.post(
        &format!("{snaps}/{id}/archives?data_type=database_only"),
        ALICE,
        "",
    );
    assert_eq!(job.status, 201, "{}", String::from_utf8_lossy(&job.body));
    assert!(job.json()["url"].is_null());
    let archive = job.json()["archive_id"].as_str().unwrap().to_string();
    let job = poll(
        &server,
        &format!("{snaps}/{id}/archives/{archive}"),
        finished,
    )
    .json();
    assert_eq!(job["state"], "completed", "{job}");
    let url = job["url"].as_str().unwrap().to_string();
    let whole = server.call("GET", &url, None, None, &[]);
    assert_eq!(whole.status, 200);
    let etag = whole.header("etag").unwrap().to_string();
    let len = whole.body.len();
    assert_eq!(whole.header("content-length").unwrap(), len.to_string());
    let half = len / 2;
    let first = server.call(
        "GET",
        &url,
        None,
        None,
        &[("Range", &format!("bytes=0-{}", half - 1))],
    );
    assert_eq!(first.status, 206);
    assert_eq!(
        first.header("content-range").unwrap(),
        format!("bytes 0-{}/{len}", half - 1)
    );
    let rest = server.call(
        "GET",
        &url,
        None,
        None,
        &[("Range", &format!("bytes={half}-")), ("If-Range", &etag)],
    );
    assert_eq!(rest.status, 206);
    let mut joined = first.body.clone();
    joined.extend_from_slice(&rest.body);
    assert_eq!(joined, whole.body);
    let dir = tempfile::tempdir().unwrap();
    let file = save(dir.path(), "db.backup", &joined);
    ok(mxsnap(&["verify", file.to_str().unwrap()]));
    // a stale If-Range gets the whole file; a range past the end is 416
    let stale = server.call(
        "GET",
        &url,
        None,
        None,
        &[("Range", "bytes=10-"), ("If-Range", "\"other\"")],
    );
    assert_eq!(stale.status, 200);
    let past = server.call(
        "GET",
        &url,
        None,
        None,
        &[("Range", &format!("bytes={len}-"))],
    );
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range").unwrap(),
        format!("bytes */{len}")
    );

    // delete, then it is gone
    let del = server.call("DELETE", &format!("{snaps}/{id2}"), Some(ALICE), None, &[]);
    assert_eq!(del.status, 204);
    let gone = server.get(&format!("{snaps}/{id2}"), ALICE);
    assert_eq!((gone.status, gone.code().as_str()), (404, "NOT_FOUND"));

    // v2 access and lookups
    let r = server.get(&format!("{}/snapshots", v2(ACC)), BOB);
    assert_eq!((r.status, r.code().as_str()), (403, "NO_ACCESS"));
    let r = server.get(
        &format!("/api/v2/apps/{PROJECT}/environments/{OTHER_ENV}/snapshots"),
        ALICE,
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "ENVIRONMENT_NOT_FOUND")
    );
    let r = server.get(
        &format!(
            "{snaps}/{id}/archives/{}",
            "0c982ca3-621f-40e9-9c6e-96492934170a"
        ),
        ALICE,
    );
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));

    // a restore job into calc/Test; a snapshot of another app is not found
    let restores = format!("{}/restores", v2(TEST));
    let r = server.post(&restores, ALICE, "");
    assert_eq!((r.status, r.code().as_str()), (400, "INVALID_PARAMETERS"));
    let r = server.post(
        &format!("{restores}?source_snapshot_id=0c982ca3-621f-40e9-9c6e-96492934170a"),
        ALICE,
        "",
    );
    assert_eq!((r.status, r.code().as_str()), (400, "NOT_FOUND"));
    let job = server.post(
        &format!("{restores}?source_snapshot_id={id}&db_only=true"),
        BOB,
        "",
    );
    assert_eq!(job.status, 201, "{}", String::from_utf8_lossy(&job.body));
    assert_eq!(job.json()["source_environment_id"], ACC);
    assert_eq!(job.json()["target_environment_id"], TEST);
    let restore_id = job.json()["restore_id"].as_str().unwrap().to_string();
    let files_before = tree_hashes(&s.target.files);
    let done = poll(&server, &format!("{restores}/{restore_id}"), finished).json();
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    assert_eq!(
        tree_hashes(&s.target.files),
        files_before,
        "db_only leaves the files"
    );
    let r = server.get(
        &format!("{restores}/0c982ca3-621f-40e9-9c6e-96492934170a"),
        ALICE,
    );
    assert_eq!((r.status, r.code().as_str()), (400, "NOT_FOUND"));

    // the OpenAPI description names every route used here
    let spec = server
        .call("GET", "/api/openapi.json", None, None, &[])
        .json();
    for path in [
        "/api/1/apps/{AppId}/environments/{Mode}/snapshots",
        "/api/v2/apps/{ProjectId}/environments/{EnvironmentId}/restores/{RestoreId}",
        "/download/{Token}",
    ] {
        assert!(spec["paths"][path].is_object(), "{path}");
    }
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn a_crashed_server_fails_its_jobs_and_sigterm_leaves_a_restore_undone() {
    let s = setup("srv3");
    // a snapshot job killed with the server
    let server = start(
        &s,
        &[
            ("MXSNAP_PAUSE_AT", "create-writing"),
            ("MXSNAP_PAUSE_MS", "20000"),
        ],
    );
    let snaps = format!("{}/snapshots", v2(ACC));
    let id = server.post(&snaps, ALICE, "").json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Running, and (once its first stage has begun) saying how far it is in bytes of total;
    // the pause holds it there for 20 s.
    let running = poll(&server, &format!("{snaps}/{id}"), |r| {
        let j = r.json();
        j["state"] == "running"
            && j["status_message"]
                .as_str()
                .is_some_and(|m| m.contains(" of ") && m.contains("bytes"))
    });
    assert_eq!(running.json()["state"], "running");
    server.kill();
    let server = start(&s, &[]);
    let after = server.get(&format!("{snaps}/{id}"), ALICE).json();
    assert_eq!(after["state"], "failed", "{after}");
    assert!(
        after["status_message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{after}"
    );
    assert!(server.log.lock().unwrap().contains("interrupted"));
    // a good snapshot to restore
    let id = server.post(&snaps, ALICE, "").json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = poll(&server, &format!("{snaps}/{id}"), finished).json();
    assert_eq!(done["state"], "completed", "{done}");
    server.terminate();

    // SIGTERM while a restore is extracting: the target is exactly as before, the job failed
    let server = start(
        &s,
        &[("MXSNAP_PAUSE_AT", "extract"), ("MXSNAP_PAUSE_MS", "3000")],
    );
    let before = s.target.state();
    let restores = format!("{}/restores", v2(TEST));
    let job = server.post(&format!("{restores}?source_snapshot_id={id}"), ALICE, "");
    assert_eq!(job.status, 201, "{}", String::from_utf8_lossy(&job.body));
    let restore_id = job.json()["restore_id"].as_str().unwrap().to_string();
    poll(&server, &format!("{restores}/{restore_id}"), |r| {
        r.json()["state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(s.target.state(), before, "{log}");
    s.target.assert_clean();
    let server = start(&s, &[]);
    let job = server
        .get(&format!("{restores}/{restore_id}"), ALICE)
        .json();
    assert_eq!(job["state"], "failed", "{job}");
    server.kill();

    // a v1 restore waiting for its job when SIGTERM comes: 503 SERVICE_UNAVAILABLE, target
    // unchanged
    let server = start(
        &s,
        &[("MXSNAP_PAUSE_AT", "extract"), ("MXSNAP_PAUSE_MS", "3000")],
    );
    let base = server.base.clone();
    let path = format!("{base}{}/restore/{id}", v1("test"));
    let agent = server.agent.clone();
    let waiting = std::thread::spawn(move || {
        let resp = agent
            .post(&path)
            .header("Mendix-Username", ALICE.0)
            .header("Mendix-ApiKey", ALICE.1)
            .send_empty()
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = serde_json::from_reader(resp.into_body().into_reader()).unwrap();
        (status, body)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let (code, body) = waiting.join().unwrap();
    assert_eq!(
        (code, body["errorCode"].as_str()),
        (503, Some("SERVICE_UNAVAILABLE")),
        "{body}"
    );
    assert_eq!(s.target.state(), before, "{log}");
    s.target.assert_clean();
    let _ = harness::server();
}

/// The fields a schema of the OpenAPI description requires are all in `value`.
fn conforms(spec: &Value, schema: &str, value: &Value) {
    let required = spec["components"]["schemas"][schema]["required"]
        .as_array()
        .unwrap_or_else(|| panic!("no schema {schema}"));
    for field in required {
        let f = field.as_str().unwrap();
        assert!(value.get(f).is_some(), "{schema}: {f} missing in {value}");
    }
}

#[test]
fn the_openapi_description_matches_what_the_service_does() {
    let s = setup("srvapi");
    let server = start(&s, &[]);
    let spec = server
        .call("GET", "/api/openapi.json", None, None, &[])
        .json();
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{AppId}", "calc")
            .replace("{Mode}", "acceptance")
            .replace("{ProjectId}", PROJECT)
            .replace("{EnvironmentId}", ACC)
            .replace("{Token}", "not-a-token")
            .replace("{SnapshotId}", "0c982ca3-621f-40e9-9c6e-96492934170a")
            .replace("{ArchiveId}", "0c982ca3-621f-40e9-9c6e-96492934170b")
            .replace("{RestoreId}", "0c982ca3-621f-40e9-9c6e-96492934170c");
        for method in ["get", "post", "put", "delete"] {
            let Some(op) = item.get(method) else {
                continue;
            };
            operations += 1;
            // Without a key: every operation exists and answers one of its documented statuses.
            let r = server.call(&method.to_uppercase(), &concrete, None, None, &[]);
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.contains(&&r.status.to_string()),
                "{method} {path}: {} is not among {documented:?}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            if r.status >= 400 && r.header("content-type") == Some("application/json") {
                conforms(&spec, "Error", &r.json());
            }
            // With one: still a documented status, and the body has the schema's fields.
            let r = server.call(
                &method.to_uppercase(),
                &concrete,
                Some(ALICE),
                Some(""),
                &[],
            );
            assert!(
                documented.contains(&&r.status.to_string()),
                "{method} {path} (signed in): {} is not among {documented:?}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            let schema =
                op["responses"][r.status.to_string()]["content"]["application/json"]["schema"]
                    .clone();
            if let Some(name) = schema["$ref"].as_str() {
                conforms(&spec, name.rsplit('/').next().unwrap(), &r.json());
            }
        }
    }
    assert_eq!(operations, 15);
    // the snapshot the walk made (its second create found the environment busy), finished,
    // has every field
    let snaps = format!("{}/snapshots", v2(ACC));
    let page = poll(&server, &snaps, |r| {
        let list = r.json()["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        !list.is_empty() && list.iter().all(|x| x["state"] == "completed")
    })
    .json();
    let id = page["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = server.get(&format!("{snaps}/{id}"), ALICE).json();
    conforms(&spec, "Snapshot", &done);
    conforms(&spec, "SnapshotPage", &server.get(&snaps, ALICE).json());
    let v1_list = server
        .get(&format!("{}/snapshots", v1("acceptance")), ALICE)
        .json();
    conforms(&spec, "SnapshotV1", &v1_list[0]);
    conforms(
        &spec,
        "LinksV1",
        &server
            .get(&format!("{}/snapshots/{id}", v1("acceptance")), ALICE)
            .json(),
    );
    server.kill();
}

#[test]
fn a_missed_night_is_logged_and_made_up() {
    let s = setup("srvnight");
    let server = start(&s, &[]);
    server.kill();
    // The service last made its nightly snapshots two days ago; the schedule is midnight UTC.
    let two_days_ago = chrono::Utc::now() - chrono::Duration::days(2);
    std::fs::write(
        s.dir.path().join("repo/serve/schedule.json"),
        serde_json::json!({"last_night": two_days_ago.format("%Y-%m-%dT00:00:00Z").to_string()})
            .to_string(),
    )
    .unwrap();
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str("\n[schedule]\ntime = \"00:00\"\nzone = \"UTC\"\n");
    std::fs::write(&s.config, config).unwrap();
    let server = start(&s, &[]);
    let snaps = format!("{}/snapshots", v2(ACC));
    let listed = poll(&server, &snaps, |r| {
        r.json()["snapshots"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["state"] == "completed"))
    })
    .json();
    let id = listed["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let record: Value = serde_json::from_slice(
        &std::fs::read(s.dir.path().join(format!("repo/snapshots/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["created_by"], "Nightly");
    let t0 = Instant::now();
    while !server
        .log
        .lock()
        .unwrap()
        .contains("next nightly snapshots at")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("were missed"), "{log}");
    server.terminate();
}
