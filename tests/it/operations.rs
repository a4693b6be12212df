//! The library's operations driven as a service would drive them: progress events and
//! cancellation, against the real server.

use std::path::Path;
use std::sync::Mutex;

use mxsnap::ErrorKind;
use mxsnap::archive::Variant;
use mxsnap::create::{self, CreateOptions, Output};
use mxsnap::pg::ConnSpec;
use mxsnap::progress::{Cancel, Event, Tracker};
use mxsnap::restore::{self, Destination, RestoreOptions};
use mxsnap::source::Source;
use mxsnap::target::Target;

use crate::harness::Db;
use crate::restore::{Env, snapshot};
use crate::support::*;

fn restore_options(env: &Env, archive: &Path) -> RestoreOptions {
    RestoreOptions {
        source: Source::File(archive.to_path_buf()),
        destination: Destination::Env(Box::new(Target {
            database: ConnSpec::resolve(Some(&env.db.url())).unwrap(),
            files: env.files.clone(),
            pid_file: None,
        })),
        variant: None,
        jobs: 2,
        keep_previous: false,
        clear_rest: false,
        order: Default::default(),
        model_version: None,
        pg_bin: Some(crate::harness::pg_bin()),
        keys: mxsnap::crypt::Keys::none(),
    }
}

/// A progress receiver that cancels when `when` first holds, and keeps every event.
fn cancelling_at(
    cancel: &Cancel,
    when: impl Fn(&Event) -> bool + Sync,
    seen: &Mutex<Vec<Event>>,
) -> impl Fn(&Event) + Sync {
    let cancel = cancel.clone();
    move |e: &Event| {
        seen.lock().unwrap().push(e.clone());
        if when(e) {
            cancel.cancel();
        }
    }
}

#[test]
fn a_restore_cancelled_before_its_swap_leaves_the_target_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, new_rows) = snapshot(dir.path(), &[]);
    let env = Env::new("cancel_restore");
    let old = env.state();

    // Cancelled once the first file is extracted.
    let cancel = Cancel::new();
    let seen = Mutex::new(Vec::new());
    let progress = cancelling_at(
        &cancel,
        |e| matches!(e, Event::Advance { files: 1, .. }),
        &seen,
    );
    let plan = restore::plan(restore_options(&env, &archive)).unwrap();
    let err = restore::execute(plan, &progress, &cancel).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(env.state(), old, "a cancelled restore changed the target");
    env.assert_clean();

    // Cancelled once the whole archive is read (at the last file's event), while the staging
    // database is loaded or just after: the staging copies are dropped all the same.
    let cancel = Cancel::new();
    let files = 45;
    let count = std::sync::atomic::AtomicU64::new(0);
    let late = |e: &Event| {
        if matches!(e, Event::Advance { files: 1, .. })
            && count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == files
        {
            cancel.cancel();
        }
    };
    let plan = restore::plan(restore_options(&env, &archive)).unwrap();
    let err = restore::execute(plan, &late, &cancel).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(env.state(), old, "a cancelled restore changed the target");
    env.assert_clean();

    // A cancel that comes once the swap has begun is too late: the swap is finished.
    let cancel = Cancel::new();
    let seen = Mutex::new(Vec::new());
    let progress = cancelling_at(
        &cancel,
        |e| matches!(e, Event::Stage { name, .. } if name.starts_with("swapping")),
        &seen,
    );
    let plan = restore::plan(restore_options(&env, &archive)).unwrap();
    let report = restore::execute(plan, &progress, &cancel).unwrap();
    assert_eq!(report.tree_files, files);
    assert_eq!(env.state().0, new_rows);
    env.assert_clean();

    // The events tell the stages and count the files.
    drop(progress);
    let seen = seen.into_inner().unwrap();
    let stages: Vec<&str> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Stage { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        stages,
        [
            "restoring",
            "reading and checking the archive",
            "swapping in the restored data"
        ]
    );
    let files_done: u64 = seen
        .iter()
        .map(|e| match e {
            Event::Advance { files, .. } => *files,
            _ => 0,
        })
        .sum();
    assert_eq!(files_done, files);
}

#[test]
fn a_cancelled_create_leaves_no_file_and_a_tracker_follows_a_whole_one() {
    let db = Db::with_fixture("cancel_create");
    let dir = tempfile::tempdir().unwrap();
    for variant in [Variant::Full, Variant::Files] {
        let cancel = Cancel::new();
        let seen = Mutex::new(Vec::new());
        let progress = cancelling_at(
            &cancel,
            |e| matches!(e, Event::Advance { files: 1, .. }),
            &seen,
        );
        let plan = create::plan(CreateOptions {
            database: Some(db.url()),
            files: Some(store()),
            pg_bin: Some(crate::harness::pg_bin()),
            ..CreateOptions::new(variant, Output::Path(dir.path().to_path_buf()))
        })
        .unwrap();
        let err = create::execute(plan, &progress, &cancel).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{variant}: {err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(
            left.is_empty(),
            "{variant}: a cancelled create left {left:?}"
        );
    }

    // A cancel asked before it starts: nothing at all is done.
    let cancel = Cancel::new();
    cancel.cancel();
    let plan = create::plan(CreateOptions {
        database: Some(db.url()),
        pg_bin: Some(crate::harness::pg_bin()),
        ..CreateOptions::new(Variant::Database, Output::Path(dir.path().to_path_buf()))
    })
    .unwrap();
    let err = create::execute(plan, &mxsnap::progress::Silent, &cancel).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Uncancelled, into a writer of the caller's: the tracker ends where the report does.
    let tracker = Tracker::new();
    let out = dir.path().join("files.tar.gz");
    let file = std::fs::File::create(&out).unwrap();
    let plan = create::plan(CreateOptions {
        database: Some(db.url()),
        files: Some(store()),
        ..CreateOptions::new(Variant::Files, Output::Writer(Box::new(file)))
    })
    .unwrap();
    let report = create::execute(plan, &tracker, &Cancel::new()).unwrap();
    let status = tracker.status();
    assert_eq!(status.stage.as_deref(), Some("writing the archive"));
    assert_eq!(status.files_total, Some(report.members - 1));
    assert_eq!(
        status.files_done,
        report.members - 1,
        "the manifest is not a file"
    );
    assert_eq!(Some(status.bytes_done), report.files_size);
    assert_eq!(status.warnings.len(), report.warnings.len());
    assert!(report.output.is_none());
    let listing = tool_ok("tar", &["tzf", out.to_str().unwrap()]);
    assert_eq!(listing.lines().count() as u64, report.members);
}
