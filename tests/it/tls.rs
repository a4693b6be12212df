//! TLS to PostgreSQL: a cluster of its own with `ssl = on`, certificates made by the test with
//! the openssl tool, and a pg_hba.conf that takes TCP connections over TLS only (`hostssl`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::{self, ClusterSetup, Server};
use crate::support::*;

struct TlsServer {
    server: Server,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// Another CA, which signed nothing of this server's.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` only (so 127.0.0.1 is a wrong name), a client
/// certificate for the user `certuser`, and a second, unrelated CA.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=mxsnap test {ca}"),
        );
        args.extend([
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "3",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
    }
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "certuser", "extendedKeyUsage=clientAuth\n"),
    ] {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
        )
        .unwrap();
        let (key, csr, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3",
                "-extfile",
                &ext_file,
                "-out",
                &crt,
            ],
        );
    }
}

fn tls_server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        let server = harness::start_cluster_with(ClusterSetup {
            tag: "tls",
            port: free_port(),
            options: "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.crt \
                      -c ssl_key_file=server.key -c ssl_ca_file=ca.crt"
                .into(),
            files: vec![
                ("server.crt".into(), read("server.crt")),
                ("server.key".into(), read("server.key")),
                ("ca.crt".into(), read("ca.crt")),
            ],
            hba: Some(
                "local all all trust\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n"
                    .into(),
            ),
        });
        let client_key = dir.path().join("client.key");
        std::fs::set_permissions(&client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tls = TlsServer {
            server,
            ca: dir.path().join("ca.crt"),
            other_ca: dir.path().join("other-ca.crt"),
            client_cert: dir.path().join("client.crt"),
            client_key,
            _dir: dir,
        };
        tls.psql("postgres", "CREATE ROLE certuser LOGIN SUPERUSER");
        tls
    })
}

impl TlsServer {
    /// psql over the server's unix socket (which needs no TLS).
    fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .local_psql(db)
            .args(["-A", "-t", "-q", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn local_psql(&self, db: &str) -> Command {
        let mut c = Command::new(self.server.bin.join("psql"));
        c.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", &self.server.host])
            .args([
                "-p",
                &self.server.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ]);
        c
    }

    fn new_db(&self, tag: &str, fixture: bool) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tls_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        if fixture {
            let out = self
                .local_psql(&name)
                .arg("-q")
                .arg("-f")
                .arg(harness::fixtures().join("app.sql"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        name
    }

    /// A URL over TCP to `host` with extra query settings.
    fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/{db}?{query}",
            self.server.port
        )
    }

    fn checksums(&self, db: &str) -> BTreeMap<String, String> {
        let tables = self.psql(
            db,
            "SELECT quote_ident(schemaname)||'.'||quote_ident(tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog','information_schema') ORDER BY 1",
        );
        tables
            .lines()
            .map(|t| {
                let sum = self.psql(
                    db,
                    &format!("SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x"),
                );
                (t.to_string(), sum)
            })
            .collect()
    }
}

fn verify_full(tls: &TlsServer, host: &str, db: &str) -> String {
    tls.url(
        host,
        db,
        &format!("sslmode=verify-full&sslrootcert={}", tls.ca.display()),
    )
}

#[test]
fn require_and_verify_full_work_end_to_end() {
    let tls = tls_server();
    let source = tls.new_db("src", true);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("snap.tar.gz");
    let store = store();
    // create over verify-full: the control connection and pg_dump
    ok(mxsnap(&[
        "create",
        "--database",
        &verify_full(tls, "localhost", &source),
        "--files",
        store.to_str().unwrap(),
        "--output",
        archive.to_str().unwrap(),
    ]));
    ok(mxsnap(&["verify", archive.to_str().unwrap()]));

    // restore over require, given as a key=value string: the control connection and pg_restore
    let target = tls.new_db("dst", false);
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let kv = format!(
        "host=localhost port={} user=postgres dbname={target} sslmode='require'",
        tls.server.port
    );
    ok(mxsnap(&[
        "restore",
        archive.to_str().unwrap(),
        "--database",
        &kv,
        "--files",
        files.to_str().unwrap(),
        "--yes",
    ]));
    assert_eq!(tls.checksums(&target), tls.checksums(&source));
    // the referenced files (the fixture's 45 of the store's), byte for byte
    let restored = harness::tree_hashes(&files);
    let all = harness::tree_hashes(&store);
    assert_eq!(restored.len(), 45);
    assert!(
        restored
            .iter()
            .all(|(name, sum)| all.get(name) == Some(sum))
    );

    // prepare-upload with libpq's variables alone
    let out = dir.path().join("upload");
    let run = ok(mxsnap_cmd(&[
        "prepare-upload",
        "--database",
        &format!(
            "postgresql://postgres@localhost:{}/{source}",
            tls.server.port
        ),
        "--files",
        store.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--json",
    ])
    .env("PGSSLMODE", "verify-full")
    .env("PGSSLROOTCERT", &tls.ca)
    .output()
    .map(finish)
    .unwrap());
    let full = run.json()["full_snapshot"].as_str().unwrap().to_string();
    ok(mxsnap(&["verify", &full]));
}

/// A database-only create: the cheapest command that connects.
fn dump_with(url: &str, dir: &Path) -> Run {
    dump_with_env(url, dir, &[])
}

fn dump_with_env(url: &str, dir: &Path, env: &[(&str, &Path)]) -> Run {
    static N: AtomicU32 = AtomicU32::new(0);
    let out = dir.join(format!("db-{}.backup", N.fetch_add(1, Ordering::SeqCst)));
    let mut cmd = mxsnap_cmd(&[
        "create",
        "--variant",
        "database",
        "--database",
        url,
        "--output",
        out.to_str().unwrap(),
    ]);
    cmd.envs(env.iter().copied());
    finish(cmd.output().unwrap())
}

#[test]
fn verify_full_against_the_wrong_name_or_ca_fails_with_the_fix() {
    let tls = tls_server();
    let db = tls.new_db("names", true);
    let dir = tempfile::tempdir().unwrap();

    // the certificate names localhost, not 127.0.0.1
    let run = dump_with(&verify_full(tls, "127.0.0.1", &db), dir.path());
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("not valid for the host name"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("verify-ca"), "{}", run.stderr);
    // verify-ca checks only the issuer: the same address works
    let ca_only = tls.url(
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-ca&sslrootcert={}", tls.ca.display()),
    );
    ok(dump_with(&ca_only, dir.path()));

    // a CA that did not sign the server's certificate
    let wrong_ca = tls.url(
        "localhost",
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", tls.other_ca.display()),
    );
    let run = dump_with(&wrong_ca, dir.path());
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("not signed by a CA in"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sslrootcert"), "{}", run.stderr);

    // no CA at all: neither named nor in ~/.postgresql/root.crt
    let home = tempfile::tempdir().unwrap();
    let no_root = tls.url("localhost", &db, "sslmode=verify-full");
    let run = dump_with_env(&no_root, dir.path(), &[("HOME", home.path())]);
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("verify-full needs the CA certificate"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("root.crt"), "{}", run.stderr);
    // ...and libpq's default place is used when it is there
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&tls.ca, home.path().join(".postgresql/root.crt")).unwrap();
    let run = dump_with_env(&no_root, dir.path(), &[("HOME", home.path())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // the refused creates left no file: only the two that succeeded are there
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2, "a refused create left a file");
}

#[test]
fn a_plain_connection_to_a_tls_only_server_names_the_fix() {
    let tls = tls_server();
    let db = tls.new_db("plain", false);
    let dir = tempfile::tempdir().unwrap();
    let run = dump_with(&tls.url("localhost", &db, "sslmode=disable"), dir.path());
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(run.stderr.contains("accepts only TLS"), "{}", run.stderr);
    assert!(run.stderr.contains("sslmode=require"), "{}", run.stderr);
    // allow tries plain first, then TLS when the server refuses; prefer starts with TLS
    ok(dump_with(
        &tls.url("localhost", &db, "sslmode=allow"),
        dir.path(),
    ));
    ok(dump_with(
        &tls.url("localhost", &db, "sslmode=prefer"),
        dir.path(),
    ));
    // an unknown mode is a usage error
    let run = dump_with(
        &tls.url("localhost", &db, "sslmode=verify_full"),
        dir.path(),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[test]
fn client_certificates_authenticate_and_loose_keys_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tls = tls_server();
    let db = tls.new_db("cert", true);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgresql://certuser@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        tls.server.port,
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    ok(dump_with(&url, dir.path()));
    // without the certificate the cert method refuses
    let run = dump_with(
        &verify_full(tls, "localhost", &db).replace("postgres@", "certuser@"),
        dir.path(),
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    // a key others can read is refused, as libpq does
    let loose = dir.path().join("loose.key");
    std::fs::copy(&tls.client_key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = dump_with(
        &url.replace(tls.client_key.to_str().unwrap(), loose.to_str().unwrap()),
        dir.path(),
    );
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr.contains("group or world access"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("chmod"), "{}", run.stderr);
}
