//! Command-line arguments. Parsing only: every command hands its options to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use mxsnap::archive::{Compression, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "mxsnap",
    version,
    about = "Package, verify and restore application snapshots: a PostgreSQL dump plus its file \
             objects, in the cloud's archive layout",
    after_help = "Exit codes: 0 success, 1 other failure, 2 usage, 3 not an archive, \
                  4 corrupt archive, 5 environment (database, tools, disk), 6 not allowed \
                  (target in use)."
)]
pub struct Cli {
    /// Print nothing but errors (and the --json object).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a snapshot archive of a database and its file store.
    Create(CreateArgs),
    /// Describe an archive: variant, compression, .metadata, members, dump header.
    Inspect(ReadArgs),
    /// Check that an archive is complete and intact; exit 0 only if it is.
    Verify(VerifyArgs),
    /// Restore an archive into a stopped environment, atomically (or into a managed local
    /// environment with --into).
    Restore(RestoreArgs),
    /// Prepare an on-premises app's data for the cloud's upload: a strict full snapshot and a
    /// database-only file from one dump, with a report.
    PrepareUpload(PrepareArgs),
    /// The snapshot catalogue: create, list, show, comment, delete, download, restore, prune.
    Snapshots {
        #[command(subcommand)]
        action: SnapshotsAction,
    },
    /// Manage a local environment made by `restore --into`.
    Env {
        #[command(subcommand)]
        action: EnvAction,
    },
    /// Serve the cloud's Backups API (v1 and v2) over a catalogue (see README, "serve").
    Serve(ServeArgs),
    /// Talk to a Backups API (the cloud's, or `mxsnap serve`): list, create, download and
    /// restore an environment's snapshots. Credentials from MENDIX_USERNAME and MENDIX_APIKEY
    /// or an owner-only file, never from the command line.
    Remote(RemoteArgs),
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub action: RemoteAction,
}

/// Which API, which environment, and who asks.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The API's base URL: the cloud's, or an `mxsnap serve`.
    #[arg(
        long,
        global = true,
        env = "MXSNAP_API_URL",
        default_value = mxsnap::remote::DEFAULT_BASE_URL,
        value_name = "URL"
    )]
    pub api_url: String,
    /// v1 (app name and Test/Acceptance/Production) or v2 (project and environment UUIDs);
    /// default: v2 when both ids are UUIDs.
    #[arg(long, global = true, value_name = "v1|v2")]
    pub api: Option<ApiChoice>,
    /// The app: v1 its name (AppId), v2 its project UUID.
    #[arg(long, global = true, env = "MXSNAP_APP", value_name = "APP")]
    pub app: Option<String>,
    /// The environment: v1 Test, Acceptance, Production or a flexible environment's name; v2
    /// its UUID.
    #[arg(long = "env", global = true, env = "MXSNAP_ENV", value_name = "ENV")]
    pub environment: Option<String>,
    /// A TOML file with username and api_key, readable by its owner only (default: the
    /// MENDIX_USERNAME and MENDIX_APIKEY variables, then ~/.config/mxsnap/credentials.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ApiChoice {
    V1,
    V2,
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// List the environment's snapshots, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ask for a new snapshot (made in the background; --wait waits for it).
    Create {
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Wait until a snapshot is completed (exit 0) or failed.
    Wait {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a download link of a snapshot (`latest`: the newest completed one).
    Link {
        #[arg(value_name = "ID|latest")]
        id: String,
        #[arg(long, default_value = "full", value_name = "full|database|files")]
        variant: Variant,
        #[arg(long)]
        json: bool,
    },
    /// Download a snapshot to a file: FILE.partial while it comes (a second run resumes it),
    /// renamed when complete and verified.
    Download {
        #[arg(value_name = "ID|latest")]
        id: String,
        #[arg(long, default_value = "full", value_name = "full|database|files")]
        variant: Variant,
        /// The file, or a directory (the file is named as the cloud names it).
        #[arg(long, short, value_name = "FILE|DIR")]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        /// Directory holding pg_restore, for the verification.
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot straight from the API into a stopped environment (--files,
    /// --database) or a managed local one (--into), streaming: no copy of the archive on disk.
    Restore {
        #[arg(value_name = "ID|latest")]
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Ask the API to restore a snapshot (of this or another environment of the app) into
    /// the API's environment named by --app and --env, which must be stopped.
    RestoreThere {
        #[arg(value_name = "ID")]
        id: String,
        /// Only the database (v2).
        #[arg(long)]
        db_only: bool,
        /// Do not ask before replacing the environment's data.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// The service's TOML configuration (readable by its owner only).
    #[arg(long, value_name = "FILE", required = false)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Print the key_sha256 of an API key read from standard input (never from the command
    /// line), for a [[users]] entry.
    HashKey,
}

#[derive(Debug, Subcommand)]
pub enum EnvAction {
    /// Say whether the environment's PostgreSQL runs, and print its settings.
    Status(EnvArgs),
    /// Start the environment's PostgreSQL.
    Start(EnvArgs),
    /// Stop the environment's PostgreSQL.
    Stop(EnvArgs),
}

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The catalogue directory.
    #[arg(long, env = "MXSNAP_REPO", value_name = "DIR")]
    pub repo: PathBuf,
    /// Time zone of the retention schedule (days, Sundays, months).
    #[arg(long, default_value = "UTC", value_name = "TZ")]
    pub tz: String,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsAction {
    /// Make a full snapshot of an environment into the catalogue.
    Create {
        #[command(flatten)]
        repo: RepoArgs,
        /// Environment: Test, Acceptance, Production, or a flexible environment's name.
        #[arg(long = "env", value_name = "NAME")]
        environment: String,
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        #[arg(long, value_name = "DIR")]
        files: PathBuf,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// A scheduled snapshot: created by "Nightly", kept by the nightly schedule.
        #[arg(long)]
        nightly: bool,
        #[arg(long, value_name = "V")]
        model_version: Option<String>,
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Set what the catalogue does with every snapshot written to it: encrypt to age
    /// recipients (made when missing).
    Config {
        #[command(flatten)]
        repo: RepoArgs,
        /// Encrypt every new snapshot to this age public key; repeatable.
        #[arg(long, value_name = "AGE1...")]
        encrypt_to: Vec<String>,
        /// Encrypt every new snapshot to the public keys in this recipients file.
        #[arg(long, value_name = "FILE")]
        encrypt_to_file: Vec<PathBuf>,
        /// Stop encrypting new snapshots (those written stay as they are).
        #[arg(long, conflicts_with_all = ["encrypt_to", "encrypt_to_file"])]
        no_encryption: bool,
        #[arg(long)]
        json: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List snapshots (--json: the Backups API v1 fields).
    List {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long = "env", value_name = "NAME")]
        environment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot's details.
    Show {
        #[command(flatten)]
        repo: RepoArgs,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a snapshot's comment.
    Comment {
        #[command(flatten)]
        repo: RepoArgs,
        id: String,
        text: String,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a snapshot and its archive.
    Delete {
        #[command(flatten)]
        repo: RepoArgs,
        id: String,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a stored snapshot out as the cloud's full, database-only or files-only download.
    Download {
        #[command(flatten)]
        repo: RepoArgs,
        id: String,
        #[arg(long, default_value = "full", value_name = "full|database|files")]
        variant: Variant,
        #[arg(long, short, value_name = "FILE|DIR|-")]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
        /// Opens an encrypted snapshot for a database or files download (a full one is
        /// handed over encrypted, as stored).
        #[command(flatten)]
        keys: KeyArgs,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy snapshots from one catalogue to another (a directory and an object store, either
    /// way), each archive verified on the way; prints the ids copied.
    Copy {
        /// The catalogue to copy from (a directory or s3://bucket/prefix).
        #[arg(long, value_name = "DIR|s3://...")]
        from: PathBuf,
        /// The catalogue to copy to (made when missing).
        #[arg(long, value_name = "DIR|s3://...")]
        to: PathBuf,
        /// The snapshots to copy (ids or unique prefixes); none: every Completed one.
        ids: Vec<String>,
        #[arg(long = "env", value_name = "NAME")]
        environment: Option<String>,
        /// Where pg_restore is, for verifying the dumps.
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        /// Opens encrypted archives, so that they are verified in full and not by checksum
        /// alone (they are copied as stored, encrypted).
        #[command(flatten)]
        keys: KeyArgs,
        #[arg(long)]
        json: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a stored snapshot into any environment ("restore into").
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Delete the snapshots the retention schedule lets expire.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long = "env", value_name = "NAME")]
        environment: Option<String>,
        /// Evaluate the schedule at this time (RFC 3339) instead of now.
        #[arg(long, value_name = "TIMESTAMP")]
        now: Option<String>,
        /// List every snapshot with keep/delete and the rule behind it; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// The target options of `mxsnap restore`, shared with `snapshots restore`.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// PostgreSQL URL of the target database (created when missing). Its user needs CREATEDB.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "into",
        conflicts_with = "into"
    )]
    pub database: Option<String>,
    /// The target file store (created when missing).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "into",
        conflicts_with = "into"
    )]
    pub files: Option<PathBuf>,
    /// Make (or reuse) a local environment in DIR: a private PostgreSQL cluster and
    /// DIR/data/files, left running.
    #[arg(long, value_name = "DIR")]
    pub into: Option<PathBuf>,
    /// Restore only part of a full snapshot.
    #[arg(long, value_name = "full|database|files")]
    pub variant: Option<Variant>,
    /// The app's pid file: a live process there means the app runs, and the restore is refused.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Parallel pg_restore jobs.
    #[arg(long, short, default_value_t = 2, value_name = "N")]
    pub jobs: usize,
    /// When the database and the files are restored: overlapped (fastest where measured), or
    /// one half after the other.
    #[arg(
        long,
        default_value = "overlap",
        value_name = "overlap|database-first|files-first"
    )]
    pub order: mxsnap::restore::RestoreOrder,
    /// Keep the replaced database and files under timestamped names.
    #[arg(long)]
    pub keep_previous: bool,
    /// Clear the half the archive lacks, as the cloud's Upload data does: a database-only
    /// archive leaves an empty file store, a files-only one an empty database.
    #[arg(long, conflicts_with = "variant")]
    pub clear_rest: bool,
    /// Swap the files in without waiting for them to reach the disk: faster where writing
    /// back is slow, but an OS crash or power failure soon after can leave them incomplete.
    /// For scratch and development environments.
    #[arg(long)]
    pub no_sync: bool,
    /// The target's model version (for the older-model warning).
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask before replacing existing data.
    #[arg(long, short)]
    pub yes: bool,
    /// Directory holding pg_restore (default: PATH, then /usr/lib/postgresql/*/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// The environment directory.
    pub dir: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print what would be done and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// PostgreSQL URL of the app's database.
    #[arg(long, value_name = "URL", conflicts_with = "m2ee", requires = "files")]
    pub database: Option<String>,
    /// The app's uploaded-files directory (data/files).
    #[arg(long, value_name = "DIR", conflicts_with = "m2ee")]
    pub files: Option<PathBuf>,
    /// Read the database, file store and pid file from an m2ee-tools m2ee.yaml.
    #[arg(long, value_name = "PATH", required_unless_present = "files")]
    pub m2ee: Option<PathBuf>,
    /// Directory for the snapshot and the database file.
    #[arg(long, short, value_name = "DIR")]
    pub output: PathBuf,
    /// The app's pid file (taken from m2ee.yaml with --m2ee).
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Go on while the app runs (the database still comes from one consistent snapshot).
    #[arg(long)]
    pub allow_running: bool,
    /// Directory holding pg_dump and pg_restore (e.g. an older client for the cloud).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// The app's model version, recorded in .metadata.
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// Also write the uploaded files on their own, as the cloud's older upload takes them:
    /// zip or tar.gz (files-<tag>-<stamp>.zip).
    #[arg(long, value_name = "zip|tar.gz")]
    pub files_as: Option<mxsnap::prepare::FilesFormat>,
    /// Print one JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the plan (checks passed, files to be written) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive, or - for standard input.
    #[arg(value_name = "ARCHIVE|-")]
    pub archive: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// PostgreSQL URL or key=value string (libpq's forms, e.g.
    /// postgresql://user@host:5432/db or postgresql:///db?host=/socket/dir). Without it,
    /// PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE are used.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// The app's uploaded-files directory (data/files).
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// A file, a directory (the file is named as the cloud names it), or - for stdout.
    #[arg(long, short, value_name = "FILE|DIR|-")]
    pub output: PathBuf,
    #[arg(long, default_value = "full", value_name = "full|database|files")]
    pub variant: Variant,
    #[arg(long, default_value = "gzip", value_name = "gzip|zstd|none")]
    pub compression: Compression,
    /// Compression level (gzip 0-9, default 6; zstd 1-22, default 3).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// The app's model version, recorded in .metadata (default "unknown").
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// A comment, recorded in the manifest.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Pack every file of the store, not only those system$filedocument references.
    #[arg(long)]
    pub all_files: bool,
    /// Write only the cloud's members (no manifest).
    #[arg(long)]
    pub strict_layout: bool,
    /// Directory holding pg_dump and pg_restore (default: PATH, then /usr/lib/postgresql/*/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub encrypt: EncryptArgs,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the plan (connection checked, output named) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The archive, or - for standard input.
    #[arg(value_name = "ARCHIVE|-")]
    pub archive: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
}

/// What opens an encrypted (age) archive.
#[derive(Debug, Args, Clone, Default)]
pub struct KeyArgs {
    /// An age identity file (as age-keygen writes it) holding a recipient's private key;
    /// repeatable.
    #[arg(long, value_name = "KEYFILE")]
    pub identity: Vec<PathBuf>,
    /// The archive is sealed with a passphrase: take it from MXSNAP_PASSPHRASE, or ask on the
    /// terminal (MXSNAP_PASSPHRASE, when set, is always tried).
    #[arg(long)]
    pub passphrase: bool,
}

/// To whom a new archive is sealed (age).
#[derive(Debug, Args, Clone, Default)]
pub struct EncryptArgs {
    /// Encrypt to this age public key (age1...); repeatable.
    #[arg(long, value_name = "AGE1...")]
    pub encrypt_to: Vec<String>,
    /// Encrypt to every public key in this recipients file; repeatable.
    #[arg(long, value_name = "FILE")]
    pub encrypt_to_file: Vec<PathBuf>,
    /// Encrypt with a passphrase, from MXSNAP_PASSPHRASE or asked twice on the terminal
    /// (never on the command line).
    #[arg(long, conflicts_with_all = ["encrypt_to", "encrypt_to_file"])]
    pub encrypt_passphrase: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Directory holding pg_restore (default: PATH, then /usr/lib/postgresql/*/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}
