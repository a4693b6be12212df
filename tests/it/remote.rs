//! Archives at a URL: verify and restore stream from `http://`, through a test server that
//! misbehaves on purpose (cuts the connection, sends fewer bytes than Content-Length, stalls,
//! answers 500 first, ignores Range, changes the file mid-way). Each case lands byte-exact or
//! fails clearly with the target unchanged.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::restore::{Env, snapshot};
use crate::support::*;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The first response stops after this many bytes (the connection closes).
    CutAt(usize),
    /// The first response sends headers and this many bytes, then stalls.
    StallAt(usize),
    /// The first two requests get a 500.
    ErrorsFirst,
    /// Range is ignored (always 200 with the whole file); the first response is cut.
    IgnoreRangeCutAt(usize),
    /// The first response is cut; afterwards the file has another ETag (If-Range fails).
    ChangesAfterCut(usize),
    /// The first response is cut; then 503 for ever.
    DiesAfterCut(usize),
}

struct FaultyServer {
    url: String,
    requests: Arc<AtomicUsize>,
    ranges: Arc<Mutex<Vec<String>>>,
}

fn serve(bytes: Vec<u8>, fault: Fault) -> FaultyServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/snap.tar.gz", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), ranges.clone());
    std::thread::spawn(move || {
        let bytes = Arc::new(bytes);
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let (bytes, seen) = (bytes.clone(), seen.clone());
            // One thread a connection: a stalled one must not hold up the next.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                let mut if_range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                    if lower.starts_with("if-range:") {
                        if_range = Some(line[9..].trim().to_string());
                    }
                }
                seen.lock().unwrap().push(format!("{range:?}"));
                let etag = match fault {
                    Fault::ChangesAfterCut(_) if n > 0 => "\"v2\"",
                    _ => "\"v1\"",
                };
                let error = match fault {
                    Fault::ErrorsFirst => n < 2,
                    Fault::DiesAfterCut(_) => n > 0,
                    _ => false,
                };
                if error {
                    let _ = stream.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                    return;
                }
                let honour = !matches!(fault, Fault::IgnoreRangeCutAt(_))
                    && if_range.as_deref().is_none_or(|v| v == etag);
                let start = if honour { range.unwrap_or(0) } else { 0 };
                let body = &bytes[start..];
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\netag: {etag}\r\nconnection: close\r\n\r\n",
                        body.len(),
                        bytes.len() - 1,
                        bytes.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: {etag}\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                };
                let _ = stream.write_all(head.as_bytes());
                let cut = match fault {
                    Fault::CutAt(c)
                    | Fault::IgnoreRangeCutAt(c)
                    | Fault::ChangesAfterCut(c)
                    | Fault::DiesAfterCut(c)
                        if n == 0 =>
                    {
                        Some(c)
                    }
                    _ => None,
                };
                match (fault, cut) {
                    (Fault::StallAt(at), _) if n == 0 => {
                        let _ = stream.write_all(&body[..at]);
                        std::thread::sleep(Duration::from_secs(8));
                    }
                    (_, Some(at)) => {
                        let _ = stream.write_all(&body[..at]);
                    }
                    _ => {
                        let _ = stream.write_all(body);
                    }
                }
                let _ = stream.flush();
                drop(stream);
            });
        }
    });
    FaultyServer {
        url,
        requests,
        ranges,
    }
}

fn verify_url(url: &str) -> Run {
    finish(
        mxsnap_cmd(&["verify", url])
            .env("MXSNAP_HTTP_STALL_SECS", "2")
            .env("MXSNAP_HTTP_GIVE_UP_SECS", "4")
            .output()
            .unwrap(),
    )
}

fn archive(dir: &Path) -> Vec<u8> {
    let (path, _) = snapshot(dir, &[]);
    std::fs::read(path).unwrap()
}

#[test]
fn dropped_short_stalled_and_failing_connections_resume_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = archive(dir.path());
    let len = bytes.len();
    assert!(len > 100_000, "the fixture archive is {len} bytes");
    for (fault, requests) in [
        (Fault::None, 1),
        (Fault::CutAt(len / 3), 2),
        (Fault::StallAt(len / 2), 2),
        (Fault::ErrorsFirst, 3),
    ] {
        let server = serve(bytes.clone(), fault);
        let run = verify_url(&server.url);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            server.requests.load(Ordering::SeqCst),
            requests,
            "{:?}",
            server.ranges.lock().unwrap()
        );
    }
    // a cut connection resumes from the byte reached
    let server = serve(bytes.clone(), Fault::CutAt(12_345));
    ok(verify_url(&server.url));
    assert_eq!(
        *server.ranges.lock().unwrap(),
        vec!["None".to_string(), "Some(12345)".to_string()]
    );
    // a server that ignores Range: read again from the start, said plainly
    let server = serve(bytes.clone(), Fault::IgnoreRangeCutAt(len / 2));
    let run = verify_url(&server.url);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("cannot resume"), "{}", run.stderr);
}

#[test]
fn a_restore_from_a_url_lands_and_a_changed_or_dead_server_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = archive(dir.path());
    let len = bytes.len();
    // a restore streamed from a URL whose connection drops once
    let env = Env::new("url_restore");
    let server = serve(bytes.clone(), Fault::CutAt(len / 2));
    let run = finish(
        mxsnap_cmd(&[
            "restore",
            &server.url,
            "--database",
            &env.db.url(),
            "--files",
            env.files.to_str().unwrap(),
            "--yes",
        ])
        .output()
        .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let local = Env::new("url_restore_local");
    let path = dir.path().join("local.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    ok(local.restore(&path, &[]));
    assert_eq!(env.state(), local.state());

    // the file changes on the server mid-way, or the server dies: clear errors, target as before
    for (fault, says) in [
        (Fault::ChangesAfterCut(len / 2), "changed on the server"),
        (Fault::DiesAfterCut(len / 2), "gave up"),
    ] {
        let target = Env::new("url_bad");
        let before = target.state();
        let server = serve(bytes.clone(), fault);
        let run = finish(
            mxsnap_cmd(&[
                "restore",
                &server.url,
                "--database",
                &target.db.url(),
                "--files",
                target.files.to_str().unwrap(),
                "--yes",
            ])
            .env("MXSNAP_HTTP_GIVE_UP_SECS", "3")
            .output()
            .unwrap(),
        );
        assert_ne!(run.code, 0);
        assert!(run.stderr.contains(says), "wanted {says:?}: {}", run.stderr);
        assert_eq!(target.state(), before);
        target.assert_clean();
    }
    // nothing there at all
    let run = verify_url("http://127.0.0.1:9/nothing.tar.gz");
    assert_ne!(run.code, 0);
}

/// Downloads `url` into `target` with the library, cancelling once `stop_after` bytes of this
/// run have arrived.
fn fetch(
    url: &str,
    target: &Path,
    identity: &str,
    stop_after: Option<u64>,
) -> mxsnap::Result<mxsnap::remote::fetch::FetchReport> {
    use mxsnap::progress::{Cancel, Event};
    let cancel = Cancel::new();
    let seen = AtomicUsize::new(0);
    let progress = |e: &Event| {
        if let Event::Advance { bytes, .. } = e {
            let n = seen.fetch_add(*bytes as usize, Ordering::SeqCst) + *bytes as usize;
            if stop_after.is_some_and(|s| n as u64 >= s) {
                cancel.cancel();
            }
        }
    };
    mxsnap::remote::fetch::to_file(
        mxsnap::remote::fetch::FetchOptions {
            url: url.to_string(),
            target: target.to_path_buf(),
            identity: identity.to_string(),
            variant: Some(mxsnap::archive::Variant::Full),
            overwrite: false,
            pg_bin: None,
            keys: mxsnap::crypt::Keys::none(),
            notes: Arc::new(|_: &str| {}),
            final_name: None,
        },
        &progress,
        &cancel,
    )
}

fn partial(target: &Path) -> std::path::PathBuf {
    mxsnap::remote::fetch::partial_path(target)
}

#[test]
fn a_download_to_a_file_resumes_its_partial_and_starts_over_when_the_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = archive(dir.path());
    let len = bytes.len() as u64;
    let target = dir.path().join("got.tar.gz");

    // stopped at a third: the bytes are kept, the final name is not there
    let server = serve(bytes.clone(), Fault::None);
    let e = fetch(&server.url, &target, "snap A", Some(len / 3)).unwrap_err();
    assert_eq!(e.kind(), mxsnap::ErrorKind::Cancelled, "{e}");
    assert!(e.message().contains("kept in"), "{e}");
    let kept = std::fs::metadata(partial(&target)).unwrap().len();
    assert!(kept > 0 && kept < len, "{kept} of {len}");
    assert!(!target.exists());
    // the next run asks for the rest only, and the file verifies
    let report = fetch(&server.url, &target, "snap A", None).unwrap();
    assert_eq!(report.resumed_at, Some(kept));
    assert_eq!(
        server.ranges.lock().unwrap().last().unwrap(),
        &format!("Some({kept})")
    );
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
    assert!(!partial(&target).exists());
    assert_eq!(report.verified.ok, Some(true));

    // a partial of another snapshot is not resumed
    let other = dir.path().join("other.tar.gz");
    let server = serve(bytes.clone(), Fault::None);
    fetch(&server.url, &other, "snap A", Some(len / 2)).unwrap_err();
    let report = fetch(&server.url, &other, "snap B", None).unwrap();
    assert_eq!((report.resumed_at, report.started_over), (None, false));
    assert_eq!(
        *server.ranges.lock().unwrap(),
        vec!["None".to_string(), "None".to_string()]
    );
    assert_eq!(std::fs::read(&other).unwrap(), bytes);

    // the file changed on the server between the runs (If-Range fails): started over
    let changed = dir.path().join("changed.tar.gz");
    let server = serve(bytes.clone(), Fault::ChangesAfterCut(bytes.len()));
    fetch(&server.url, &changed, "snap A", Some(len / 2)).unwrap_err();
    let report = fetch(&server.url, &changed, "snap A", None).unwrap();
    assert!(report.started_over && report.resumed_at.is_none());
    assert_eq!(std::fs::read(&changed).unwrap(), bytes);

    // damaged bytes: an error, and nothing left behind (neither file nor partial)
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let damaged = dir.path().join("damaged.tar.gz");
    let server = serve(bad, Fault::CutAt(mid / 2));
    let e = fetch(&server.url, &damaged, "snap A", None).unwrap_err();
    assert_eq!(e.kind(), mxsnap::ErrorKind::Corrupt, "{e}");
    assert!(!damaged.exists() && !partial(&damaged).exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("damaged"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
