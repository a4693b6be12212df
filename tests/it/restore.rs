//! `mxsnap restore`: what it reproduces, what it refuses, and that a refused, failed or killed
//! restore leaves the target exactly as it was (or, past the swap point, exactly as asked).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::{self, Db, tree_hashes};
use crate::support::*;

/// A target environment with data of its own, different from the fixture's.
pub struct Env {
    pub db: Db,
    _dir: tempfile::TempDir,
    pub files: PathBuf,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let db = Db::with_fixture(tag);
        db.psql(
            "DELETE FROM \"shop$invoice\"; DELETE FROM \"shop$order\" WHERE id % 2 = 0; \
                 INSERT INTO \"shop$customer\" VALUES (99, 'Local Only', 'local@example.com')",
        );
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("aa/bb")).unwrap();
        std::fs::write(
            files.join("aa/bb/aabbcccc-0000-4000-8000-000000000000"),
            b"the target's own file",
        )
        .unwrap();
        Env {
            db,
            _dir: dir,
            files,
        }
    }

    pub fn state(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        (self.db.checksums(), tree_hashes(&self.files))
    }

    /// The command of a confirmed restore of `archive` into this environment, not run yet.
    pub fn restore_cmd(&self, archive: &Path) -> Command {
        let url = self.db.url();
        mxsnap_cmd(&[
            "restore",
            archive.to_str().unwrap(),
            "--database",
            &url,
            "--files",
            self.files.to_str().unwrap(),
            "--yes",
        ])
    }

    pub fn restore(&self, archive: &Path, extra: &[&str]) -> Run {
        let url = self.db.url();
        let mut args = vec![
            "restore",
            archive.to_str().unwrap(),
            "--database",
            &url,
            "--files",
            self.files.to_str().unwrap(),
            "--yes",
        ];
        args.extend_from_slice(extra);
        mxsnap(&args)
    }

    /// Nothing of a restore is left behind: no staging database, work dir or journal.
    pub fn assert_clean(&self) {
        let staging = harness::psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database d WHERE datname LIKE 'mxsnap_staging_%' \
                 AND shobj_description(d.oid, 'pg_database') LIKE '%database {} %'",
                self.db.name
            ),
        );
        assert_eq!(staging, "0", "a staging database was left behind");
        let parent = self.files.parent().unwrap();
        for e in std::fs::read_dir(parent).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains("mxsnap-work") && !name.contains("mxsnap-journal"),
                "left behind: {name}"
            );
        }
    }
}

/// A full snapshot of a fresh fixture database, and that database's checksums.
pub fn snapshot(dir: &Path, extra: &[&str]) -> (PathBuf, BTreeMap<String, String>) {
    let db = Db::with_fixture("source");
    let archive = dir.join("snap.tar.gz");
    ok(create(&db, &archive, extra));
    (archive, db.checksums())
}

fn fixture_tree(db_sql: &Db) -> BTreeMap<String, String> {
    let want = expected_tree(db_sql);
    tree_hashes(&store())
        .into_iter()
        .filter(|(rel, _)| want.contains(rel))
        .collect()
}

#[test]
fn a_full_restore_reproduces_every_row_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    let env = Env::new("full");
    assert_ne!(env.db.checksums(), rows);
    let run = ok(env.restore(&archive, &["--json"]));
    assert_eq!(run.json()["variant"], "full");
    assert_eq!(env.db.checksums(), rows);
    assert_eq!(tree_hashes(&env.files), fixture_tree(&env.db));
    env.assert_clean();
    // Objects belong to the restoring role, not the dump's.
    let owner = env
        .db
        .psql("SELECT tableowner FROM pg_tables WHERE tablename = 'shop$order'");
    assert_eq!(owner, harness::server().user);
}

#[test]
fn either_half_first_restores_the_same_and_a_failure_in_either_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    // A file flipped inside (found by the manifest, after the dump) and a dump pg_restore
    // rejects (found by the database half), for each order.
    let strict = dir.path().join("strict.tar.gz");
    ok(create(
        &Db::with_fixture("order_strict"),
        &strict,
        &["--strict-layout"],
    ));
    let mut flipped = good_members(&archive);
    let i = flipped
        .iter()
        .position(|(n, d)| n.starts_with("tree/") && d.len() > 100)
        .unwrap();
    flipped[i].1[50] ^= 0x55;
    let flipped_path = dir.path().join("flipped.tar.gz");
    std::fs::write(&flipped_path, gzip(&build_tar(&flipped))).unwrap();
    let mut rejected = good_members(&strict);
    let half = rejected[1].1.len() / 2;
    rejected[1].1.truncate(half);
    let mut meta: serde_json::Value = serde_json::from_slice(&rejected[0].1).unwrap();
    meta["dumpSize"] = serde_json::Value::String(half.to_string());
    rejected[0].1 = serde_json::to_vec(&meta).unwrap();
    let rejected_path = dir.path().join("rejected.tar.gz");
    std::fs::write(&rejected_path, gzip(&build_tar(&rejected))).unwrap();

    for order in ["database-first", "files-first", "overlap"] {
        let env = Env::new(&format!("order_{}", order.replace('-', "_")));
        let before = env.state();
        for (bad, needle) in [
            (&flipped_path, "SHA-256"),
            (&rejected_path, "pg_restore failed"),
        ] {
            let run = env.restore(bad, &["--order", order]);
            assert_ne!(run.code, 0, "{order}: accepted {}", bad.display());
            assert!(run.stderr.contains(needle), "{order}: {}", run.stderr);
            assert_eq!(env.state(), before, "{order}: the target changed");
            env.assert_clean();
        }
        let plan = ok(env.restore(&archive, &["--order", order, "--dry-run"]));
        let said = match order {
            "database-first" => "before the files are extracted",
            "files-first" => "after the files are extracted",
            _ => "while the files are extracted",
        };
        assert!(plan.stdout.contains(said), "{order}: {}", plan.stdout);
        ok(env.restore(&archive, &["--order", order]));
        assert_eq!(env.db.checksums(), rows, "{order}");
        assert_eq!(tree_hashes(&env.files), fixture_tree(&env.db), "{order}");
        env.assert_clean();
    }
    let run = Env::new("order_unknown").restore(&archive, &["--order", "sideways"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn a_restore_creates_a_missing_database_and_store() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &["--compression", "zstd"]);
    let name = format!("fresh_{}", std::process::id());
    let files = dir.path().join("new/files");
    let url = harness::url_for(&name);
    let run = mxsnap(&[
        "restore",
        archive.to_str().unwrap(),
        "--database",
        &url,
        "--files",
        files.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let db = Db { name };
    assert_eq!(db.checksums(), rows);
    assert_eq!(tree_hashes(&files).len(), 45);
}

#[test]
fn database_only_restores_leave_files_alone_and_count_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    let env = Env::new("dbpart");
    let files_before = tree_hashes(&env.files);
    let run = ok(env.restore(&archive, &["--variant", "database"]));
    assert_eq!(env.db.checksums(), rows);
    assert_eq!(tree_hashes(&env.files), files_before);
    // The target store has none of the 45 files the restored database references.
    assert!(
        run.stderr.contains("references 46 file(s)"),
        "{}",
        run.stderr
    );

    // A bare database-only download, raw and gzip-wrapped.
    let source = Db::with_fixture("bare");
    let bare = dir.path().join("database.backup");
    ok(mxsnap(&[
        "create",
        "--database",
        &source.url(),
        "--variant",
        "database",
        "--output",
        bare.to_str().unwrap(),
    ]));
    let env = Env::new("bare");
    ok(env.restore(&bare, &[]));
    assert_eq!(env.db.checksums(), source.checksums());
    let wrapped = dir.path().join("database.backup.gz");
    std::fs::write(&wrapped, gzip(&std::fs::read(&bare).unwrap())).unwrap();
    let env = Env::new("wrapped");
    ok(env.restore(&wrapped, &[]));
    assert_eq!(env.db.checksums(), source.checksums());
    env.assert_clean();
}

#[test]
fn files_only_restores_leave_the_database_alone() {
    let dir = tempfile::tempdir().unwrap();
    let source = Db::with_fixture("fsrc");
    let archive = dir.path().join("files.tar.zst");
    ok(create(
        &source,
        &archive,
        &["--variant", "files", "--compression", "zstd"],
    ));
    let env = Env::new("fpart");
    let rows_before = env.db.checksums();
    ok(env.restore(&archive, &[]));
    assert_eq!(env.db.checksums(), rows_before);
    assert_eq!(tree_hashes(&env.files), fixture_tree(&source));
    // And the files half of a full archive.
    let (full, _) = snapshot(dir.path(), &[]);
    let env = Env::new("fpart2");
    let rows_before = env.db.checksums();
    ok(env.restore(&full, &["--variant", "files"]));
    assert_eq!(env.db.checksums(), rows_before);
    assert_eq!(tree_hashes(&env.files).len(), 45);
}

#[test]
fn clear_rest_empties_the_half_an_upload_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let source = Db::with_fixture("crsrc");
    // A database alone: its rows arrive and the store is left empty.
    let bare = dir.path().join("database.backup");
    ok(mxsnap(&[
        "create",
        "--database",
        &source.url(),
        "--variant",
        "database",
        "--output",
        bare.to_str().unwrap(),
    ]));
    let env = Env::new("crdb");
    ok(env.restore(&bare, &["--clear-rest"]));
    assert_eq!(env.db.checksums(), source.checksums());
    assert!(env.files.is_dir());
    assert!(tree_hashes(&env.files).is_empty());
    env.assert_clean();
    // Files alone: they arrive and the database is empty (but there, like the target's).
    let files = dir.path().join("files.tar.gz");
    ok(create(&source, &files, &["--variant", "files"]));
    let env = Env::new("crfiles");
    ok(env.restore(&files, &["--clear-rest"]));
    assert_eq!(tree_hashes(&env.files), fixture_tree(&source));
    assert!(env.db.checksums().is_empty(), "{:?}", env.db.checksums());
    env.assert_clean();
    // A corrupt upload with --clear-rest changes nothing either.
    let before = env.state();
    let bytes = std::fs::read(&bare).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_ne!(env.restore(&cut, &["--clear-rest"]).code, 0);
    assert_eq!(env.state(), before);
    env.assert_clean();
    // It cannot be combined with --variant.
    assert_eq!(
        env.restore(&bare, &["--clear-rest", "--variant", "database"])
            .code,
        2
    );
}

#[test]
fn a_cloud_shaped_archive_from_gnu_tar_and_pg_dump_restores() {
    let db = Db::with_fixture("cloudsrc");
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = cloud_shaped_archive(&db, dir.path(), TarStyle::Dot);
    let env = Env::new("cloud");
    let run = ok(env.restore(&archive, &["--model-version", "2.0.0.1"]));
    assert_eq!(env.db.checksums(), db.checksums());
    assert_eq!(tree_hashes(&env.files), fixture_tree(&db));
    // Made on an older model than the target's: warned, and done.
    assert!(
        run.stderr.contains("older than the environment's 2.0.0.1"),
        "{}",
        run.stderr
    );
}

#[test]
fn keep_previous_keeps_the_old_database_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    let env = Env::new("keep");
    let (old_rows, old_files) = env.state();
    let run = ok(env.restore(&archive, &["--keep-previous", "--json"]));
    let json = run.json();
    let old_db = json["swapped"]["previous_database"]
        .as_str()
        .unwrap()
        .to_string();
    let old_dir = PathBuf::from(json["swapped"]["previous_files"].as_str().unwrap());
    assert_eq!(env.db.checksums(), rows);
    assert_eq!(harness::table_checksums(&old_db), old_rows);
    assert_eq!(tree_hashes(&old_dir), old_files);
    drop(Db { name: old_db });
}

#[test]
fn a_store_behind_a_symlink_is_restored_where_the_link_points() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    let env = Env::new("linked");
    let (_, old_files) = env.state();
    // The store lives on "another disk"; the environment names it through a link.
    let disk = tempfile::tempdir().unwrap();
    let real = disk.path().join("store");
    std::fs::rename(&env.files, &real).unwrap();
    std::os::unix::fs::symlink(&real, &env.files).unwrap();
    let run = ok(env.restore(&archive, &["--keep-previous", "--json"]));
    assert!(
        std::fs::symlink_metadata(&env.files)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced"
    );
    assert_eq!(std::fs::read_link(&env.files).unwrap(), real);
    assert_eq!(env.db.checksums(), rows);
    assert_eq!(tree_hashes(&real), fixture_tree(&env.db));
    // The previous files are kept beside the real store, on its disk.
    let old_dir = PathBuf::from(run.json()["swapped"]["previous_files"].as_str().unwrap());
    assert_eq!(old_dir.parent().unwrap(), real.parent().unwrap());
    assert_eq!(tree_hashes(&old_dir), old_files);
    let left: Vec<String> = std::fs::read_dir(disk.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("mxsnap-work") || n.contains("mxsnap-journal"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    env.assert_clean();
    drop(Db {
        name: run.json()["swapped"]["previous_database"]
            .as_str()
            .unwrap()
            .to_string(),
    });
}

/// `--no-sync` skips only the waiting for the disk: the same rows and files arrive, nothing is
/// left behind, and the plan says what the user gives up.
#[test]
fn no_sync_restores_the_same_and_its_plan_says_what_it_risks() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, rows) = snapshot(dir.path(), &[]);
    let env = Env::new("nosync");
    let plan = ok(env.restore(&archive, &["--no-sync", "--dry-run"]));
    assert!(
        plan.stdout
            .contains("without waiting for them to reach the disk"),
        "{}",
        plan.stdout
    );
    let plan = ok(env.restore(&archive, &["--dry-run"]));
    assert!(!plan.stdout.contains("--no-sync"), "{}", plan.stdout);
    ok(env.restore(&archive, &["--no-sync"]));
    assert_eq!(env.db.checksums(), rows);
    assert_eq!(tree_hashes(&env.files), fixture_tree(&env.db));
    env.assert_clean();
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    let env = Env::new("dry");
    let before = env.state();
    let run = ok(env.restore(&archive, &["--dry-run"]));
    assert!(
        run.stdout.contains("swap: rename database"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("check ok: no other session"),
        "{}",
        run.stdout
    );
    assert_eq!(env.state(), before);
    env.assert_clean();
}

#[test]
fn a_running_target_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    let env = Env::new("running");
    let before = env.state();

    // Another session on the target database (psql waiting on its stdin).
    let mut session = Command::new(pg_tool("psql"))
        .envs(harness::env_for(&env.db.name))
        .args(["-X", "-q", "-c", "SELECT 1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut tries = 0;
    while harness::psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
            env.db.name
        ),
    ) == "0"
    {
        tries += 1;
        assert!(tries < 100, "the session never connected");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = env.restore(&archive, &[]);
    drop(session.stdin.take());
    session.wait().unwrap();
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("is in use by 1 session(s)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("pid "), "{}", run.stderr);
    assert_eq!(env.state(), before);

    // A live process in the pid file.
    let pid_file = dir.path().join("app.pid");
    std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
    let run = env.restore(&archive, &["--pid-file", pid_file.to_str().unwrap()]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("process {}", std::process::id()))
    );
    assert_eq!(env.state(), before);
    env.assert_clean();
}

#[test]
fn a_second_restore_while_one_runs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    let env = Env::new("concurrent");
    let before = env.state();
    // Hold the environment's lock as a running restore does.
    let lock_path = env.files.parent().unwrap().join(".files.mxsnap-lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let run = env.restore(&archive, &[]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("another mxsnap operation"),
        "{}",
        run.stderr
    );
    assert_eq!(env.state(), before);
    drop(lock);
    ok(env.restore(&archive, &[]));
}

/// A filesystem of its own, too small for what is restored into it (tmpfs; needs root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a {kib} KiB tmpfs failed");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_disk_that_fills_during_extraction_leaves_the_target_as_it_was() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small filesystem needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    // Only the files, with no .metadata to announce their size: nothing can refuse up front,
    // and the disk fills while the files are written.
    let tree: Vec<(String, Vec<u8>)> = good_members(&archive)
        .into_iter()
        .filter(|(name, _)| name.starts_with("tree/"))
        .collect();
    let total: usize = tree.iter().map(|(_, d)| d.len()).sum();
    assert!(
        total > 200 * 1024,
        "the fixture tree is too small: {total} bytes"
    );
    let files_only = dir.path().join("files-only.tar.gz");
    std::fs::write(&files_only, gzip(&build_tar(&tree))).unwrap();

    let disk = SmallDisk::mount(96);
    let files = disk.dir.path().join("files");
    std::fs::create_dir_all(files.join("aa/bb")).unwrap();
    std::fs::write(
        files.join("aa/bb/aabbcccc-0000-4000-8000-000000000000"),
        b"the target's own file",
    )
    .unwrap();
    let env = Env {
        db: Db::with_fixture("small_disk"),
        _dir: tempfile::tempdir().unwrap(),
        files,
    };
    let before = env.state();
    let run = env.restore(&files_only, &[]);
    // 5: the environment (here its disk) stopped the restore, not the archive.
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("No space left on device") && run.stderr.contains("free some space"),
        "{}",
        run.stderr
    );
    assert_eq!(env.state(), before, "the target changed");
    env.assert_clean();
    let left: Vec<String> = std::fs::read_dir(disk.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "files" && !n.ends_with("mxsnap-lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ---- hostile and corrupt inputs -----------------------------------------------------------

/// A tar whose members are given raw: (name, type, data); names are written byte for byte.
fn raw_tar(entries: &[(&str, tar::EntryType, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        match kind {
            tar::EntryType::Symlink => h.set_link_name("/etc/passwd").unwrap(),
            tar::EntryType::Link => h.set_link_name(".metadata").unwrap(),
            _ => {}
        }
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The good archive's members, for building bad ones from.
fn good_members(archive: &Path) -> Vec<(String, Vec<u8>)> {
    members(&gunzip(&std::fs::read(archive).unwrap()))
        .into_iter()
        .map(|(n, d, _)| (n, d))
        .collect()
}

fn with_extra(good: &[(String, Vec<u8>)], name: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut entries: Vec<(&str, tar::EntryType, Vec<u8>)> = good
        .iter()
        .map(|(n, d)| (n.as_str(), tar::EntryType::Regular, d.clone()))
        .collect();
    let data = if kind == tar::EntryType::Regular {
        b"evil".to_vec()
    } else {
        Vec::new()
    };
    entries.insert(2, (name, kind, data));
    gzip(&raw_tar(&entries))
}

#[test]
fn hostile_and_corrupt_inputs_are_refused_and_the_target_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let src = Db::with_fixture("hostile");
    let good = dir.path().join("good.tar.gz");
    ok(create(&src, &good, &[]));
    let zst = dir.path().join("good.tar.zst");
    ok(create(&src, &zst, &["--compression", "zstd"]));
    let strict = dir.path().join("strict.tar.gz");
    ok(create(&src, &strict, &["--strict-layout"]));
    let dbonly = dir.path().join("db.backup");
    ok(mxsnap(&[
        "create",
        "--database",
        &src.url(),
        "--variant",
        "database",
        "--output",
        dbonly.to_str().unwrap(),
    ]));
    let members = good_members(&good);
    let good_bytes = std::fs::read(&good).unwrap();
    let zst_bytes = std::fs::read(&zst).unwrap();
    use tar::EntryType as T;

    let mut cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "dot-dot",
            with_extra(&members, "tree/../../escape", T::Regular),
            vec![],
            "'..'",
        ),
        (
            "absolute",
            with_extra(&members, "/tmp/mxsnap-escape", T::Regular),
            vec![],
            "absolute",
        ),
        (
            "symlink",
            with_extra(&members, "tree/00/9", T::Symlink),
            vec![],
            "symbolic link",
        ),
        (
            "hardlink",
            with_extra(&members, "tree/00/9", T::Link),
            vec![],
            "hard link",
        ),
        (
            "device",
            with_extra(&members, "tree/00/9", T::Char),
            vec![],
            "device",
        ),
        (
            "fifo",
            with_extra(&members, "tree/00/9", T::Fifo),
            vec![],
            "FIFO",
        ),
        (
            "outside",
            with_extra(&members, "etc/cron.d/evil", T::Regular),
            vec![],
            "unexpected member",
        ),
        (
            "bad-tree-name",
            with_extra(
                &members,
                "tree/ab/cd/0d3e301f-5551-46f8-ad44-8de2be084c95",
                T::Regular,
            ),
            vec![],
            "layout",
        ),
        (
            "duplicate",
            with_extra(&members, &members[5].0.clone(), T::Regular),
            vec![],
            "appears twice",
        ),
        (
            "truncated-gzip",
            good_bytes[..good_bytes.len() * 3 / 4].to_vec(),
            vec![],
            "truncated",
        ),
        (
            "truncated-zstd",
            zst_bytes[..zst_bytes.len() * 3 / 4].to_vec(),
            vec![],
            "",
        ),
        (
            "flipped-stream",
            {
                let mut b = good_bytes.clone();
                let m = b.len() / 2;
                b[m] ^= 1;
                b
            },
            vec![],
            "",
        ),
        ("empty", Vec::new(), vec![], "empty"),
        (
            "not-an-archive",
            b"hello, I am not a backup\n".to_vec(),
            vec![],
            "not a snapshot",
        ),
        (
            "wrong-variant",
            std::fs::read(&dbonly).unwrap(),
            vec!["--variant", "full"],
            "wrong variant",
        ),
    ];
    // A flipped byte inside a file: only the manifest can tell.
    {
        let mut m = members.clone();
        let i = m
            .iter()
            .position(|(n, d)| n.starts_with("tree/") && d.len() > 100)
            .unwrap();
        m[i].1[50] ^= 0x55;
        cases.push(("flipped-file", gzip(&build_tar(&m)), vec![], "SHA-256"));
    }
    // More space than the filesystem has, claimed up front by .metadata.
    {
        let mut m = members.clone();
        let mut meta: serde_json::Value = serde_json::from_slice(&m[0].1).unwrap();
        meta["filesSize"] = serde_json::Value::String("999999999999999999".into());
        m[0].1 = serde_json::to_vec(&meta).unwrap();
        cases.push(("no-space", gzip(&build_tar(&m)), vec![], "not enough space"));
    }
    // A dump that pg_restore rejects half-way (no manifest to catch it first).
    {
        let mut m = good_members(&strict);
        let half = m[1].1.len() / 2;
        m[1].1.truncate(half);
        let mut meta: serde_json::Value = serde_json::from_slice(&m[0].1).unwrap();
        meta["dumpSize"] = serde_json::Value::String(half.to_string());
        m[0].1 = serde_json::to_vec(&meta).unwrap();
        cases.push((
            "dump-rejected",
            gzip(&build_tar(&m)),
            vec![],
            "pg_restore failed",
        ));
    }
    assert!(cases.len() >= 15);

    let env = Env::new("hostile_target");
    let before = env.state();
    for (name, bytes, extra, needle) in &cases {
        let path = dir.path().join(format!("case-{name}"));
        std::fs::write(&path, bytes).unwrap();
        let run = env.restore(&path, extra);
        assert_ne!(run.code, 0, "{name}: accepted:\n{}", run.stderr);
        assert!(
            run.stderr.contains("mxsnap: error:"),
            "{name}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(needle),
            "{name}: message lacks {needle:?}: {}",
            run.stderr
        );
        assert_eq!(env.state(), before, "{name}: the target changed");
        env.assert_clean();
        assert!(
            !Path::new("/tmp/mxsnap-escape").exists(),
            "{name}: wrote outside"
        );
    }
}

// ---- crash safety ---------------------------------------------------------------------------

/// Kills the restore with SIGKILL at `point`, then lets the next run recover, and says what
/// the target holds afterwards.
fn crash_at(point: &str, expect_new: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (archive, new_rows) = snapshot(dir.path(), &[]);
    let env = Env::new(&format!("crash_{}", point.replace('-', "_")));
    let old = env.state();
    let out = env
        .restore_cmd(&archive)
        .env("MXSNAP_CRASH_AT", point)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: did not die: {:?}",
        out
    );

    // The next run on the environment finishes or undoes the interrupted one.
    let run = ok(env.restore(&archive, &["--dry-run"]));
    assert!(run.stdout.contains("recovered:"), "{point}: {}", run.stdout);
    // Let any orphaned pg_restore of the killed run finish dying before we look.
    env.assert_clean();
    let (rows, files) = env.state();
    if expect_new {
        assert_eq!(rows, new_rows, "{point}: database not the new one");
        assert_eq!(files.len(), 45, "{point}: files not the new ones");
    } else {
        assert_eq!((rows, files), old, "{point}: target changed");
    }
}

#[test]
fn killed_during_extraction_the_target_stays_old() {
    crash_at("extract", false);
}

#[test]
fn killed_during_pg_restore_the_target_stays_old() {
    crash_at("pg_restore", false);
}

#[test]
fn killed_after_preparing_the_swap_completes() {
    crash_at("prepared", true);
}

#[test]
fn killed_between_the_database_and_files_swaps_the_swap_completes() {
    crash_at("swap-db", true);
}

#[test]
fn killed_after_both_swaps_the_cleanup_completes() {
    crash_at("swap-files", true);
}

#[test]
fn a_non_archive_is_refused_before_any_environment_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "not a backup\n").unwrap();
    let env_dir = dir.path().join("local-env");
    let run = mxsnap(&[
        "restore",
        junk.to_str().unwrap(),
        "--into",
        env_dir.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("not a snapshot"), "{}", run.stderr);
    assert!(
        !env_dir.exists(),
        "a local environment was made for nothing"
    );
}

#[test]
fn a_damaged_journal_is_reported_with_a_hint_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    let env = Env::new("damaged_journal");
    let old = env.state();
    // A restore killed after preparing its swap leaves a prepared journal...
    let out = env
        .restore_cmd(&archive)
        .env("MXSNAP_CRASH_AT", "prepared")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9));
    let journal = env.files.parent().unwrap().join(".files.mxsnap-journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();

    // ...which is then damaged: the inode of the staged files is lost.
    value["staging_files_ino"] = serde_json::Value::Null;
    std::fs::write(&journal, value.to_string()).unwrap();
    let run = env.restore(&archive, &[]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("is damaged"), "{}", run.stderr);
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(env.state(), old, "the target changed");

    // Cut short, it does not parse at all.
    std::fs::write(&journal, &text[..text.len() / 2]).unwrap();
    let run = env.restore(&archive, &["--dry-run"]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("unreadable"), "{}", run.stderr);
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    assert_eq!(env.state(), old, "the target changed");

    // Mended by hand, the next run completes the prepared swap.
    std::fs::write(&journal, &text).unwrap();
    ok(env.restore(&archive, &["--dry-run"]));
    assert_ne!(env.state(), old, "the prepared swap was not completed");
    env.assert_clean();
}

#[test]
fn sigterm_during_a_restore_cancels_it_and_the_target_stays_old() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (archive, _) = snapshot(dir.path(), &[]);
    let bytes = std::fs::read(&archive).unwrap();
    let env = Env::new("sigterm");
    let old = env.state();
    // The archive comes through a named pipe, so the restore waits, mid-read, for the rest.
    let fifo = dir.path().join("incoming");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let child = env
        .restore_cmd(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let half = bytes.len() / 2;
    pipe.write_all(&bytes[..half]).unwrap();
    // Once the staging area exists the restore is under way.
    let parent = env.files.parent().unwrap();
    let staging = || {
        std::fs::read_dir(parent).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .contains("mxsnap-work")
        })
    };
    let t0 = std::time::Instant::now();
    while !staging() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the restore never began staging"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // The rest arrives slowly, long after the signal: the restore must stop, not finish.
    std::thread::sleep(std::time::Duration::from_millis(500));
    for chunk in bytes[half..].chunks(1024) {
        if pipe.write_all(chunk).is_err() {
            break; // the restore stopped reading
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(env.state(), old, "a cancelled restore changed the target");
    env.assert_clean();
}
