//! `inspect` and `verify`: read an archive (any variant, any compression, from a file or a
//! pipe) from end to end. `inspect` describes it; `verify` also proves it intact: every
//! member's checksum against the manifest, `.metadata` against the members, the dump through
//! `pg_restore`, and the compressed stream through its trailer.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::detect::{self, Container};
use crate::archive::dump_header::{self, DumpHeader};
use crate::archive::layout::{DUMP, METADATA, Member};
use crate::archive::manifest::{self, METADATA_LIMIT, ManifestEntry, ManifestSpool, Metadata};
use crate::archive::reader::{Visitor, walk_tar};
use crate::archive::{Compression, Input, Variant};
use crate::error::{Error, Result};
use crate::pg::PgTools;
use crate::progress::Progress;
use crate::tree_writer::TreeWriter;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
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

/// Describes the archive read from `input`.
pub fn inspect(input: Input<'_>, progress: &dyn Progress) -> Result<Report> {
    examine(input, None, None, progress)
}

/// Proves the archive read from `input` complete and intact, or says what is wrong.
/// `tools` supplies the `pg_restore` that reads the dump.
pub fn verify(input: Input<'_>, tools: &PgTools, progress: &dyn Progress) -> Result<Report> {
    examine(input, Some(tools), None, progress)
}

/// What the first bytes of an archive tell, without reading it all (for a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Peek {
    /// `None` when the first member does not settle it.
    pub variant: Option<Variant>,
    pub compression: Compression,
    pub container: Container,
    /// `.metadata`, when it is the first member (as in the cloud's layout).
    pub metadata: Option<Metadata>,
}

/// Reads only the start of `input`: detection and, for a full snapshot, its `.metadata`.
pub fn peek(input: Input<'_>) -> Result<Peek> {
    let opened = detect::open(input)?;
    let d = opened.detected;
    let mut metadata = None;
    if d.container == Container::Tar && opened.head.len() >= 512 {
        let header = tar::Header::from_byte_slice(&opened.head[..512]);
        let name = header.path_bytes();
        let name = name.strip_prefix(b"./").unwrap_or(&name);
        if name == METADATA.as_bytes() {
            let size = header.entry_size().unwrap_or(0) as usize;
            if let Some(body) = opened.head.get(512..512 + size) {
                metadata = serde_json::from_slice(body).ok();
            }
        }
    }
    Ok(Peek {
        variant: d.variant,
        compression: d.compression,
        container: d.container,
        metadata,
    })
}

/// Where `extract` puts what it reads.
pub struct Sinks {
    /// The dump is copied here (a spool file for pg_restore).
    pub dump_to: Option<File>,
    /// Tree files are written below this (new, empty) directory.
    pub tree_to: Option<PathBuf>,
    /// Refuse up front, from `.metadata`, when this filesystem lacks the room.
    pub space_on: Option<PathBuf>,
    pub extracted_files: u64,
    pub extracted_bytes: u64,
    /// The part a restore wants: refused as soon as the first bytes show the archive lacks it.
    pub wanted: Option<Variant>,
    /// Told once the dump is whole in `dump_to` (the archive's second member), so a restore
    /// can start pg_restore while the files are still being extracted.
    pub dump_ready: Option<std::sync::mpsc::Sender<()>>,
    /// Set when the first tree file is created, for whoever writes the files back meanwhile.
    pub tree_begun: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Reads the archive with every check `verify` makes except pg_restore's (the restore itself
/// runs pg_restore), writing the dump and the tree where `sinks` say. Any failure leaves
/// partial output that the caller removes.
pub fn extract(input: Input<'_>, sinks: &mut Sinks, progress: &dyn Progress) -> Result<Report> {
    examine(input, None, Some(sinks), progress)
}

fn examine(
    input: Input<'_>,
    tools: Option<&PgTools>,
    sinks: Option<&mut Sinks>,
    progress: &dyn Progress,
) -> Result<Report> {
    let input: Input<'_> = Box::new(ProgressReader {
        inner: input,
        progress,
    });
    let opened = detect::open(input)?;
    let d = opened.detected.clone();
    if let (Some(wanted), Some(found)) = (sinks.as_ref().and_then(|s| s.wanted), d.variant) {
        if !found.holds(wanted) {
            return Err(found.wrong_variant(wanted));
        }
    }
    match d.container {
        Container::Dump => examine_dump(opened, tools, sinks),
        Container::Tar => examine_tar(opened, tools, sinks),
    }
}

fn examine_dump(
    opened: detect::Opened<'_>,
    tools: Option<&PgTools>,
    sinks: Option<&mut Sinks>,
) -> Result<Report> {
    let header = dump_header::parse(&opened.head)?;
    let mut content = opened.content;
    let mut counted = CountingReader {
        inner: &mut content,
        count: 0,
    };
    let mut checks = Vec::new();
    let ready = sinks.as_ref().and_then(|s| s.dump_ready.clone());
    let spool = sinks.and_then(|s| s.dump_to.as_mut());
    match tools {
        None if spool.is_some() => {
            let spool = spool.expect("checked");
            copy_into(&mut counted, spool, "the dump spool")?;
            if let Some(tx) = ready {
                let _ = tx.send(());
            }
            if opened.detected.compression != Compression::None {
                checks.push(format!(
                    "{} stream complete, trailer checksum good",
                    opened.detected.compression
                ));
            }
        }
        Some(tools) => {
            tools.check_dump(&mut counted)?;
            checks.push("pg_restore reads the whole dump".to_string());
            if opened.detected.compression != Compression::None {
                checks.push(format!(
                    "{} stream complete, trailer checksum good",
                    opened.detected.compression
                ));
            }
        }
        None => {
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
pub(crate) fn copy_into(from: &mut dyn Read, to: &mut dyn Write, what: &str) -> Result<u64> {
    use crate::archive::codec::{PumpError, pump};
    pump(from, |chunk| to.write_all(chunk)).map_err(|e| match e {
        PumpError::Read(e) => Error::reading("reading the archive", e),
        PumpError::Write(e) => Error::io(format!("writing {what}"), e),
    })
}

/// Gathers what the walk sees.
struct Examiner<'t, 's> {
    tools: Option<&'t PgTools>,
    sinks: Option<&'s mut Sinks>,
    /// Checksums as computed, in archive order, for the lock-step comparison with the manifest.
    computed: Option<ManifestSpool>,
    order: Vec<&'static str>,
    metadata: Option<Metadata>,
    metadata_error: Option<String>,
    dump: Option<DumpHeader>,
    dump_size: Option<u64>,
    tree_files: u64,
    tree_bytes: u64,
    manifest: bool,
    manifest_comment: Option<String>,
    manifest_checked: u64,
    checks: Vec<String>,
    /// Makes the extracted files, on its own thread.
    tree_writer: Option<TreeWriter>,
}

impl Examiner<'_, '_> {
    fn verifying(&self) -> bool {
        self.tools.is_some() || self.sinks.is_some()
    }

    /// With `.metadata` in hand (the first member), refuse early when the staging area's
    /// filesystem cannot hold what the archive says is coming.
    fn check_space(&self, m: &Metadata) -> Result<()> {
        let Some(sinks) = self.sinks.as_ref() else {
            return Ok(());
        };
        let Some(dir) = &sinks.space_on else {
            return Ok(());
        };
        let mut needed = 0u64;
        if sinks.tree_to.is_some() {
            needed += m.files_size.parse::<u64>().unwrap_or(0);
        }
        if sinks.dump_to.is_some() {
            needed += m.dump_size.parse::<u64>().unwrap_or(0);
        }
        if let Some(free) = crate::env::free_space(dir) {
            if needed > free {
                return Err(Error::environment(format!(
                    "not enough space: the archive needs {needed} bytes in {} but only {free}                      are free",
                    dir.display()
                ))
                .with_hint("free some space there (or restore elsewhere); nothing was changed"));
            }
        }
        Ok(())
    }

    fn write_tree_file(&mut self, rel: &str, data: &mut dyn Read) -> Result<()> {
        let Some(sinks) = self.sinks.as_mut() else {
            return Ok(());
        };
        let Some(root) = &sinks.tree_to else {
            return Ok(());
        };
        // `rel` passed layout::classify: two or three plain components, no "..", no "/".
        let path = root.join(rel);
        if sinks.extracted_files == 0 {
            if let Some(begun) = &sinks.tree_begun {
                begun.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let n = self
            .tree_writer
            .get_or_insert_with(TreeWriter::new)
            .write_file(path, data)?;
        sinks.extracted_files += 1;
        sinks.extracted_bytes += n;
        if sinks.extracted_files == 10 {
            crate::env::crash_point("extract");
        }
        Ok(())
    }

    fn read_metadata(&mut self, data: &mut dyn Read) -> Result<()> {
        let mut text = Vec::new();
        data.take(METADATA_LIMIT)
            .read_to_end(&mut text)
            .map_err(|e| Error::reading("reading .metadata", e))?;
        match serde_json::from_slice::<Metadata>(&text) {
            Ok(m) => {
                self.check_space(&m)?;
                self.metadata = Some(m);
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
        if let Some(spool) = self.sinks.as_mut().and_then(|s| s.dump_to.as_mut()) {
            spool
                .write_all(&head)
                .map_err(|e| Error::io("writing the dump spool", e))?;
            copy_into(data, spool, "the dump spool")?;
            if let Some(tx) = self.sinks.as_mut().and_then(|s| s.dump_ready.take()) {
                let _ = tx.send(());
            }
        } else if let Some(tools) = self.tools {
            let mut rejoined = std::io::Cursor::new(head).chain(data);
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
        let mut expected = manifest::read_entries(lines).peekable();
        let mut actual = manifest::read_entries(seen).peekable();
        let mut problems = Vec::new();
        // Both lists are in the order mxsnap writes (.metadata, db/db.backup, tree/ sorted):
        // a merge join names a missing or an extra member instead of every one after it.
        loop {
            let want = match expected.peek() {
                Some(Err(e)) => {
                    return Err(Error::corrupt(format!("the manifest is damaged: {e}")));
                }
                Some(Ok(w)) => Some(w.clone()),
                None => None,
            };
            let got = match actual.peek() {
                Some(Err(e)) => {
                    return Err(Error::io(
                        "reading back checksums",
                        std::io::Error::other(e.clone()),
                    ));
                }
                Some(Ok(g)) => Some(g.clone()),
                None => None,
            };
            match (want, got) {
                (None, None) => break,
                (Some(w), g)
                    if g.as_ref()
                        .is_none_or(|g| order_key(&w.path) < order_key(&g.path)) =>
                {
                    problems.push(format!(
                        "member {} is listed in the manifest but missing from the archive",
                        w.path
                    ));
                    expected.next();
                }
                (w, Some(g))
                    if w.as_ref()
                        .is_none_or(|w| order_key(&g.path) < order_key(&w.path)) =>
                {
                    problems.push(format!(
                        "member {} is in the archive but not in the manifest",
                        g.path
                    ));
                    actual.next();
                }
                (Some(w), Some(g)) => {
                    self.manifest_checked += 1;
                    if let Some(p) = compare(&w, &g) {
                        problems.push(p);
                    }
                    expected.next();
                    actual.next();
                }
                _ => unreachable!("one side is present"),
            }
            if problems.len() >= 10 {
                problems.push("(further differences not listed)".into());
                break;
            }
        }
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

/// The order mxsnap writes members in.
fn order_key(path: &str) -> (u8, &str) {
    match path {
        METADATA => (0, path),
        DUMP => (1, path),
        _ => (2, path),
    }
}

fn compare(want: &ManifestEntry, got: &ManifestEntry) -> Option<String> {
    if want.path != got.path {
        return Some(format!(
            "the manifest expects member {} where the archive has {}",
            want.path, got.path
        ));
    }
    if want.size != got.size {
        return Some(format!(
            "member {} has {} bytes; the manifest says {}",
            got.path, got.size, want.size
        ));
    }
    if want.sha256 != got.sha256 {
        return Some(format!(
            "member {} has SHA-256 {}; the manifest says {}",
            got.path, got.sha256, want.sha256
        ));
    }
    None
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

fn examine_tar(
    opened: detect::Opened<'_>,
    tools: Option<&PgTools>,
    sinks: Option<&mut Sinks>,
) -> Result<Report> {
    let compression = opened.detected.compression;
    let verifying = tools.is_some() || sinks.is_some();
    let mut ex = Examiner {
        tools,
        sinks,
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
        dump: None,
        dump_size: None,
        tree_files: 0,
        tree_bytes: 0,
        manifest: false,
        manifest_comment: None,
        manifest_checked: 0,
        checks: Vec::new(),
        tree_writer: None,
    };
    let mut content = opened.content;
    let walked = crate::archive::codec::with_read_ahead(&mut *content, |r| walk_tar(r, &mut ex))?;
    // Every file is written and closed before the extraction counts as done.
    if let Some(writer) = ex.tree_writer.take() {
        writer.finish()?;
    }
    let has_metadata = ex.order.contains(&"metadata");
    let has_dump = ex.dump_size.is_some();
    let variant = if has_metadata || has_dump {
        Variant::Full
    } else {
        Variant::Files
    };
    let mut warnings = Vec::new();
    if ex.verifying() {
        ex.checks.push(format!(
            "tar structure complete: {} members, names follow the layout, no links, no \
             duplicates, end-of-archive marker present",
            walked.members
        ));
        if compression != Compression::None {
            ex.checks.push(format!(
                "{compression} stream complete, trailer checksum good"
            ));
        }
        if variant == Variant::Full {
            if !has_metadata {
                return Err(Error::corrupt(format!(
                    "the archive has {DUMP} but no {METADATA}: a full snapshot needs both"
                )));
            }
            if !has_dump {
                return Err(Error::corrupt(format!(
                    "the archive has {METADATA} but no {DUMP}: the database dump is missing"
                )));
            }
            if let Some(e) = &ex.metadata_error {
                return Err(Error::corrupt(e.clone()));
            }
            let m = ex.metadata.as_ref().expect("parsed");
            let dump_size = ex.dump_size.unwrap_or(0);
            if m.dump_size.parse::<u64>().ok() != Some(dump_size) {
                return Err(Error::corrupt(format!(
                    ".metadata says dumpSize {} but {DUMP} has {dump_size} bytes",
                    m.dump_size
                )));
            }
            if m.files_size.parse::<u64>().ok() != Some(ex.tree_bytes) {
                return Err(Error::corrupt(format!(
                    ".metadata says filesSize {} but tree/ holds {} bytes",
                    m.files_size, ex.tree_bytes
                )));
            }
            ex.checks
                .push(".metadata agrees with db/db.backup and tree/ sizes".to_string());
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
        variant,
        compression,
        container: Container::Tar,
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
