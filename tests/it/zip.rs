//! Uploaded files as a zip: made by Python's zipfile (not by mxsnap) and by `prepare-upload
//! --files-as zip`; read by verify, inspect and `restore --variant files`, hostile ones refused
//! with the target unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Db, tree_hashes};
use crate::restore::Env;
use crate::support::*;

/// Runs a Python snippet with `sys.argv[1:] = args`.
fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A zip of every file of the fixture store, named bare (`aa/bb/<uuid>`) or under `tree/`.
fn zip_of_store(out: &Path, prefix: &str) {
    python(
        "import sys, os, zipfile\n\
         store, out, prefix = sys.argv[1:4]\n\
         with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   for root, dirs, files in sorted(os.walk(store)):\n\
         \x20       for f in sorted(files):\n\
         \x20           p = os.path.join(root, f)\n\
         \x20           z.write(p, prefix + os.path.relpath(p, store))\n",
        &[store().to_str().unwrap(), out.to_str().unwrap(), prefix],
    );
}

/// One-entry zips, each breaking one rule.
fn hostile_zips(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    python(
        r#"import sys, os, zipfile, struct
d = sys.argv[1]
u = "aa/bb/aabbcccc-0000-4000-8000-000000000000"
def mk(name, entries, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(os.path.join(d, name), "w", method) as z:
        for n, data in entries:
            z.writestr(n, data)
def patch(name, f):
    p = os.path.join(d, name); b = bytearray(open(p, "rb").read()); f(b); open(p, "wb").write(b)
mk("climb.zip", [("../../etc/evil", "x")])
mk("absolute.zip", [("/etc/evil", "x")])
mk("dup.zip", [(u, "a"), ("tree/" + u, "b")])
mk("other.zip", [("evil.sh", "x")])
with zipfile.ZipFile(os.path.join(d, "link.zip"), "w") as z:
    i = zipfile.ZipInfo(u); i.external_attr = 0o120777 << 16; z.writestr(i, "/etc/passwd")
mk("encrypted.zip", [(u, "x" * 12 + "secret")], zipfile.ZIP_STORED)
def encrypt(b):
    b[6] |= 1; b[b.rfind(b"PK\x01\x02") + 8] |= 1
patch("encrypted.zip", encrypt)
mk("lies.zip", [(u, "y" * 5000)])
def lie(b):
    cd = b.rfind(b"PK\x01\x02"); b[cd + 24:cd + 28] = struct.pack("<I", 4000)
patch("lies.zip", lie)
mk("bomb.zip", [(u, b"\0" * (16 << 20))])
"#,
        &[dir.to_str().unwrap()],
    );
    [
        ("climb.zip", "climbs out"),
        ("absolute.zip", "absolute path"),
        ("dup.zip", "appears twice"),
        ("other.zip", "does not match the file-store layout"),
        ("link.zip", "symbolic link"),
        ("encrypted.zip", "is encrypted"),
        ("lies.zip", "bytes it declares"),
        ("bomb.zip", "zip bomb"),
    ]
    .into_iter()
    .map(|(name, why)| (dir.join(name), why))
    .collect()
}

#[test]
fn zips_of_uploaded_files_restore_in_either_layout() {
    let dir = tempfile::tempdir().unwrap();
    for prefix in ["", "tree/"] {
        let zip = dir.path().join(format!("files{}.zip", prefix.len()));
        zip_of_store(&zip, prefix);
        let verified = ok(mxsnap(&["verify", zip.to_str().unwrap(), "--json"])).json();
        assert_eq!(verified["container"], "zip");
        assert_eq!(verified["variant"], "files");
        assert_eq!(
            verified["tree_files"].as_u64().unwrap() as usize,
            tree_hashes(&store()).len()
        );
        let env = Env::new("zip");
        let db_before = env.db.checksums();
        ok(env.restore(&zip, &["--variant", "files"]));
        assert_eq!(tree_hashes(&env.files), tree_hashes(&store()));
        assert_eq!(env.db.checksums(), db_before, "the database is left alone");
        env.assert_clean();
    }
    // a zip cannot be restored as a full snapshot, nor read from a pipe
    let zip = dir.path().join("files0.zip");
    let env = Env::new("zipfull");
    let before = env.state();
    let run = env.restore(&zip, &["--variant", "full"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("wrong variant"), "{}", run.stderr);
    assert_eq!(env.state(), before);
    env.assert_clean();
    let run = finish(
        mxsnap_cmd(&["verify", "-"])
            .stdin(std::fs::File::open(&zip).unwrap())
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("only from a file"), "{}", run.stderr);
}

#[test]
fn hostile_zips_are_refused_and_the_target_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new("zipbad");
    let before = env.state();
    for (zip, why) in hostile_zips(dir.path()) {
        let run = mxsnap(&["verify", zip.to_str().unwrap()]);
        assert_eq!(run.code, 4, "{}: {}", zip.display(), run.stderr);
        assert!(
            run.stderr.contains(why),
            "{}: wanted {why:?}: {}",
            zip.display(),
            run.stderr
        );
        let run = env.restore(&zip, &["--variant", "files"]);
        assert_eq!(run.code, 4, "{}: {}", zip.display(), run.stderr);
        assert!(
            run.stderr.contains(why),
            "{}: {}",
            zip.display(),
            run.stderr
        );
        assert_eq!(env.state(), before, "{} changed the target", zip.display());
        env.assert_clean();
    }
    assert!(!Path::new("/etc/evil").exists());
}

#[test]
fn prepare_upload_writes_the_files_as_zip_or_tar_gz() {
    let db = Db::with_fixture("upzip");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    for (format, ext) in [("zip", ".zip"), ("tar.gz", ".tar.gz")] {
        let out = dir.path().join(format);
        let report = ok(mxsnap(&[
            "prepare-upload",
            "--database",
            &url,
            "--files",
            store().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--files-as",
            format,
            "--json",
        ]))
        .json();
        let files = PathBuf::from(report["files_archive"].as_str().unwrap());
        assert!(
            files.to_str().unwrap().ends_with(ext),
            "{}",
            files.display()
        );
        assert!(
            files
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("files-")
        );
        // the same files as the full snapshot, and readable by stock tools
        let full = PathBuf::from(report["full_snapshot"].as_str().unwrap());
        let full_files: Vec<String> = tool_ok("tar", &["-tzf", full.to_str().unwrap()])
            .lines()
            .filter(|l| l.starts_with("tree/"))
            .map(str::to_string)
            .collect();
        let mut names: Vec<String> = if format == "zip" {
            let listing = Command::new("python3")
                .args([
                    "-c",
                    "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\n\
                     assert z.testzip() is None\nprint('\\n'.join(z.namelist()))",
                    files.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(listing.status.success());
            String::from_utf8_lossy(&listing.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        } else {
            tool_ok("tar", &["-tzf", files.to_str().unwrap()])
                .lines()
                .map(str::to_string)
                .collect()
        };
        names.sort();
        let mut want = full_files.clone();
        want.sort();
        assert_eq!(names, want);
        assert_eq!(names.len(), 45);
        // and it restores as uploaded files
        ok(mxsnap(&["verify", files.to_str().unwrap()]));
        let env = Env::new("upzipr");
        ok(env.restore(&files, &["--variant", "files"]));
        let restored = tree_hashes(&env.files);
        let all = tree_hashes(&store());
        assert_eq!(restored.len(), 45);
        assert!(restored.iter().all(|(n, s)| all.get(n) == Some(s)));
    }
}
