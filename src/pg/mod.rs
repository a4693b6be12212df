//! Everything that talks to PostgreSQL: connection settings as libpq understands them, the
//! control queries (over tokio-postgres), and the `pg_dump`/`pg_restore` clients.

pub mod conn;
pub mod query;
pub mod tls;
pub mod tools;

pub use conn::ConnSpec;
pub use query::{FileDocument, FileReference, ReferencePath, Session};
pub use tools::PgTools;
