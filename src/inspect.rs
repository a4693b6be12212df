//! `inspect` and `verify`: read an archive (any variant, any compression, from a file or a
//! pipe) from end to end. `inspect` describes it; `verify` also proves it intact: every
//! member's checksum against the manifest, `.metadata` against the members, the dump through
//! `pg_restore`, and the compressed stream through its trailer.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::detect::{self, Container};
use crate::archive::dump_header::{self, DumpHeader};
use crate::archive::layout::{DUMP, METADATA, Member};
use crate::archive::manifest::{self, METADATA_LIMIT, ManifestEntry, ManifestSpool, Metadata};
use crate::archive::reader::{Visitor, walk_tar};
use crate::archive::{Compression, Content, Input, Variant};
use crate::crypt::Keys;
use crate::error::{Error, Result};
use crate::pg::PgTools;
use crate::progress::{Cancel, Progress};
use crate::source::{ArchiveInput, Peek, Source};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The archive read, as named in messages (set by [`execute`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// `true` once verify found the archive complete and intact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// Read through age decryption.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    pub variant: Variant,
    pub compression: Compression,
    pub container: Container,
    /// `.metadata`, when the archive has one.
    pub metadata: Option<Metadata>,
    /// Content members (files of the tar, or 1 for a bare dump); directories not counted.
    pub members: u64,
    pub content_bytes: u64,
    pub dump_size: Option<u64>,
    pub dump: Option<DumpHeader>,
    pub tree_files: u64,
    pub tree_bytes: u64,
    /// Whether mxsnap's manifest is present.
    pub manifest: bool,
    pub manifest_comment: Option<String>,
    /// Checks that passed (verify only).
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reports raw input bytes as progress.
struct ProgressReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<R: std::io::Seek> std::io::Seek for ProgressReader<'_, R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Describes the archive read from `input`.
pub fn inspect(input: Content<'_>, progress: &dyn Progress) -> Result<Report> {
    examine(input, None, None, progress)
}

/// Proves the archive read from `input` complete and intact, or says what is wrong.
/// `tools` supplies the `pg_restore` that reads the dump.
pub fn verify(input: Content<'_>, tools: &PgTools, progress: &dyn Progress) -> Result<Report> {
    examine(input, Some(tools), None, progress)
}

/// Where a restore puts what the walk reads: the reading and every check stay here, the
/// writing is the restore's. Inspect and verify have none.
pub trait Extraction {
    /// The variant the first bytes show, before anything is written: refuse it here when it
    /// lacks the part wanted.
    fn variant_known(&mut self, found: Variant) -> Result<()>;
    /// `.metadata`, read as the first member of a cloud archive: refuse here when the
    /// figures it gives cannot fit.
    fn metadata(&mut self, metadata: &Metadata) -> Result<()>;
    /// Whether the dump is written somewhere (or only read through).
    fn wants_dump(&self) -> bool;
    /// All of the dump. An error reading `data` is the archive's, one writing is ours.
    fn dump(&mut self, data: &mut dyn Read) -> Result<()>;
    /// One file of `tree/`, `rel` being its checked path below the store.
    fn tree_file(&mut self, rel: &str, data: &mut dyn Read) -> Result<()>;
    /// The walk is over and succeeded: everything written must be complete when this
    /// returns.
    fn finish(&mut self) -> Result<()>;
}

/// Reads the archive with every check `verify` makes except pg_restore's (the restore itself
/// runs pg_restore), handing the dump and the tree to `into`. A failure leaves whatever `into`
/// wrote for the caller to remove.
pub fn extract(
    input: Content<'_>,
    into: &mut dyn Extraction,
    progress: &dyn Progress,
) -> Result<Report> {
    examine(input, None, Some(into), progress)
}

fn examine(
    input: Content<'_>,
    tools: Option<&PgTools>,
    into: Option<&mut dyn Extraction>,
    progress: &dyn Progress,
) -> Result<Report> {
    let input = match input {
        Content::Stream(input) => input,
        Content::File { reader, size } => {
            let reader = ProgressReader {
                inner: reader,
                progress,
            };
            return match into {
                Some(into) => {
                    into.variant_known(Variant::Files)?;
                    let report = examine_zip(reader, size, tools, Some(&mut *into))?;
                    into.finish()?;
                    Ok(report)
                }
                None => examine_zip(reader, size, tools, None),
            };
        }
    };
    let input: Input<'_> = Box::new(ProgressReader {
        inner: input,
        progress,
    });
    let opened = detect::open(input)?;
    if opened.detected.container == Container::Zip {
        return Err(Error::usage(
            "the input is a zip, which can be read only from a file (its index is at its end)",
        )
        .with_hint("save it to a file and give that file's path"));
    }
    let d = opened.detected.clone();
    let report = match into {
        Some(into) => {
            if let Some(found) = d.variant {
                into.variant_known(found)?;
            }
            let report = match d.container {
                Container::Dump => examine_dump(opened, tools, Some(&mut *into))?,
                Container::Tar | Container::Zip => examine_tar(opened, tools, Some(&mut *into))?,
            };
            into.finish()?;
            report
        }
        None => match d.container {
            Container::Dump => examine_dump(opened, tools, None)?,
            Container::Tar | Container::Zip => examine_tar(opened, tools, None)?,
        },
    };
    Ok(report)
}

fn examine_dump(
    opened: detect::Opened<'_>,
    tools: Option<&PgTools>,
    into: Option<&mut dyn Extraction>,
) -> Result<Report> {
    let header = dump_header::parse(&opened.head)?;
    let mut content = opened.content;
    let mut counted = CountingReader {
        inner: &mut content,
        count: 0,
    };
    let mut checks = Vec::new();
    let into = into.filter(|i| i.wants_dump());
    match (tools, into) {
        (None, Some(into)) => {
            into.dump(&mut counted)?;
            if opened.detected.compression != Compression::None {
                checks.push(format!(
                    "{} stream complete, trailer checksum good",
                    opened.detected.compression
                ));
            }
        }
        (Some(tools), _) => {
            tools.check_dump(&mut counted)?;
            checks.push("pg_restore reads the whole dump".to_string());
            if opened.detected.compression != Compression::None {
                checks.push(format!(
                    "{} stream complete, trailer checksum good",
                    opened.detected.compression
                ));
            }
        }
        (None, None) => {
            std::io::copy(&mut counted, &mut std::io::sink())
                .map_err(|e| Error::reading("reading the dump", e))?;
        }
    }
    let size = counted.count;
    let mut warnings = Vec::new();
    if !header.cloud_accepts() {
        warnings.push(format!(
            "dump archive version {} is newer than the cloud accepts (1.15 at most)",
            header.archive_version
        ));
    }
    Ok(Report {
        archive: None,
        ok: None,
        encrypted: false,
        variant: Variant::Database,
        compression: opened.detected.compression,
        container: Container::Dump,
        metadata: None,
        members: 1,
        content_bytes: size,
        dump_size: Some(size),
        dump: Some(header),
        tree_files: 0,
        tree_bytes: 0,
        manifest: false,
        manifest_comment: None,
        checks,
        warnings,
    })
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    count: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Copies `from` to its end into `to`; a failure to write is ours (disk full), a failure to
/// read is the archive's.
pub(crate) fn copy_into(
    from: &mut dyn Read,
    to: &mut dyn std::io::Write,
    what: &str,
) -> Result<u64> {
    use crate::archive::codec::{PumpError, pump};
    pump(from, |chunk| to.write_all(chunk)).map_err(|e| match e {
        PumpError::Read(e) => Error::reading("reading the archive", e),
        PumpError::Write(e) => Error::io(format!("writing {what}"), e),
    })
}

/// Gathers what the walk sees.
struct Examiner<'t, 's> {
    tools: Option<&'t PgTools>,
    into: Option<&'s mut dyn Extraction>,
    /// Checksums as computed, in archive order, for the lock-step comparison with the manifest.
    computed: Option<ManifestSpool>,
    order: Vec<&'static str>,
    metadata: Option<Metadata>,
    metadata_error: Option<String>,
    /// What `.metadata` does not say as the cloud says it (see `Metadata::parse_lenient`).
    metadata_notes: Vec<String>,
    dump: Option<DumpHeader>,
    dump_size: Option<u64>,
    tree_files: u64,
    tree_bytes: u64,
    manifest: bool,
    manifest_comment: Option<String>,
    manifest_checked: u64,
    checks: Vec<String>,
}

impl Examiner<'_, '_> {
    fn verifying(&self) -> bool {
        self.tools.is_some() || self.into.is_some()
    }

    fn write_tree_file(&mut self, rel: &str, data: &mut dyn Read) -> Result<()> {
        match self.into.as_mut() {
            Some(into) => into.tree_file(rel, data),
            None => Ok(()),
        }
    }

    fn read_metadata(&mut self, data: &mut dyn Read) -> Result<()> {
        let mut text = Vec::new();
        data.take(METADATA_LIMIT)
            .read_to_end(&mut text)
            .map_err(|e| Error::reading("reading .metadata", e))?;
        if text.iter().all(u8::is_ascii_whitespace) {
            self.metadata_error = Some(".metadata is empty".to_string());
            return Ok(());
        }
        match Metadata::parse_lenient(&text) {
            Ok((m, notes)) => {
                if let Some(into) = self.into.as_mut() {
                    into.metadata(&m)?;
                }
                self.metadata = Some(m);
                self.metadata_notes = notes;
            }
            Err(e) => self.metadata_error = Some(format!(".metadata is not valid: {e}")),
        }
        Ok(())
    }

    fn read_dump(&mut self, data: &mut dyn Read) -> Result<()> {
        let mut head = vec![0u8; 4096];
        let n = crate::archive::codec::read_full(data, &mut head)
            .map_err(|e| Error::reading("reading db/db.backup", e))?;
        head.truncate(n);
        let header = dump_header::parse(&head).map_err(|e| {
            Error::corrupt(format!(
                "db/db.backup is not a usable dump: {}",
                e.message()
            ))
        })?;
        self.dump = Some(header);
        let mut rejoined = std::io::Cursor::new(head).chain(data);
        if let Some(into) = self.into.as_mut().filter(|i| i.wants_dump()) {
            into.dump(&mut rejoined)?;
        } else if let Some(tools) = self.tools {
            tools
                .check_dump(&mut rejoined)
                .map_err(|e| e.context(crate::archive::layout::DUMP))?;
            self.checks
                .push("pg_restore reads the whole of db/db.backup".to_string());
        }
        Ok(())
    }

    fn read_manifest(&mut self, data: &mut dyn Read) -> Result<()> {
        self.manifest = true;
        let mut lines = BufReader::new(data);
        let mut first = String::new();
        lines
            .read_line(&mut first)
            .map_err(|e| Error::reading("reading the manifest", e))?;
        let header = manifest::parse_header(first.trim_end())
            .map_err(|e| Error::corrupt(format!("the manifest is damaged: {e}")))?;
        self.manifest_comment = header.comment;
        let Some(computed) = self.computed.take() else {
            return Ok(());
        };
        let (file, _) = computed
            .finish(&[])
            .map_err(|e| Error::io("reading back computed checksums", e))?;
        let mut seen = BufReader::new(file);
        let mut skip = String::new();
        seen.read_line(&mut skip)
            .map_err(|e| Error::io("reading back computed checksums", e))?;
        let (checked, problems) =
            manifest::differences(manifest::read_entries(lines), manifest::read_entries(seen))
                .map_err(|e| match e {
                    manifest::Unreadable::Manifest(e) => {
                        Error::corrupt(format!("the manifest is damaged: {e}"))
                    }
                    manifest::Unreadable::Computed(e) => {
                        Error::io("reading back checksums", std::io::Error::other(e))
                    }
                })?;
        self.manifest_checked += checked;
        if !problems.is_empty() {
            return Err(Error::corrupt(format!(
                "the archive does not match its manifest:\n  {}",
                problems.join("\n  ")
            ))
            .with_hint("the archive was damaged or altered after it was made; use another copy"));
        }
        Ok(())
    }
}

impl Visitor for Examiner<'_, '_> {
    fn content(&mut self, member: &Member, _size: u64, data: &mut dyn Read) -> Result<()> {
        match member {
            Member::Metadata => self.read_metadata(data),
            Member::Dump => self.read_dump(data),
            Member::Manifest => self.read_manifest(data),
            Member::TreeFile(rel) => self.write_tree_file(rel, data),
            Member::Directory => Ok(()),
        }
    }

    fn finished(&mut self, member: &Member, size: u64, sha256: &str) -> Result<()> {
        match member {
            Member::Metadata => self.order.push("metadata"),
            Member::Dump => {
                self.order.push("dump");
                self.dump_size = Some(size);
            }
            Member::TreeFile(_) => {
                if self.order.last() != Some(&"tree") {
                    self.order.push("tree");
                }
                self.tree_files += 1;
                self.tree_bytes += size;
            }
            Member::Manifest | Member::Directory => return Ok(()),
        }
        if let Some(spool) = self.computed.as_mut() {
            spool
                .add(&ManifestEntry {
                    path: member.path(),
                    size,
                    sha256: sha256.to_string(),
                })
                .map_err(|e| Error::io("spooling checksums", e))?;
        }
        Ok(())
    }
}

/// What `.metadata` gets wrong about the members, as sentences naming both figures.
fn metadata_problems(ex: &Examiner<'_, '_>, has_metadata: bool) -> Vec<String> {
    if !has_metadata {
        return vec![format!("the archive has {DUMP} but no {METADATA}")];
    }
    if let Some(e) = &ex.metadata_error {
        return vec![e.clone()];
    }
    let Some(m) = ex.metadata.as_ref() else {
        return vec![format!("{METADATA} could not be read")];
    };
    let mut problems: Vec<String> = ex
        .metadata_notes
        .iter()
        .map(|n| format!(".metadata: {n}"))
        .collect();
    let dump_size = ex.dump_size.unwrap_or(0);
    if Metadata::size(&m.dump_size) != Some(dump_size) {
        problems.push(format!(
            ".metadata says dumpSize {:?} but {DUMP} has {dump_size} bytes",
            m.dump_size
        ));
    }
    if Metadata::size(&m.files_size) != Some(ex.tree_bytes) {
        problems.push(format!(
            ".metadata says filesSize {:?} but tree/ holds {} bytes",
            m.files_size, ex.tree_bytes
        ));
    }
    problems
}

fn examine_tar(
    opened: detect::Opened<'_>,
    tools: Option<&PgTools>,
    into: Option<&mut dyn Extraction>,
) -> Result<Report> {
    let compression = opened.detected.compression;
    let mut content = opened.content;
    examine_members(compression, Container::Tar, tools, into, &mut |ex| {
        crate::archive::codec::with_read_ahead(&mut *content, |r| walk_tar(r, ex))
    })
}

fn examine_zip(
    reader: impl Read + std::io::Seek,
    size: u64,
    tools: Option<&PgTools>,
    into: Option<&mut dyn Extraction>,
) -> Result<Report> {
    let mut reader = Some(reader);
    examine_members(Compression::None, Container::Zip, tools, into, &mut |ex| {
        let reader = reader.take().expect("the zip is walked once");
        crate::archive::zipped::walk_zip(reader, size, ex)
    })
}

/// Walks the members of a tar or zip with `walk` and makes the report of what it saw.
fn examine_members(
    compression: Compression,
    container: Container,
    tools: Option<&PgTools>,
    into: Option<&mut dyn Extraction>,
    walk: &mut dyn FnMut(&mut Examiner<'_, '_>) -> Result<crate::archive::reader::Walked>,
) -> Result<Report> {
    let verifying = tools.is_some() || into.is_some();
    let mut ex = Examiner {
        tools,
        into,
        computed: if verifying {
            Some(
                ManifestSpool::new(Variant::Full, None)
                    .map_err(|e| Error::io("creating a checksum spool", e))?,
            )
        } else {
            None
        },
        order: Vec::new(),
        metadata: None,
        metadata_error: None,
        metadata_notes: Vec::new(),
        dump: None,
        dump_size: None,
        tree_files: 0,
        tree_bytes: 0,
        manifest: false,
        manifest_comment: None,
        manifest_checked: 0,
        checks: Vec::new(),
    };
    let walked = walk(&mut ex)?;
    let has_metadata = ex.order.contains(&"metadata");
    let has_dump = ex.dump_size.is_some();
    let variant = if has_metadata || has_dump {
        Variant::Full
    } else {
        Variant::Files
    };
    let mut warnings = Vec::new();
    if ex.verifying() {
        ex.checks.push(match container {
            Container::Zip => format!(
                "zip complete: {} entries, names follow the layout, no links, no duplicates, \
                 none encrypted, sizes and CRC-32 as declared, no zip-bomb expansion",
                walked.members
            ),
            _ => format!(
                "tar structure complete: {} members, names follow the layout, no links, no \
                 duplicates, end-of-archive marker present",
                walked.members
            ),
        });
        if compression != Compression::None {
            ex.checks.push(format!(
                "{compression} stream complete, trailer checksum good"
            ));
        }
        if variant == Variant::Full {
            if !has_dump {
                return Err(Error::corrupt(format!(
                    "the archive has {METADATA} but no {DUMP}: the database dump is missing"
                )));
            }
            // mxsnap's own archives (with a manifest) are held to the letter; others' are
            // accepted with what differs named: the cloud's .metadata is not documented.
            let problems = metadata_problems(&ex, has_metadata);
            if ex.manifest {
                if let Some(first) = problems.into_iter().next() {
                    return Err(Error::corrupt(first));
                }
                ex.checks
                    .push(".metadata agrees with db/db.backup and tree/ sizes".to_string());
            } else if problems.is_empty() {
                ex.checks
                    .push(".metadata agrees with db/db.backup and tree/ sizes".to_string());
            } else {
                for p in problems {
                    warnings.push(format!(
                        "{p} (accepted: the archive has no mxsnap manifest)"
                    ));
                }
            }
            let cloud_order: Vec<&str> = ["metadata", "dump", "tree"]
                .into_iter()
                .filter(|k| ex.order.contains(k))
                .collect();
            if ex.order != cloud_order {
                warnings.push(format!(
                    "members are not in the cloud's order (.metadata, db/db.backup, tree/): \
                     found {:?}",
                    ex.order
                ));
            }
        }
        if ex.manifest {
            ex.checks.push(format!(
                "manifest matches: {} members, sizes and SHA-256",
                ex.manifest_checked
            ));
        } else {
            warnings.push(
                "no manifest present (a cloud-made or --strict-layout archive): member \
                 checksums could not be checked, everything else was"
                    .to_string(),
            );
        }
    } else if let Some(e) = &ex.metadata_error {
        warnings.push(e.clone());
    }
    if let Some(h) = &ex.dump {
        if !h.cloud_accepts() {
            warnings.push(format!(
                "dump archive version {} is newer than the cloud accepts (1.15 at most)",
                h.archive_version
            ));
        }
    }
    Ok(Report {
        archive: None,
        ok: None,
        encrypted: false,
        variant,
        compression,
        container,
        metadata: ex.metadata,
        members: walked.members,
        content_bytes: walked.content_bytes,
        dump_size: ex.dump_size,
        dump: ex.dump,
        tree_files: ex.tree_files,
        tree_bytes: ex.tree_bytes,
        manifest: ex.manifest,
        manifest_comment: ex.manifest_comment,
        checks: ex.checks,
        warnings,
    })
}

/// What `inspect` or `verify` is asked to do.
#[derive(Debug)]
pub struct ReadOptions {
    pub source: Source,
    /// Prove the archive intact (checksums, pg_restore), not only describe it.
    pub verify: bool,
    /// Where `pg_restore` is, for verify.
    pub pg_bin: Option<PathBuf>,
    /// What opens an encrypted archive.
    pub keys: Keys,
}

/// An archive opened and peeked at, with the tools found.
pub struct ReadPlan {
    input: ArchiveInput,
    tools: Option<PgTools>,
}

/// What reading will do, before it is done.
#[derive(Debug, Clone, Serialize)]
pub struct ReadView {
    pub archive: String,
    pub archive_bytes: Option<u64>,
    pub peek: Option<Peek>,
    pub verify: bool,
    pub encrypted: bool,
}

impl ReadPlan {
    pub fn view(&self) -> ReadView {
        ReadView {
            archive: self.input.name().to_string(),
            archive_bytes: self.input.size(),
            peek: self.input.peek().cloned(),
            verify: self.tools.is_some(),
            encrypted: self.input.encrypted(),
        }
    }
}

/// Opens the archive (refusing at once what is not one) and finds pg_restore for verify.
pub fn plan(opts: ReadOptions) -> Result<ReadPlan> {
    let tools = if opts.verify {
        Some(PgTools::find(opts.pg_bin.as_deref())?)
    } else {
        None
    };
    Ok(ReadPlan {
        input: ArchiveInput::open(opts.source, &opts.keys)?,
        tools,
    })
}

/// Reads the whole archive: describes it, and with verify proves it complete and intact.
pub fn execute(plan: ReadPlan, progress: &dyn Progress, cancel: &Cancel) -> Result<Report> {
    let name = plan.input.name().to_string();
    let encrypted = plan.input.encrypted();
    progress.stage(
        if plan.tools.is_some() {
            "verifying"
        } else {
            "reading"
        },
        plan.input.size(),
    );
    let input = plan.input.into_content(cancel);
    let mut report = examine(input, plan.tools.as_ref(), None, progress)
        .map_err(|e| cancel.explain(e).context(format!("reading {name}")))?;
    report.archive = Some(name);
    report.ok = plan.tools.is_some().then_some(true);
    report.encrypted = encrypted;
    if encrypted && plan.tools.is_some() {
        report
            .checks
            .push("age encryption: every chunk authenticated, the last one present".to_string());
    }
    Ok(report)
}
