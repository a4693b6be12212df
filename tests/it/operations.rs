//! The library's operations driven as a service would drive them: progress events and
//! cancellation, against the real server.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering::SeqCst;

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
        no_sync: false,
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

/// The store changes after the files were selected, while they are packed: once the first
/// file is in the archive, every file is deleted, grown, or replaced by a link to a file of
/// the same size outside the store. Each is refused with the "changed" error and its hint,
/// and no archive is left. (A link used to be followed.)
#[test]
fn a_store_that_changes_while_it_is_packed_is_refused_and_nothing_is_written() {
    let outside = tempfile::tempdir().unwrap();
    for change in ["deleted", "grown", "linked out"] {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store");
        tool_ok(
            "cp",
            &["-a", store().to_str().unwrap(), copy.to_str().unwrap()],
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let files: Vec<_> = walkdir::WalkDir::new(&copy)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect();
        assert!(files.len() > 3, "the fixture store has files");
        let changed = std::sync::atomic::AtomicBool::new(false);
        let change_all = |e: &Event| {
            if !matches!(e, Event::Advance { files: 1, .. }) || changed.swap(true, SeqCst) {
                return;
            }
            for (i, f) in files.iter().enumerate() {
                match change {
                    "deleted" => std::fs::remove_file(f).unwrap(),
                    "grown" => {
                        let mut bytes = std::fs::read(f).unwrap();
                        bytes.push(b'!');
                        std::fs::write(f, bytes).unwrap();
                    }
                    _ => {
                        let len = std::fs::metadata(f).unwrap().len() as usize;
                        let secret = outside.path().join(format!("secret{i}"));
                        std::fs::write(&secret, vec![b's'; len]).unwrap();
                        std::fs::remove_file(f).unwrap();
                        std::os::unix::fs::symlink(&secret, f).unwrap();
                    }
                }
            }
        };
        let plan = create::plan(CreateOptions {
            files: Some(copy.clone()),
            all_files: true,
            ..CreateOptions::new(Variant::Files, Output::Path(out.clone()))
        })
        .unwrap();
        let err = create::execute(plan, &change_all, &Cancel::new()).unwrap_err();
        assert!(changed.load(SeqCst), "{change}: the store was changed");
        assert_eq!(err.kind(), ErrorKind::Environment, "{change}: {err}");
        assert!(
            err.to_string()
                .contains("changed or vanished while the snapshot was made"),
            "{change}: {err}"
        );
        assert!(
            err.hint()
                .is_some_and(|h| h.contains("stop the app and retry")),
            "{change}: {:?}",
            err.hint()
        );
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "{change}: left {left:?}");
    }
}
