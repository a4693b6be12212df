//! Helpers shared by the tests: running mxsnap and stock tools, rewriting archives.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{self, Db};

/// A loopback port that is free now and that no other test of this process was given: a
/// server started on it will not meet another test's server there (the kernel may still hand
/// it to a `bind(0)` before the server binds it; servers' start-ups check that they got it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}): {}\n{}", self.stdout, self.stderr)
        })
    }
}

pub fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs mxsnap with `args`, with none of libpq's environment leaking in from outside.
pub fn mxsnap(args: &[&str]) -> Run {
    finish(mxsnap_cmd(args).output().expect("run mxsnap"))
}

pub fn mxsnap_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(harness::mxsnap_bin());
    for v in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGPASSFILE",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "MENDIX_USERNAME",
        "MENDIX_APIKEY",
        "MXSNAP_API_URL",
        "MXSNAP_APP",
        "MXSNAP_ENV",
    ] {
        c.env_remove(v);
    }
    c.args(args);
    c
}

/// Asserts success and returns the run.
pub fn ok(run: Run) -> Run {
    assert_eq!(
        run.code, 0,
        "mxsnap failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    run
}

pub fn store() -> PathBuf {
    harness::fixtures().join("filestore")
}

/// Creates a snapshot of `db` with the fixture store into `out`, plus `extra` arguments.
pub fn create(db: &Db, out: &Path, extra: &[&str]) -> Run {
    let url = db.url();
    let store = store();
    let mut args = vec![
        "create",
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    mxsnap(&args)
}

pub fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

pub fn tool_ok(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn pg_tool(program: &str) -> String {
    harness::server().bin.join(program).display().to_string()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The members of a plain tar, in order, with their data and data offsets.
pub fn members(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>, u64)> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let offset = e.raw_file_position();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data, offset)
        })
        .collect()
}

/// A plain tar of `members`, as GNU tar would write regular files.
pub fn build_tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The relative store paths of the files the fixture database says a snapshot must carry,
/// worked out with SQL and the file system rather than by mxsnap.
pub fn expected_tree(db: &Db) -> Vec<String> {
    let rows = db.psql(
        "SELECT \"__uuid__\" || ' ' || \"__filename__\" FROM \"system$filedocument\" \
         WHERE hascontents AND NOT deleteafterdownload",
    );
    let store = store();
    let mut out = Vec::new();
    for row in rows.lines() {
        let (uuid, number) = row.split_once(' ').unwrap();
        let modern = format!("{}/{}/{}", &uuid[0..2], &uuid[2..4], uuid);
        let n: u64 = number.parse().unwrap();
        let legacy = format!("{:02}/{}", n / 1000, n);
        if store.join(&modern).is_file() {
            out.push(modern);
        } else if store.join(&legacy).is_file() {
            out.push(legacy);
        }
    }
    out.sort();
    out
}

/// How GNU tar is asked to pack a cloud-shaped snapshot directory.
pub enum TarStyle {
    /// `tar czf A -C dir .metadata db tree`: the cloud's member names.
    Named,
    /// `tar czf A -C dir .`: "./" prefixes and directory entries, as a script might.
    Dot,
}

/// A cloud-shaped snapshot directory (`db/db.backup` by `pg_dump -O -x -Fc` with its default
/// compression, the referenced files copied into `tree/`) of `db` in `dir/snap`; `.metadata`
/// is what `meta` makes of the true dump and files sizes (`None`: no `.metadata`).
pub fn cloud_snapshot_dir(
    db: &Db,
    dir: &Path,
    meta: impl Fn(u64, u64) -> Option<Vec<u8>>,
) -> PathBuf {
    let root = dir.join("snap");
    std::fs::create_dir_all(root.join("db")).unwrap();
    let dump = root.join("db/db.backup");
    tool_ok(
        &pg_tool("pg_dump"),
        &["-O", "-x", "-Fc", "-f", dump.to_str().unwrap(), &db.url()],
    );
    let mut files_size = 0;
    for rel in expected_tree(db) {
        let to = root.join("tree").join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(store().join(&rel), &to).unwrap();
        files_size += std::fs::metadata(&to).unwrap().len();
    }
    let dump_size = std::fs::metadata(&dump).unwrap().len();
    if let Some(bytes) = meta(dump_size, files_size) {
        std::fs::write(root.join(".metadata"), bytes).unwrap();
    }
    root
}

/// `.metadata` as the cloud's documentation shows it, with the given sizes.
pub fn cloud_metadata(dump_size: u64, files_size: u64) -> Vec<u8> {
    serde_json::json!({
        "duration": "0",
        "dumpSize": dump_size.to_string(),
        "modelVersion": "1.0.0.40",
        "databaseSize": "9730584",
        "filesSize": files_size.to_string(),
    })
    .to_string()
    .into_bytes()
}

/// A full snapshot made the way the cloud's is, with stock tools only: `pg_dump -O -x -Fc`, the
/// referenced files copied into `tree/`, a `.metadata` and GNU tar. No manifest. Returns the
/// archive and the dump file.
pub fn cloud_shaped_archive(db: &Db, dir: &Path, style: TarStyle) -> (PathBuf, PathBuf) {
    let root = cloud_snapshot_dir(db, dir, |d, f| Some(cloud_metadata(d, f)));
    let dump = root.join("db/db.backup");
    let archive = dir.join("files_and_database-fc9e126f-201811210121.tar.gz");
    let (a, r) = (archive.to_str().unwrap(), root.to_str().unwrap());
    match style {
        TarStyle::Named => tool_ok("tar", &["-czf", a, "-C", r, ".metadata", "db", "tree"]),
        TarStyle::Dot => tool_ok("tar", &["-czf", a, "-C", r, "."]),
    };
    (archive, dump)
}

/// Restores `dump` with stock `pg_restore` into a new database, as a user would by hand.
pub fn restore_by_hand(dump: &Path, tag: &str) -> Db {
    let restored = Db::new(tag);
    tool_ok(
        &pg_tool("pg_restore"),
        &[
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "-d",
            &restored.url(),
            dump.to_str().unwrap(),
        ],
    );
    restored
}
