//! Control queries over one tokio-postgres connection, driven by a small current-thread
//! runtime so the rest of mxsnap stays synchronous.

use tokio::runtime::Runtime;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ConnSpec;
use super::tls::{self, SslMode as TlsMode};
use crate::error::{Error, Result};

enum Failure {
    /// The TLS settings could not be turned into a client configuration.
    Setup(Error),
    Connect(tokio_postgres::Error),
}

/// Connects as libpq would in `mode`: `allow` tries plain first and TLS when the server refuses,
/// `prefer` tries TLS first and plain when the server refuses (or has no TLS).
async fn open(config: &Config, mode: TlsMode, spec: &ConnSpec) -> Result<Client, Failure> {
    let rustls = || {
        spec.tls()
            .client_config()
            .map(MakeRustlsConnect::new)
            .map_err(Failure::Setup)
    };
    let refused = |e: &tokio_postgres::Error| e.as_db_error().is_some();
    match mode {
        TlsMode::Disable => attempt(config, SslMode::Disable, NoTls).await,
        TlsMode::Allow => match attempt(config, SslMode::Disable, NoTls).await {
            Err(Failure::Connect(e)) if refused(&e) => {
                attempt(config, SslMode::Require, rustls()?).await
            }
            other => other,
        },
        TlsMode::Prefer => match attempt(config, SslMode::Prefer, rustls()?).await {
            Err(Failure::Connect(e)) if refused(&e) => {
                attempt(config, SslMode::Disable, NoTls).await
            }
            other => other,
        },
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
            attempt(config, SslMode::Require, rustls()?).await
        }
    }
}

async fn attempt<T>(config: &Config, mode: SslMode, tls: T) -> Result<Client, Failure>
where
    T: MakeTlsConnect<Socket> + 'static,
    T::Stream: Send + 'static,
{
    let mut config = config.clone();
    config.ssl_mode(mode);
    let (client, connection) = config.connect(tls).await.map_err(Failure::Connect)?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; its error is reported by the next
        // query.
        let _ = connection.await;
    });
    Ok(client)
}

/// A connection failure in words that say what to change.
fn connect_error(what: &str, spec: &ConnSpec, e: tokio_postgres::Error) -> Error {
    let settings = spec.tls();
    let root = settings
        .root_cert
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(tls_error) = tls::rustls_error(&e) {
        use rustls::CertificateError as C;
        return match tls_error {
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Error::environment(format!(
                "the server's certificate is not valid for the host name it was reached by \
                     ({what}; sslmode=verify-full checks the name)"
            ))
            .with_hint(
                "connect with a host name the certificate names, or use sslmode=verify-ca \
                     to check only who signed it",
            ),
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                Error::environment(format!(
                    "the server's certificate ({what}) is not signed by a CA in {root}"
                ))
                .with_hint(
                    "point sslrootcert (or PGSSLROOTCERT) at the CA that signed the server's \
                     certificate",
                )
            }
            other => Error::environment(format!(
                "the TLS handshake with PostgreSQL at {what} failed: {other}"
            ))
            .with_hint("check the server's certificate and sslmode, sslrootcert, sslcert, sslkey"),
        };
    }
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    let error = Error::environment(format!("cannot connect to PostgreSQL at {what}: {detail}"));
    if detail.contains("no encryption") {
        return error.with_hint(
            "the server accepts only TLS connections: add sslmode=require (or verify-full with \
             sslrootcert=CA-file) to the database URL, or set PGSSLMODE",
        );
    }
    if detail.contains("does not support TLS") {
        return error.with_hint(
            "the server has TLS off: use sslmode=prefer (or disable), or turn ssl on in its \
             postgresql.conf",
        );
    }
    error.with_hint(
        "check that the server runs and that --database (or PGHOST, PGPORT, PGUSER, PGPASSWORD, \
         PGDATABASE, PGSSLMODE) points at it",
    )
}

/// One row of `system$filedocument`, reduced to what decides where the file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDocument {
    pub uuid: Option<String>,
    /// The legacy numeric name (`__filename__`).
    pub number: Option<i64>,
    pub has_contents: bool,
    pub delete_after_download: bool,
}

/// Which of a row's paths a [`FileReference`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferencePath {
    /// `aa/bb/<uuid>` (a row with a UUID; whether it is well-formed is for the store to say).
    Uuid,
    /// `nn/<number>`.
    Legacy,
    /// A row with neither.
    Neither,
}

/// A row of `system$filedocument` at one of the places its file may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReference {
    pub path: ReferencePath,
    pub doc: FileDocument,
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings, on since PostgreSQL 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub struct Session {
    runtime: Runtime,
    client: Client,
    what: String,
}

fn query_error(what: &str, e: tokio_postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    Error::environment(format!("{what}: {detail}"))
}

impl Session {
    pub fn connect(spec: &ConnSpec) -> Result<Session> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the query runtime", e))?;
        let what = spec.describe();
        let mut config = spec.config().clone();
        config.application_name("mxsnap");
        let mode = if spec.local_only() {
            TlsMode::Disable
        } else {
            spec.tls().mode
        };
        let client = runtime
            .block_on(open(&config, mode, spec))
            .map_err(|e| match e {
                Failure::Setup(e) => e,
                Failure::Connect(e) => connect_error(&what, spec, e),
            })?;
        Ok(Session {
            runtime,
            client,
            what,
        })
    }

    /// Runs a query with parameters; `what` names it in an error.
    fn rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.runtime
            .block_on(self.client.query(sql, params))
            .map_err(|e| query_error(what, e))
    }

    /// Runs statements that return nothing.
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| query_error(&format!("query on {}", self.what), e))
    }

    fn one_text(&self, sql: &str) -> Result<Option<String>> {
        let row = self
            .runtime
            .block_on(self.client.query_one(sql, &[]))
            .map_err(|e| query_error(&format!("query on {}", self.what), e))?;
        Ok(row.get(0))
    }

    /// `server_version_num`, e.g. 150018.
    pub fn server_version_num(&self) -> Result<u32> {
        let v = self.one_text("SELECT current_setting('server_version_num')")?;
        v.and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::environment("the server did not report its version"))
    }

    /// Bytes the current database occupies.
    pub fn database_size(&self) -> Result<u64> {
        let v = self.one_text("SELECT pg_database_size(current_database())::text")?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Opens a repeatable-read transaction and exports its snapshot, so that `pg_dump
    /// --snapshot` and our own queries see one and the same state of the database.
    pub fn begin_exported_snapshot(&self) -> Result<String> {
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        self.one_text("SELECT pg_export_snapshot()")?
            .ok_or_else(|| Error::environment("the server exported no snapshot"))
    }

    pub fn commit(&self) -> Result<()> {
        self.execute("COMMIT")
    }

    /// The OID of database `name`, if it exists.
    pub fn database_oid(&self, name: &str) -> Result<Option<u32>> {
        let rows = self.rows(
            "SELECT oid::text FROM pg_database WHERE datname = $1",
            &[&name],
            "looking up a database",
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<_, String>(0).parse().ok()))
    }

    /// Encoding, collation and ctype of database `name`.
    pub fn database_locale(&self, name: &str) -> Result<Option<(String, String, String)>> {
        let rows = self.rows(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
                 FROM pg_database WHERE datname = $1",
            &[&name],
            "looking up a database",
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// The name the database with this OID has now.
    pub fn database_name(&self, oid: u32) -> Result<Option<String>> {
        let rows = self.rows(
            "SELECT datname::text FROM pg_database WHERE oid = $1::text::oid",
            &[&oid.to_string()],
            "looking up a database",
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Sessions connected to database `name`, other than this one, described for a person.
    /// Autovacuum workers are not sessions of the app: the server starts them on its own
    /// (on a freshly restored database, within a minute) and `DROP DATABASE ... WITH (FORCE)`
    /// ends them.
    pub fn sessions_on(&self, name: &str) -> Result<Vec<String>> {
        let rows = self.rows(
            "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
             coalesce(host(client_addr), 'local'), coalesce(state, '') \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \
             AND backend_type <> 'autovacuum worker' ORDER BY pid",
            &[&name],
            "listing sessions",
        )?;
        Ok(rows
            .iter()
            .map(|r| {
                let pid: i32 = r.get(0);
                let user: String = r.get(1);
                let app: String = r.get(2);
                let from: String = r.get(3);
                let state: String = r.get(4);
                format!("pid {pid} (user {user}, application {app:?}, from {from}, {state})")
            })
            .collect())
    }

    /// Creates an empty database `name` from template0, with the encoding and locale given
    /// (those of the database it will replace), and a comment saying what it is.
    pub fn create_database(
        &self,
        name: &str,
        like: Option<&(String, String, String)>,
        comment: &str,
    ) -> Result<()> {
        let quoted = quote_ident(name);
        let mut sql = format!("CREATE DATABASE {quoted} TEMPLATE template0");
        if let Some((encoding, collate, ctype)) = like {
            sql.push_str(&format!(
                " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
                quote_literal(encoding),
                quote_literal(collate),
                quote_literal(ctype)
            ));
        }
        self.execute(&sql)?;
        self.execute(&format!(
            "COMMENT ON DATABASE {quoted} IS {}",
            quote_literal(comment)
        ))
    }

    /// Drops database `name` if it exists, ending its sessions.
    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
    }

    /// Renames databases, each `(from, to)` in turn, in one transaction: all or none.
    pub fn rename_databases(&self, renames: &[(&str, &str)]) -> Result<()> {
        let mut sql = String::from("BEGIN;");
        for (from, to) in renames {
            sql.push_str(&format!(
                "ALTER DATABASE {} RENAME TO {};",
                quote_ident(from),
                quote_ident(to)
            ));
        }
        sql.push_str("COMMIT;");
        self.execute(&sql)
    }

    /// Whether the database has `system$filedocument`.
    pub fn has_file_documents(&self) -> Result<bool> {
        let exists = self.one_text("SELECT to_regclass('public.\"system$filedocument\"')::text")?;
        Ok(exists.is_some())
    }

    /// The rows of `system$filedocument` as [`FileReference`]s in the order of the store's
    /// paths, handed to `each` one at a time as they arrive (never all in memory: a store can
    /// have millions of files). Returns false, without calling `each`, when the database has no
    /// such table.
    ///
    /// A row comes once for its UUID's path and once for its legacy path (when it has each),
    /// or once with no path; the server sorts them by path in byte order ("C"), which is also
    /// the order of a directory walk sorted one folder at a time, because these paths hold
    /// nothing that sorts below `/`.
    pub fn file_references(
        &self,
        each: &mut dyn FnMut(FileReference) -> Result<()>,
    ) -> Result<bool> {
        if !self.has_file_documents()? {
            return Ok(false);
        }
        let sql = r#"WITH docs AS (
                       SELECT "__uuid__"::text AS u, "__filename__"::bigint AS n,
                              coalesce(hascontents, false) AS c,
                              coalesce(deleteafterdownload, false) AS d
                       FROM public."system$filedocument")
                     SELECT b, u, n, c, d FROM (
                       SELECT substr(u, 1, 2) || '/' || substr(u, 3, 2) || '/' || u AS k, 0 AS b,
                              u, n, c, d
                       FROM docs WHERE u IS NOT NULL
                       UNION ALL
                       SELECT CASE WHEN n < 10000 THEN '0' ELSE '' END || (n / 1000)::text
                                || '/' || n::text, 1, u, n, c, d
                       FROM docs WHERE n >= 0
                       UNION ALL
                       SELECT NULL, 2, u, n, c, d
                       FROM docs WHERE u IS NULL AND (n IS NULL OR n < 0)
                     ) refs
                     ORDER BY k COLLATE "C" NULLS FIRST"#;
        let failed = |e| {
            query_error("reading system$filedocument", e).with_hint(
                "the table needs the columns __uuid__, __filename__, hascontents and \
                 deleteafterdownload; use --all-files to pack the whole store instead",
            )
        };
        let no_params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
        let stream = self
            .runtime
            .block_on(
                self.client.query_raw(
                    sql,
                    no_params
                        .iter()
                        .map(|p| *p as &dyn tokio_postgres::types::ToSql),
                ),
            )
            .map_err(failed)?;
        let mut stream = std::pin::pin!(stream);
        loop {
            // A batch per wake-up: the rows come off the socket as they are read, so the
            // server waits for a slow reader instead of the client buffering the table.
            let batch = self.runtime.block_on(async {
                let mut batch = Vec::with_capacity(1024);
                while batch.len() < 1024 {
                    let next = std::future::poll_fn(|cx| {
                        futures_core::Stream::poll_next(stream.as_mut(), cx)
                    })
                    .await;
                    match next {
                        Some(row) => batch.push(row),
                        None => break,
                    }
                }
                batch
            });
            let done = batch.len() < 1024;
            for row in batch {
                let r = row.map_err(failed)?;
                let doc = FileDocument {
                    uuid: r.get(1),
                    number: r.get(2),
                    has_contents: r.get(3),
                    delete_after_download: r.get(4),
                };
                let path = match r.get::<_, i32>(0) {
                    0 => ReferencePath::Uuid,
                    1 => ReferencePath::Legacy,
                    _ => ReferencePath::Neither,
                };
                each(FileReference { path, doc })?;
            }
            if done {
                return Ok(true);
            }
        }
    }
}
