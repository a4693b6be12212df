//! A real PostgreSQL server for the tests, and helpers around it.
//!
//! By default one throwaway cluster per test binary is made with the system's `initdb` and
//! `pg_ctl` (as the `postgres` user when we are root, since initdb refuses root), listening on a
//! unix socket in a temp directory only. A watchdog process stops it and removes its directory
//! when the test process ends, however it ends. Each test works in databases of its own, so
//! tests run in parallel.
//!
//! To use an existing server instead, set MXSNAP_TEST_PGHOST (host name or socket directory),
//! and optionally MXSNAP_TEST_PGPORT, MXSNAP_TEST_PGUSER and MXSNAP_TEST_PGPASSWORD; the user
//! needs CREATEDB.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub bin: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding initdb/pg_ctl/psql: the same lookup mxsnap's local environments use.
pub fn pg_bin() -> PathBuf {
    mxsnap::target::local::server_bin()
        .expect("PostgreSQL server binaries not found: install postgresql (see .ci/run)")
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn as_server_user(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

/// How a throwaway cluster differs from the default one.
#[derive(Default)]
pub struct ClusterSetup {
    /// Names the cluster's directory.
    pub tag: &'static str,
    /// More postgres options (`-c name=value ...`), e.g. a TCP listener and ssl.
    pub options: String,
    /// Files written into the data directory before the start (owned by the server user,
    /// mode 0600): certificates, keys.
    pub files: Vec<(String, Vec<u8>)>,
    /// A pg_hba.conf replacing initdb's.
    pub hba: Option<String>,
    /// The port (socket name, and TCP when listening); 0 for 5432.
    pub port: u16,
}

fn start_cluster() -> Server {
    start_cluster_with(ClusterSetup {
        tag: "main",
        ..ClusterSetup::default()
    })
}

/// Makes and starts a throwaway cluster (unix socket always; `setup` may add more), stopped
/// and removed when the test process ends.
pub fn start_cluster_with(setup: ClusterSetup) -> Server {
    use std::os::unix::fs::PermissionsExt;
    let bin = pg_bin();
    let port = if setup.port == 0 { 5432 } else { setup.port };
    // Not under /tmp's private temp dirs: the postgres user must be able to reach it.
    let base = std::env::temp_dir().join(format!(
        "mxsnap-test-pg-{}-{}",
        setup.tag,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let data = base.join("data");
    let sock = base.join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    if is_root() {
        run_checked(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&base),
            "chown cluster dir",
        );
    }
    run_checked(
        as_server_user(&bin, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::piped()),
        "initdb",
    );
    for (name, contents) in &setup.files {
        let path = data.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if let Some(hba) = &setup.hba {
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    }
    if is_root() {
        run_checked(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data),
            "chown cluster files",
        );
    }
    let opts = format!(
        "-k {} -c listen_addresses='' -p {port} -c fsync=off -c full_page_writes=off \
         -c max_connections=200 {}",
        sock.display(),
        setup.options
    );
    run_checked(
        as_server_user(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(base.join("log"))
            .args(["-w", "-o", &opts, "start"])
            .stdout(Stdio::piped()),
        "pg_ctl start",
    );
    // The watchdog outlives a crashed or killed test binary and cleans up after it; it is
    // never waited for on purpose.
    let runuser = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {runuser}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {base}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        base = base.display(),
    );
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster watchdog");
    Server {
        host: sock.display().to_string(),
        port,
        user: "postgres".into(),
        password: None,
        bin,
    }
}

pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("MXSNAP_TEST_PGHOST") {
        Ok(host) => Server {
            host,
            port: std::env::var("MXSNAP_TEST_PGPORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432),
            user: std::env::var("MXSNAP_TEST_PGUSER").unwrap_or_else(|_| "postgres".into()),
            password: std::env::var("MXSNAP_TEST_PGPASSWORD").ok(),
            bin: pg_bin(),
        },
        Err(_) => start_cluster(),
    })
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A database of the test server, dropped when the value is.
pub struct Db {
    pub name: String,
}

impl Db {
    /// A new, empty database with a unique name.
    pub fn new(tag: &str) -> Db {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        Db { name }
    }

    /// A new database loaded with fixtures/app.sql.
    pub fn with_fixture(tag: &str) -> Db {
        let db = Db::new(tag);
        let s = server();
        run_checked(
            Command::new(s.bin.join("psql"))
                .envs(env_for(&db.name))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(fixtures().join("app.sql")),
            "loading fixtures/app.sql",
        );
        db
    }

    /// A postgres URL for this database (no password in it unless the server needs one).
    pub fn url(&self) -> String {
        url_for(&self.name)
    }

    pub fn psql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    /// One checksum per table (all rows, in a stable order) and per sequence value.
    pub fn checksums(&self) -> BTreeMap<String, String> {
        table_checksums(&self.name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = Command::new(server().bin.join("psql"))
            .envs(env_for("postgres"))
            .args(["-X", "-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

pub fn url_for(db: &str) -> String {
    let s = server();
    let mut url = format!(
        "postgresql:///{}?host={}&port={}&user={}",
        pct(db),
        pct(&s.host),
        s.port,
        pct(&s.user)
    );
    if let Some(pw) = &s.password {
        url.push_str(&format!("&password={}", pct(pw)));
    }
    url
}

pub fn env_for(db: &str) -> Vec<(&'static str, String)> {
    let s = server();
    let mut env = vec![
        ("PGHOST", s.host.clone()),
        ("PGPORT", s.port.to_string()),
        ("PGUSER", s.user.clone()),
        ("PGDATABASE", db.to_string()),
    ];
    if let Some(pw) = &s.password {
        env.push(("PGPASSWORD", pw.clone()));
    }
    env
}

/// Runs SQL with psql and returns its unaligned, tuples-only output.
pub fn psql(db: &str, sql: &str) -> String {
    run_checked(
        Command::new(server().bin.join("psql"))
            .envs(env_for(db))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        &format!("psql {sql:?}"),
    )
    .trim()
    .to_string()
}

pub fn table_checksums(db: &str) -> BTreeMap<String, String> {
    let tables = psql(
        db,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables \
         ORDER BY 1",
    );
    let mut out = BTreeMap::new();
    for t in tables.lines().filter(|l| !l.is_empty()) {
        let sum = psql(
            db,
            &format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
                 FROM {t} x"
            ),
        );
        out.insert(t.to_string(), sum);
    }
    let seqs = psql(
        db,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) || '=' || \
         coalesce(last_value, 0) FROM pg_sequences ORDER BY 1",
    );
    for s in seqs.lines().filter(|l| !l.is_empty()) {
        let (name, value) = s.split_once('=').unwrap();
        out.insert(format!("seq {name}"), value.to_string());
    }
    out
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The path of the mxsnap binary under test.
pub fn mxsnap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mxsnap"))
}

/// SHA-256 of every regular file below `root`, by relative path.
pub fn tree_hashes(root: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let mut out = BTreeMap::new();
    if !root.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let data = std::fs::read(e.path()).unwrap();
            let hash: String = Sha256::digest(&data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            out.insert(rel, hash);
        }
    }
    out
}
