//! Encryption at rest: what mxsnap seals the `age` tool opens and the reverse; a wrong key, a
//! cut file and a changed byte are refused, each by name, with the target unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Db, tree_hashes};
use crate::restore::Env;
use crate::support::*;

/// An age key pair in `dir`: (identity file, public key).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    tool_ok("age-keygen", &["-o", key.to_str().unwrap()]);
    let public = tool_ok("age-keygen", &["-y", key.to_str().unwrap()])
        .trim()
        .to_string();
    assert!(public.starts_with("age1"), "{public}");
    (key, public)
}

fn age_decrypt(key: &Path, file: &Path) -> Vec<u8> {
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(key)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn corrupted(src: &Path, dst: &Path, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let mut data = std::fs::read(src).unwrap();
    edit(&mut data);
    std::fs::write(dst, data).unwrap();
    dst.to_path_buf()
}

#[test]
fn an_encrypted_snapshot_opens_with_its_key_only_and_the_age_tool_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "ours");
    let (other, _) = keypair(dir.path(), "theirs");
    let db = Db::with_fixture("crypt_src");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let report = ok(create(&db, &out, &["--encrypt-to", &public, "--json"])).json();
    assert_eq!(report["encrypted_to"][0], public.as_str());
    let archive = PathBuf::from(report["output"].as_str().unwrap());
    assert!(
        archive.to_str().unwrap().ends_with(".tar.gz.age"),
        "{archive:?}"
    );
    let bytes = std::fs::read(&archive).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(
        sha256_hex(&bytes),
        report["output_sha256"].as_str().unwrap()
    );
    assert!(
        !bytes.windows(9).any(|w| w == b".metadata"),
        "plaintext in the file"
    );

    // The age tool opens it: a gzip tar in the cloud's order.
    let tar = gunzip(&age_decrypt(&key, &archive));
    let names: Vec<String> = members(&tar).into_iter().map(|m| m.0).collect();
    assert_eq!(names[0], ".metadata");
    assert_eq!(names[1], "db/db.backup");

    let a = archive.to_str().unwrap();
    let k = key.to_str().unwrap();
    let run = mxsnap(&["verify", a]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no key was given"), "{}", run.stderr);
    let run = mxsnap(&["verify", a, "--identity", other.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("encrypted to other keys"),
        "{}",
        run.stderr
    );
    let run = ok(mxsnap(&["verify", a, "--identity", k]));
    assert!(run.stdout.contains("age encryption"), "{}", run.stdout);
    let inspected = ok(mxsnap(&["inspect", a, "--identity", k, "--json"])).json();
    assert_eq!(inspected["encrypted"], true);
    assert_eq!(inspected["variant"], "full");

    // Restores: refused with the wrong key, the target as it was; then with the right one.
    let env = Env::new("crypt_target");
    let old = env.state();
    let run = env.restore(&archive, &["--identity", other.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(env.state(), old);
    env.assert_clean();
    ok(env.restore(&archive, &["--identity", k]));
    assert_eq!(env.state().0, db.checksums());
    env.assert_clean();

    // From a pipe too.
    let out = mxsnap_cmd(&["verify", "-", "--identity", k])
        .stdin(std::fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn what_the_age_tool_encrypts_mxsnap_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "k");
    let db = Db::with_fixture("crypt_stock");
    let plain = dir.path().join("plain.tar.gz");
    ok(create(&db, &plain, &[]));
    let sealed = dir.path().join("stock.tar.gz.age");
    let out = Command::new("age")
        .args(["-r", &public, "-o"])
        .arg(&sealed)
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let k = key.to_str().unwrap();
    ok(mxsnap(&[
        "verify",
        sealed.to_str().unwrap(),
        "--identity",
        k,
    ]));
    let env = Env::new("crypt_stock_target");
    ok(env.restore(&sealed, &["--identity", k]));
    assert_eq!(env.state().0, db.checksums());
}

#[test]
fn a_cut_or_altered_encrypted_archive_is_refused_saying_which() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "k");
    let db = Db::with_fixture("crypt_bad");
    let archive = dir.path().join("snap.tar.age");
    ok(create(
        &db,
        &archive,
        &["--encrypt-to", &public, "--compression", "none"],
    ));
    let len = std::fs::metadata(&archive).unwrap().len() as usize;
    assert!(len > 3 * 65_552, "want several chunks, have {len} bytes");
    let k = key.to_str().unwrap();
    let cut = corrupted(&archive, &dir.path().join("cut.age"), |d| {
        d.truncate(len - 5000)
    });
    let altered = corrupted(&archive, &dir.path().join("altered.age"), |d| {
        d[len / 2] ^= 0x20
    });
    let header = corrupted(&archive, &dir.path().join("header.age"), |d| d[40] ^= 0x01);
    let run = mxsnap(&["verify", cut.to_str().unwrap(), "--identity", k]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("cut short"), "{}", run.stderr);
    let run = mxsnap(&["verify", altered.to_str().unwrap(), "--identity", k]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("was altered"), "{}", run.stderr);
    let run = mxsnap(&["verify", header.to_str().unwrap(), "--identity", k]);
    assert!(matches!(run.code, 2 | 4), "{}", run.stderr);

    let env = Env::new("crypt_bad_target");
    let old = env.state();
    for bad in [&cut, &altered, &header] {
        let run = env.restore(bad, &["--identity", k]);
        assert_ne!(run.code, 0, "{bad:?} restored:\n{}", run.stderr);
        assert_eq!(env.state(), old, "{bad:?} changed the target");
        env.assert_clean();
    }
}

#[test]
fn a_passphrase_seals_and_opens_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("files.tar.zst.age");
    let store = store();
    let create = mxsnap_cmd(&[
        "create",
        "--variant",
        "files",
        "--all-files",
        "--compression",
        "zstd",
        "--files",
        store.to_str().unwrap(),
        "-o",
        archive.to_str().unwrap(),
        "--encrypt-passphrase",
    ])
    .env("MXSNAP_PASSPHRASE", "correct horse battery")
    .output()
    .unwrap();
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let verify = |passphrase: Option<&str>| {
        let mut cmd = mxsnap_cmd(&["verify", archive.to_str().unwrap()]);
        if let Some(p) = passphrase {
            cmd.env("MXSNAP_PASSPHRASE", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(verify(Some("correct horse battery")).0, 0);
    let (code, stderr) = verify(Some("wrong"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("wrong passphrase"), "{stderr}");
    let (code, stderr) = verify(None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("encrypted"), "{stderr}");
    // No terminal to ask on, and no variable: said plainly.
    let run = mxsnap(&["verify", archive.to_str().unwrap(), "--passphrase"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("MXSNAP_PASSPHRASE"), "{}", run.stderr);
}

#[test]
fn an_encrypting_catalogue_seals_every_snapshot_and_downloads_open_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keypair(dir.path(), "team");
    let k = key.to_str().unwrap();
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap();
    let run = ok(mxsnap(&[
        "snapshots",
        "config",
        "--repo",
        r,
        "--encrypt-to",
        &public,
        "--dry-run",
    ]));
    assert!(run.stdout.contains(&public), "{}", run.stdout);
    assert!(!repo.exists(), "config --dry-run made the catalogue");
    ok(mxsnap(&[
        "snapshots",
        "config",
        "--repo",
        r,
        "--encrypt-to",
        &public,
    ]));

    let db = Db::with_fixture("crypt_repo");
    let url = db.url();
    let store = store();
    let id = ok(mxsnap(&[
        "snapshots",
        "create",
        "--repo",
        r,
        "--env",
        "Test",
        "--database",
        &url,
        "--files",
        store.to_str().unwrap(),
    ]))
    .stdout
    .trim()
    .to_string();
    let shown = ok(mxsnap(&["snapshots", "show", "--repo", r, &id, "--json"])).json();
    assert_eq!(shown["EncryptedTo"][0], public.as_str());
    let stored = repo.join("archives").join(format!("{id}.tar.gz.age"));
    assert!(
        std::fs::read(&stored)
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n")
    );

    // The full download is the stored file as it is, named .age.
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let d = downloads.to_str().unwrap();
    let path = ok(mxsnap(&[
        "snapshots",
        "download",
        "--repo",
        r,
        &id,
        "-o",
        d,
    ]))
    .stdout
    .trim()
    .to_string();
    assert!(path.ends_with(".tar.gz.age"), "{path}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&stored).unwrap()
    );
    assert!(!age_decrypt(&key, Path::new(&path)).is_empty());

    // A database download must decrypt: refused without the key, a plain dump with it.
    let run = mxsnap(&[
        "snapshots",
        "download",
        "--repo",
        r,
        &id,
        "--variant",
        "database",
        "-o",
        d,
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no key was given"), "{}", run.stderr);
    let dump = ok(mxsnap(&[
        "snapshots",
        "download",
        "--repo",
        r,
        &id,
        "--variant",
        "database",
        "-o",
        d,
        "--identity",
        k,
    ]))
    .stdout
    .trim()
    .to_string();
    assert!(dump.ends_with(".backup"), "{dump}");
    tool_ok(&pg_tool("pg_restore"), &["-l", &dump]);

    // Restored into another environment with the key.
    let env = Env::new("crypt_repo_target");
    let url = env.db.url();
    ok(mxsnap(&[
        "snapshots",
        "restore",
        "--repo",
        r,
        &id,
        "--database",
        &url,
        "--files",
        env.files.to_str().unwrap(),
        "--yes",
        "--identity",
        k,
    ]));
    assert_eq!(env.state().0, db.checksums());
    assert_eq!(tree_hashes(&env.files).len(), 45);
}

/// Runs mxsnap on a pseudo-terminal (its controlling terminal), answering each passphrase
/// prompt with the next of `answers`; returns the exit code and what the terminal showed.
fn on_a_terminal(args: &[&str], answers: &[&str]) -> (i32, String) {
    let script = r#"
import os, pty, sys, json
argv, answers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.environ.pop("MXSNAP_PASSPHRASE", None)
    os.execv(argv[0], argv)
seen, answered = b"", 0
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    # Answer each prompt once it is shown, never ahead (typed-ahead input would echo).
    prompts = seen.count(b"passphrase: ") + seen.count(b"again: ")
    while answers and answered < prompts:
        os.write(fd, answers.pop(0).encode() + b"\n")
        answered += 1
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut argv = vec![crate::harness::mxsnap_bin().to_str().unwrap().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(serde_json::to_string(&argv).unwrap())
        .arg(serde_json::to_string(answers).unwrap())
        .env_remove("MXSNAP_PASSPHRASE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_passphrase_is_asked_on_the_terminal_without_echo() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("files.tar.gz.age");
    let store = store();
    let create = |answers: &[&str]| {
        on_a_terminal(
            &[
                "create",
                "-q",
                "--force",
                "--variant",
                "files",
                "--all-files",
                "--files",
                store.to_str().unwrap(),
                "-o",
                archive.to_str().unwrap(),
                "--encrypt-passphrase",
            ],
            answers,
        )
    };
    let (code, screen) = create(&["typed secret", "typed secret"]);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("passphrase:"), "{screen}");
    assert!(screen.contains("again:"), "{screen}");
    assert!(
        !screen.contains("typed secret"),
        "the passphrase was echoed: {screen}"
    );
    assert!(
        std::fs::read(&archive)
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n")
    );
    // Two different answers: nothing is written over the archive.
    let before = std::fs::read(&archive).unwrap();
    let (code, screen) = create(&["one", "another"]);
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("differ"), "{screen}");
    assert_eq!(std::fs::read(&archive).unwrap(), before);

    let a = archive.to_str().unwrap();
    let (code, screen) = on_a_terminal(&["verify", "-q", a, "--passphrase"], &["typed secret"]);
    assert_eq!(code, 0, "{screen}");
    let (code, screen) = on_a_terminal(&["verify", "-q", a, "--passphrase"], &["not it"]);
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("wrong passphrase"), "{screen}");
}
