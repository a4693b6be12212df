//! The Backups page of `mxsnap serve` in a real headless Chromium (Debian's, driven through
//! chromedriver): sign in, create and watch it complete, download each variant, restore into
//! another environment, a refused restore of a running one, every kind of upload, comments,
//! deleting; the cookie's flags and the CSRF check. Screenshots go to
//! `target/ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::tree_hashes;
use crate::serve::{ALICE, BOB, Setup, setup, start};
use crate::support::*;
use crate::webdriver::Browser;

fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

const JOB: Duration = Duration::from_secs(180);

fn sign_in(b: &Browser, base: &str, user: (&str, &str)) {
    b.goto(&format!("{base}/ui/"));
    b.type_into("#username", user.0);
    // By keyboard: Enter in the key field sends the form.
    b.type_into("#key", &format!("{}\u{E007}", user.1));
    b.wait_for("header .account", Duration::from_secs(10));
}

/// Waits on a job's page for its end (the page's script reloads it), returns its outcome.
fn job_outcome(b: &Browser) -> String {
    b.wait_for("#job-result", JOB);
    b.text("#job-result")
}

fn expect_completed(b: &Browser) {
    let outcome = job_outcome(b);
    assert!(outcome.starts_with("Completed"), "{outcome}");
}

/// Chooses the upload's kind and file on calc/Test's upload page and sends it.
fn upload(b: &Browser, base: &str, kind: &str, file: &Path) {
    b.goto(&format!("{base}/ui/environments/calc/Test/upload"));
    b.click(&format!("input[name=kind][value={kind}]"));
    b.click("input[name=confirmed]");
    let input = b.find("#file");
    b.send_keys(&input, file.to_str().unwrap());
    b.click("form[enctype] button[type=submit]");
    b.wait_text("h1", "Uploading data", Duration::from_secs(60));
}

/// The store's files a snapshot of the source holds, with their hashes.
fn snapshot_tree(s: &Setup) -> std::collections::BTreeMap<String, String> {
    let wanted = expected_tree(&s.source);
    tree_hashes(&store())
        .into_iter()
        .filter(|(k, _)| wanted.contains(k))
        .collect()
}

fn table_count(s: &Setup) -> String {
    s.target.db.psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN \
         ('pg_catalog', 'information_schema')",
    )
}

/// A zip of the store's files as the cloud's upload takes them (`aa/bb/<uuid>` names).
fn files_zip(store: &Path, out: &Path) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    for (rel, _) in tree_hashes(store) {
        zip.start_file(rel.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::copy(
            &mut std::fs::File::open(store.join(&rel)).unwrap(),
            &mut zip,
        )
        .unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn the_backups_page_in_a_browser() {
    let s = setup("web");
    // Test runs a newer model than the backups made of Acceptance (1.0.0.40).
    let config = std::fs::read_to_string(&s.config).unwrap();
    let pid_line = config.lines().find(|l| l.starts_with("pid_file")).unwrap();
    std::fs::write(
        &s.config,
        config.replace(
            pid_line,
            &format!("{pid_line}\nmodel_version = \"2.0.0.1\""),
        ),
    )
    .unwrap();
    // Each create holds for a moment, so its progress can be watched.
    let server = start(
        &s,
        &[
            ("MXSNAP_PAUSE_AT", "create-writing"),
            ("MXSNAP_PAUSE_MS", "4000"),
        ],
    );
    let base = server.base.clone();
    let b = Browser::start();
    let shots = shots();

    // Not signed in: every page leads to the sign-in form; a wrong key is refused.
    b.goto(&format!("{base}/ui/environments/calc/Acceptance"));
    assert!(b.url().ends_with("/ui/sign-in"), "{}", b.url());
    b.type_into("#username", ALICE.0);
    b.type_into("#key", "not-the-key");
    b.click("form[action='/ui/sign-in'] button");
    b.wait_for(".error", Duration::from_secs(10));
    assert!(b.text(".error").contains("wrong API key"));
    b.screenshot(&shots, "01-sign-in-refused");
    sign_in(&b, &base, ALICE);
    assert!(
        b.url().ends_with("/ui/environments/calc/Acceptance"),
        "{}",
        b.url()
    );
    // The session cookie: HttpOnly, SameSite=Strict, out of the page script's reach.
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "mxsnap_session")
        .expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    let visible = b.script("return document.cookie;");
    assert!(!visible.as_str().unwrap().contains("mxsnap_session"));
    // Nothing secret in the URL, a CSRF token in every form.
    assert!(!b.url().contains(ALICE.1));
    let forms = b.script(
        "return [...document.forms].filter(f => f.method === 'post' && \
         !f.querySelector('input[name=csrf]')).length;",
    );
    assert_eq!(forms, 0);

    // A POST that carries the cookie but not the token changes nothing.
    let token = cookie["value"].as_str().unwrap().to_string();
    let forged = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(&format!("{base}/ui/environments/calc/Acceptance/snapshots"))
        .header("Cookie", &format!("mxsnap_session={token}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("comment=forged&csrf=wrong")
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    b.goto(&format!("{base}/ui/environments/calc/Acceptance"));
    assert!(b.exists("p.empty"), "{}", b.text("main"));

    // Create a backup with a comment and watch it complete.
    b.type_into("#comment", "before the upgrade");
    b.click("form[action$='/snapshots'] button");
    b.wait_text("h1", "Creating a backup", Duration::from_secs(20));
    // The page's script follows the job without reloading: stage and bytes of total.
    b.script("window.stillThisPage = true;");
    b.wait_contains("#job-stage", "writing the files:", Duration::from_secs(20));
    let stage = b.text("#job-stage");
    assert!(stage.contains(" of ") && stage.contains('%'), "{stage}");
    assert_eq!(b.script("return window.stillThisPage === true;"), true);
    assert!(b.property("#job-bar", "max").as_f64().unwrap() > 1.0);
    b.screenshot(&shots, "02-create-progress");
    expect_completed(&b);
    b.screenshot(&shots, "03-create-completed");
    b.click("main a[href*='/snapshots/']");
    b.wait_for("dl.details", Duration::from_secs(10));
    let details = b.text("dl.details");
    assert!(details.contains("Completed"), "{details}");
    assert!(details.contains("before the upgrade"), "{details}");
    assert!(details.contains(ALICE.0), "created by: {details}");
    assert!(details.contains("1.0.0.40"), "{details}");
    let details_url = b.url();

    // The list shows it, at both widths, with no sideways scrolling on a phone.
    b.goto(&format!("{base}/ui/environments/calc/Acceptance"));
    let row = b.text("table.backups tbody tr");
    assert!(
        row.contains("Completed") && row.contains("before the upgrade"),
        "{row}"
    );
    b.screenshot(&shots, "04-list-1280");
    b.resize(390, 844);
    let overflow = b.script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    );
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "scrolls sideways by {overflow}"
    );
    b.screenshot(&shots, "05-list-390");
    b.resize(1280, 900);

    // Download each variant: prepared as a job, then Show URL and Download; the file
    // arrives and verifies.
    let mut downloaded = Vec::new();
    for (variant, shot) in [
        ("full", "06-download-ready"),
        ("database", ""),
        ("files", ""),
    ] {
        b.goto(&details_url);
        b.click(&format!("button[name=variant][value={variant}]"));
        expect_completed(&b);
        b.click("details summary");
        let shown = b.property("#download-url", "value");
        let href = b.property("#download-link", "href");
        assert_eq!(shown, href);
        assert!(
            shown
                .as_str()
                .unwrap()
                .starts_with(&format!("{base}/download/"))
        );
        if !shot.is_empty() {
            b.screenshot(&shots, shot);
        }
        let before = b.download_count();
        b.click("#download-link");
        let file = b.wait_download(before, Duration::from_secs(60));
        ok(mxsnap(&["verify", file.to_str().unwrap()]));
        downloaded.push(file);
    }
    let (full, database, files) = (&downloaded[0], &downloaded[1], &downloaded[2]);
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name(full).starts_with("files_and_database-"),
        "{}",
        name(full)
    );
    assert!(
        name(database).starts_with("database-"),
        "{}",
        name(database)
    );
    assert!(name(files).starts_with("files-"), "{}", name(files));

    // Restoring into Test while it runs is refused with the stop message; nothing changes.
    let pid = s.dir.path().join("test.pid");
    std::fs::write(&pid, std::process::id().to_string()).unwrap();
    let before = s.target.state();
    b.goto(&details_url);
    b.click("#target option[value=Test]");
    b.click("form[action$='/restore'] button");
    b.wait_for(".error", Duration::from_secs(20));
    let refusal = b.text(".error");
    assert!(refusal.contains("Please stop calc (Test)"), "{refusal}");
    b.screenshot(&shots, "07-restore-refused");
    assert_eq!(s.target.state(), before);
    std::fs::remove_file(&pid).unwrap();

    // Stopped, it asks for confirmation, then restores: the rows and files arrive.
    b.goto(&details_url);
    b.click("#target option[value=Test]");
    b.click("form[action$='/restore'] button");
    b.wait_text("h1", "Restore this backup?", Duration::from_secs(20));
    assert!(
        b.text("main")
            .contains("replaces the database and the uploaded files of calc / Test")
    );
    let warning = b.text(".warning");
    assert!(
        warning.contains("model version 1.0.0.40, older than the 2.0.0.1"),
        "{warning}"
    );
    b.screenshot(&shots, "08-restore-confirm");
    assert_eq!(s.target.state(), before, "asking changed something");
    b.click("button.danger");
    expect_completed(&b);
    b.screenshot(&shots, "09-restore-completed");
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    assert_eq!(tree_hashes(&s.target.files), snapshot_tree(&s));

    // Uploads into Test clear it first, as the cloud's do.
    // A database alone: the rows arrive, the files are gone.
    s.target
        .db
        .psql("INSERT INTO \"shop$customer\" VALUES (97, 'Later', 'l@example.com')");
    upload(&b, &base, "database", database);
    b.wait_text("h1", "Uploading data", Duration::from_secs(60));
    expect_completed(&b);
    b.screenshot(&shots, "10-upload-database-completed");
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    assert!(tree_hashes(&s.target.files).is_empty());
    // Uploaded files alone (tar.gz, then zip): the files arrive, the database is empty.
    upload(&b, &base, "files", files);
    expect_completed(&b);
    assert_eq!(tree_hashes(&s.target.files), snapshot_tree(&s));
    assert_eq!(table_count(&s), "0");
    std::fs::write(s.target.files.join("stray"), b"removed by the next upload").unwrap();
    let zip = s.dir.path().join("files.zip");
    files_zip(&store(), &zip);
    upload(&b, &base, "files", &zip);
    expect_completed(&b);
    assert_eq!(tree_hashes(&s.target.files), tree_hashes(&store()));
    // A full snapshot: both.
    upload(&b, &base, "full", full);
    expect_completed(&b);
    assert_eq!(s.target.db.checksums(), s.source.checksums());
    assert_eq!(tree_hashes(&s.target.files), snapshot_tree(&s));

    // Bad uploads fail with the reason and change nothing: the wrong kind, a cut archive.
    let before = s.target.state();
    upload(&b, &base, "database", files);
    let outcome = job_outcome(&b);
    assert!(outcome.contains("not a database"), "{outcome}");
    assert!(outcome.contains("only uploaded files"), "{outcome}");
    b.screenshot(&shots, "11-upload-wrong-kind");
    assert_eq!(s.target.state(), before);
    let bytes = std::fs::read(full).unwrap();
    let cut = s.dir.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    upload(&b, &base, "full", &cut);
    let outcome = job_outcome(&b);
    assert!(outcome.starts_with("Failed"), "{outcome}");
    assert_eq!(s.target.state(), before);
    assert!(
        std::fs::read_dir(s.dir.path().join("repo/serve/uploads"))
            .unwrap()
            .next()
            .is_none(),
        "uploads are removed once their job ends"
    );

    // Edit the comment, then delete the backup (after a confirmation).
    b.goto(&details_url);
    b.type_into("#new-comment", "kept for the audit");
    b.click("form[action$='/comment'] button");
    b.wait_contains("dl.details", "kept for the audit", Duration::from_secs(10));
    b.click("form[action$='/delete'] button");
    b.wait_text("h1", "Delete this backup?", Duration::from_secs(10));
    assert!(b.text("main").contains("removed for good"));
    b.click("button.danger");
    b.wait_for("p.empty", Duration::from_secs(10));

    // Paged, newest first: 22 failed attempts planted in Test's catalogue make two pages.
    for i in 0..22u32 {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        let rec = serde_json::json!({
            "id": id, "environment": "calc.Test", "created_by": "Nightly", "kind": "nightly",
            "state": "Failed", "status_message": "the database was unreachable",
            "created_on": format!("2026-01-{:02}T19:00:00Z", i + 1), "finished_on": null,
            "expires_on": null, "model_version": null, "comment": format!("attempt {i}"),
            "archive": null, "archive_bytes": null, "archive_sha256": null, "dump_bytes": null,
            "files_bytes": null, "database_bytes": null, "file_count": null, "pid": null,
        });
        std::fs::write(
            s.dir.path().join(format!("repo/snapshots/{id}.json")),
            rec.to_string(),
        )
        .unwrap();
    }
    b.goto(&format!("{base}/ui/environments/calc/Test"));
    assert!(
        b.text(".pager").contains("Page 1 of 2 (22 backups)"),
        "{}",
        b.text("main")
    );
    assert!(b.text("table.backups tbody tr").contains("attempt 21"));
    assert_eq!(
        b.script("return document.querySelectorAll('table.backups tbody tr').length;"),
        20
    );
    b.click(".pager a[rel=next]");
    b.wait_contains(".pager", "Page 2 of 2", Duration::from_secs(10));
    assert_eq!(
        b.script("return document.querySelectorAll('table.backups tbody tr').length;"),
        2
    );
    assert!(b.text("table.backups tbody tr").contains("attempt 1"));
    assert!(b.text("table.backups").contains("Failed"));

    // bob sees only calc/Test: Acceptance is not found for him.
    b.click("header .account button");
    b.wait_for("#username", Duration::from_secs(10));
    sign_in(&b, &base, BOB);
    assert!(
        b.url().ends_with("/ui/environments/calc/Test"),
        "{}",
        b.url()
    );
    b.goto(&format!("{base}/ui/environments/calc/Acceptance"));
    assert!(b.text("main").contains("no access"), "{}", b.text("main"));

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(ALICE.1), "a key was logged: {log}");

    // With a size limit: the page stops a larger file before sending it, and the service
    // refuses one sent anyway, nothing written and nothing changed.
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        config.replacen("\nrepo = ", "\nmax_upload_bytes = 50000\nrepo = ", 1),
    )
    .unwrap();
    // An upload left by a service that died while it arrived is removed at the next start.
    let stale = s.dir.path().join("repo/serve/uploads/stale.upload");
    std::fs::write(&stale, b"half an upload").unwrap();
    let server = start(&s, &[]);
    assert!(!stale.exists());
    let base = server.base.clone();
    sign_in(&b, &base, ALICE);
    let before = s.target.state();
    b.goto(&format!("{base}/ui/environments/calc/Test/upload"));
    b.click("input[name=confirmed]");
    let input = b.find("#file");
    b.send_keys(&input, full.to_str().unwrap());
    b.click("form[enctype] button[type=submit]");
    b.wait_contains("#file-problem", "Nothing was sent", Duration::from_secs(10));
    b.screenshot(&shots, "12-upload-too-large");
    let csrf = b.property("input[name=csrf]", "value");
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "mxsnap_session")
        .unwrap();
    let boundary = "mxsnap-test-boundary";
    let mut body = Vec::new();
    for (name, value) in [
        ("csrf", csrf.as_str().unwrap()),
        ("kind", "full"),
        ("confirmed", "yes"),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.tar.gz\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&std::fs::read(full).unwrap());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(&format!("{base}/ui/environments/calc/Test/upload"))
        .header(
            "Cookie",
            &format!("mxsnap_session={}", cookie["value"].as_str().unwrap()),
        )
        .header(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let page = resp.into_body().read_to_string().unwrap();
    assert!(page.contains("larger than"), "{page}");
    assert_eq!(s.target.state(), before);
    assert!(
        std::fs::read_dir(s.dir.path().join("repo/serve/uploads"))
            .unwrap()
            .next()
            .is_none()
    );
    drop(b);
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
}
