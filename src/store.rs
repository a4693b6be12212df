//! The file-object store: which files a snapshot must carry and where they are on disk.
//!
//! An app keeps uploaded files as `<aa>/<bb>/<uuid>`, or, for old apps, in the legacy numeric
//! layout `<nn>/<number>`. When the database has `system$filedocument`, a snapshot carries
//! exactly the files with contents that are not delete-after-download, found in either layout.
//!
//! Nothing here grows in memory with the store. The store is walked in sorted order, one folder
//! at a time, and the references arrive sorted by the same paths (see
//! [`Session::file_references`](crate::pg::Session::file_references)), so selecting is a merge of
//! two sorted streams; the selected files go to a spool file ([`FileList`]) that the packer
//! reads back in the same order.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::layout::{
    compact_uuid_path, is_tree_name, is_uuid, legacy_rel_path, uuid_rel_path,
};
use crate::error::{Error, Result};
use crate::pg::{FileDocument, FileReference, ReferencePath, Session};
use crate::sys::ReadAt;

/// One file to pack: its path below `tree/` (and below the store), and the size seen when
/// scanning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    name: TreeName,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TreeName {
    /// `aa/bb/<uuid>` with a lower-case UUID: the path is spelled out again from these bytes.
    Uuid([u8; 16]),
    /// Anything else (the legacy layout, an upper-case UUID), as found.
    Path(Box<str>),
}

impl StoreFile {
    pub fn new(rel: &str, size: u64) -> StoreFile {
        let name = match compact_uuid_path(rel) {
            Some(bytes) => TreeName::Uuid(bytes),
            None => TreeName::Path(rel.into()),
        };
        StoreFile { name, size }
    }

    /// The path below `tree/` and below the store.
    pub fn rel(&self) -> std::borrow::Cow<'_, str> {
        match &self.name {
            TreeName::Uuid(bytes) => {
                let uuid = uuid::Uuid::from_bytes(*bytes).hyphenated().to_string();
                std::borrow::Cow::Owned(uuid_rel_path(&uuid))
            }
            TreeName::Path(p) => std::borrow::Cow::Borrowed(p),
        }
    }
}

/// The order of a directory walk sorted one folder at a time: by path components. For the
/// store's names (hex, digits and `-`) it is also their order as strings, the archive's order.
pub fn walk_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// The selected files, in archive order, spooled to an unnamed temporary file: 25 bytes a file
/// in the usual layout, on disk rather than in memory.
pub struct FileList {
    spool: BufWriter<File>,
    len: u64,
}

impl std::fmt::Debug for FileList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileList").field("len", &self.len).finish()
    }
}

const TAG_UUID: u8 = 0;
const TAG_PATH: u8 = 1;

impl FileList {
    fn new() -> Result<FileList> {
        let file = tempfile::tempfile()
            .map_err(|e| Error::io("creating a temporary file for the list of files", e))?;
        Ok(FileList {
            spool: BufWriter::with_capacity(64 * 1024, file),
            len: 0,
        })
    }

    fn push(&mut self, f: &StoreFile) -> Result<()> {
        let mut write = || -> io::Result<()> {
            match &f.name {
                TreeName::Uuid(bytes) => {
                    self.spool.write_all(&[TAG_UUID])?;
                    self.spool.write_all(bytes)?;
                }
                TreeName::Path(p) => {
                    self.spool.write_all(&[TAG_PATH])?;
                    self.spool.write_all(&(p.len() as u32).to_le_bytes())?;
                    self.spool.write_all(p.as_bytes())?;
                }
            }
            self.spool.write_all(&f.size.to_le_bytes())
        };
        write().map_err(|e| Error::io("writing the list of files", e))?;
        self.len += 1;
        Ok(())
    }

    /// How many files.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The files in order, read back from the spool (each call reads from the start).
    pub fn iter(&mut self) -> Result<impl Iterator<Item = Result<StoreFile>> + '_> {
        self.spool
            .flush()
            .map_err(|e| Error::io("writing the list of files", e))?;
        let reader = BufReader::with_capacity(64 * 1024, ReadAt::new(self.spool.get_ref(), 0));
        Ok(FileListIter {
            reader,
            left: self.len,
        })
    }
}

struct FileListIter<'a> {
    reader: BufReader<ReadAt<&'a File>>,
    left: u64,
}

impl FileListIter<'_> {
    fn read_one(&mut self) -> io::Result<StoreFile> {
        let mut tag = [0u8; 1];
        self.reader.read_exact(&mut tag)?;
        let name = match tag[0] {
            TAG_UUID => {
                let mut bytes = [0u8; 16];
                self.reader.read_exact(&mut bytes)?;
                TreeName::Uuid(bytes)
            }
            _ => {
                let mut len = [0u8; 4];
                self.reader.read_exact(&mut len)?;
                let mut path = vec![0u8; u32::from_le_bytes(len) as usize];
                self.reader.read_exact(&mut path)?;
                let path = String::from_utf8(path).map_err(io::Error::other)?;
                TreeName::Path(path.into())
            }
        };
        let mut size = [0u8; 8];
        self.reader.read_exact(&mut size)?;
        Ok(StoreFile {
            name,
            size: u64::from_le_bytes(size),
        })
    }
}

impl Iterator for FileListIter<'_> {
    type Item = Result<StoreFile>;

    fn next(&mut self) -> Option<Result<StoreFile>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(
            self.read_one()
                .map_err(|e| Error::io("reading back the list of files", e)),
        )
    }
}

/// What the scan found, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    /// Rows with contents (`hascontents`), delete-after-download ones included.
    pub referenced: u64,
    /// Files that go into the archive.
    pub included: u64,
    /// Rows with contents whose file is in neither layout on disk.
    pub missing: u64,
    /// Files on disk that no row names.
    pub orphaned: u64,
    /// Rows marked delete-after-download, left out as the cloud does.
    pub delete_after_download: u64,
    /// Included files found only in the legacy numeric layout.
    pub legacy_layout: u64,
    /// Entries of the store that are not regular files or not named as the layout says; never
    /// packed.
    pub skipped: u64,
}

#[derive(Debug)]
pub struct Selection {
    /// In archive order.
    pub files: FileList,
    pub counts: FileCounts,
    pub total_bytes: u64,
    /// A few examples of each problem, for messages.
    pub missing_examples: Vec<String>,
    pub skipped_examples: Vec<String>,
}

impl Selection {
    fn new() -> Result<Selection> {
        Ok(Selection {
            files: FileList::new()?,
            counts: FileCounts::default(),
            total_bytes: 0,
            missing_examples: Vec::new(),
            skipped_examples: Vec::new(),
        })
    }

    fn include(&mut self, rel: &str, size: u64, legacy: bool) -> Result<()> {
        if legacy {
            self.counts.legacy_layout += 1;
        }
        self.total_bytes += size;
        self.counts.included += 1;
        self.files.push(&StoreFile::new(rel, size))
    }

    fn skip(&mut self, why: String) {
        self.counts.skipped += 1;
        if self.skipped_examples.len() < EXAMPLES {
            self.skipped_examples.push(why);
        }
    }
}

const EXAMPLES: usize = 5;

/// The regular files below a store, by path relative to it, in [`walk_order`], one at a time.
/// Other entries (links, devices) are counted as skipped on the way.
///
/// Each folder is listed whole and sorted, and its files' sizes are asked relative to the open
/// folder (`statx` on its descriptor), not by full path: with a million files, walking every
/// path from the root again was a tenth of a create's time on its busiest thread.
struct Walk {
    root: PathBuf,
    /// The folders being listed, outermost first.
    open: Vec<Listing>,
}

/// A folder's entries not yet visited, sorted by name in reverse (the next is last).
struct Listing {
    /// The folder's path below the store, with a trailing `/` (empty for the store itself).
    rel: String,
    entries: Vec<(std::ffi::OsString, std::fs::DirEntry)>,
}

impl Walk {
    fn new(store: &Path) -> Result<Walk> {
        if !store.is_dir() {
            return Err(Error::environment(format!(
                "the file store {} is not a directory",
                store.display()
            ))
            .with_hint("pass the app's uploaded-files directory (data/files) with --files"));
        }
        let top = Walk::list(store, String::new())?;
        Ok(Walk {
            root: store.to_path_buf(),
            open: vec![top],
        })
    }

    fn list(dir: &Path, rel: String) -> Result<Listing> {
        let scanning =
            |e: io::Error| Error::io(format!("scanning the file store at {}", dir.display()), e);
        let mut entries = std::fs::read_dir(dir)
            .map_err(scanning)?
            .map(|entry| entry.map(|e| (e.file_name(), e)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(scanning)?;
        entries.sort_unstable_by(|(a, _), (b, _)| b.cmp(a));
        Ok(Listing { rel, entries })
    }

    /// The next regular file, as (path below the store, size).
    fn next_file(&mut self, sel: &mut Selection) -> Result<Option<(String, u64)>> {
        while let Some(listing) = self.open.last_mut() {
            let Some((name, entry)) = listing.entries.pop() else {
                self.open.pop();
                continue;
            };
            let rel = format!("{}{}", listing.rel, name.to_string_lossy());
            let reading =
                |e: io::Error| Error::io(format!("reading {}", self.root.join(&rel).display()), e);
            // From the folder listing (d_type) where the filesystem gives it; links are not
            // followed.
            let kind = entry.file_type().map_err(reading)?;
            if kind.is_dir() {
                let below = Walk::list(&self.root.join(&rel), format!("{rel}/"))?;
                self.open.push(below);
                continue;
            }
            if !kind.is_file() {
                sel.skip(format!("{rel} (not a regular file)"));
                continue;
            }
            let size = entry.metadata().map_err(reading)?.len();
            return Ok(Some((rel, size)));
        }
        Ok(None)
    }
}

/// Opens files of the store by their paths below it, relative to the last folder opened: the
/// files come in walk order, so one folder serves many files and no path is walked from the
/// root again. No link below the store is followed, in the folders or the file (the walk packs
/// regular files only); the store's own path may pass through links.
pub struct StoreFiles {
    root: PathBuf,
    store: Option<File>,
    folder: Option<(String, File)>,
}

impl StoreFiles {
    pub fn new(root: &Path) -> StoreFiles {
        StoreFiles {
            root: root.to_path_buf(),
            store: None,
            folder: None,
        }
    }

    pub fn open(&mut self, rel: &str) -> io::Result<File> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or((".", rel));
        if self.folder.as_ref().is_none_or(|(open, _)| open != dir) {
            self.folder = None;
            if self.store.is_none() {
                self.store = Some(File::open(&self.root)?);
            }
            let store = self.store.as_ref().expect("opened above");
            let folder = crate::sys::open_beneath(store, dir, libc::O_DIRECTORY)?;
            self.folder = Some((dir.to_string(), folder));
        }
        let (_, folder) = self.folder.as_ref().expect("opened above");
        crate::sys::open_beneath(folder, name, 0)
    }
}

/// Selects the files that the rows of `system$filedocument` call for, by a merge of the store's
/// sorted walk with the references sorted the same way: [`add`](Self::add) each reference in
/// order, then [`finish`](Self::finish).
///
/// A row's file is its UUID's path when that file exists, else its legacy path. The walk says
/// whether the path at hand exists; whether the row's other path does (needed only when the
/// first is absent, or a legacy file is found) is asked of the file system directly, which is
/// rare in a store of either layout.
pub struct ReferencedSelection {
    sel: Selection,
    walk: Walk,
    /// The walk's current file, whether a reference named it, and whether it was included.
    current: Option<(String, u64)>,
    claimed: bool,
    included: bool,
    last_key: Option<String>,
}

impl ReferencedSelection {
    pub fn new(store: &Path) -> Result<ReferencedSelection> {
        let mut walk = Walk::new(store)?;
        let mut sel = Selection::new()?;
        let current = walk.next_file(&mut sel)?;
        Ok(ReferencedSelection {
            sel,
            walk,
            current,
            claimed: false,
            included: false,
            last_key: None,
        })
    }

    fn advance(&mut self) -> Result<()> {
        if !self.claimed {
            self.sel.counts.orphaned += 1;
        }
        self.current = self.walk.next_file(&mut self.sel)?;
        self.claimed = false;
        self.included = false;
        Ok(())
    }

    /// Moves the walk to `key`; its size when the store has a regular file there.
    fn seek(&mut self, key: String) -> Result<Option<u64>> {
        if let Some(last) = &self.last_key {
            if walk_order(last, &key) == Ordering::Greater {
                return Err(Error::environment(format!(
                    "internal: the file references came out of order ({key} after {last})"
                )));
            }
        }
        loop {
            let order = match &self.current {
                None => break,
                Some((rel, _)) => walk_order(rel, &key),
            };
            match order {
                Ordering::Less => self.advance()?,
                Ordering::Equal => {
                    self.claimed = true;
                    self.last_key = Some(key);
                    return Ok(self.current.as_ref().map(|(_, size)| *size));
                }
                Ordering::Greater => break,
            }
        }
        self.last_key = Some(key);
        Ok(None)
    }

    /// Includes the walk's current file (once, however many rows name it).
    fn include_current(&mut self, legacy: bool) -> Result<()> {
        if self.included {
            return Ok(());
        }
        self.included = true;
        let (rel, size) = self
            .current
            .clone()
            .expect("included after a seek found it");
        self.sel.include(&rel, size, legacy)
    }

    fn is_regular_file(&self, rel: &str) -> bool {
        std::fs::symlink_metadata(self.walk.root.join(rel)).is_ok_and(|m| m.is_file())
    }

    fn missing(&mut self, doc: &FileDocument) {
        self.sel.counts.missing += 1;
        if self.sel.missing_examples.len() < EXAMPLES {
            let name = doc
                .uuid
                .clone()
                .or_else(|| doc.number.map(|n| n.to_string()))
                .unwrap_or_else(|| "(no name)".into());
            self.sel.missing_examples.push(name);
        }
    }

    /// Counts a row once, at the reference that stands for it.
    fn count_row(&mut self, doc: &FileDocument) {
        if doc.has_contents {
            self.sel.counts.referenced += 1;
            if doc.delete_after_download {
                self.sel.counts.delete_after_download += 1;
            }
        }
    }

    /// The next reference, in the order of its path.
    pub fn add(&mut self, r: FileReference) -> Result<()> {
        let doc = &r.doc;
        let uuid = doc.uuid.as_deref().filter(|u| is_uuid(u));
        let number = doc.number.filter(|n| *n >= 0).map(|n| n as u64);
        let wanted = doc.has_contents && !doc.delete_after_download;
        match r.path {
            ReferencePath::Uuid => {
                let Some(uuid) = uuid else {
                    // A malformed UUID names no file; the legacy reference speaks for the
                    // row when it has one.
                    if number.is_none() {
                        self.count_row(doc);
                        if wanted {
                            self.missing(doc);
                        }
                    }
                    return Ok(());
                };
                self.count_row(doc);
                let present = self.seek(uuid_rel_path(uuid))?;
                if !wanted {
                    return Ok(());
                }
                if present.is_some() {
                    self.include_current(false)?;
                } else if !number.is_some_and(|n| self.is_regular_file(&legacy_rel_path(n))) {
                    self.missing(doc);
                }
                // Else the legacy reference includes the legacy file.
            }
            ReferencePath::Legacy => {
                let Some(n) = number else {
                    return Err(Error::environment(
                        "internal: a legacy file reference without a number",
                    ));
                };
                if uuid.is_none() {
                    self.count_row(doc);
                }
                let present = self.seek(legacy_rel_path(n))?;
                if !wanted {
                    return Ok(());
                }
                match (present, uuid) {
                    // The UUID's file wins when both exist.
                    (Some(_), Some(u)) if self.is_regular_file(&uuid_rel_path(u)) => {}
                    (Some(_), _) => self.include_current(true)?,
                    (None, None) => self.missing(doc),
                    // The UUID reference counted it missing (or found it).
                    (None, Some(_)) => {}
                }
            }
            ReferencePath::Neither => {
                self.count_row(doc);
                if wanted {
                    self.missing(doc);
                }
            }
        }
        Ok(())
    }

    /// Walks the rest of the store (orphans all) and hands over the selection.
    pub fn finish(mut self) -> Result<Selection> {
        while self.current.is_some() {
            self.advance()?;
        }
        Ok(self.sel)
    }
}

/// The references of `docs`, in the order the server sends them (for tests and callers that
/// hold rows already).
pub fn references_of(docs: &[FileDocument]) -> Vec<FileReference> {
    let mut refs: Vec<(Option<String>, FileReference)> = Vec::new();
    for doc in docs {
        let make = |path| FileReference {
            path,
            doc: doc.clone(),
        };
        if let Some(u) = &doc.uuid {
            let key = format!(
                "{}/{}/{u}",
                u.get(0..2).unwrap_or(""),
                u.get(2..4).unwrap_or("")
            );
            refs.push((Some(key), make(ReferencePath::Uuid)));
        }
        if let Some(n) = doc.number.filter(|n| *n >= 0) {
            refs.push((Some(legacy_rel_path(n as u64)), make(ReferencePath::Legacy)));
        }
        if doc.uuid.is_none() && doc.number.is_none_or(|n| n < 0) {
            refs.push((None, make(ReferencePath::Neither)));
        }
    }
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    refs.into_iter().map(|(_, r)| r).collect()
}

/// The files the rows in `docs` call for.
pub fn select_referenced(store: &Path, docs: &[FileDocument]) -> Result<Selection> {
    let mut merge = ReferencedSelection::new(store)?;
    for r in references_of(docs) {
        merge.add(r)?;
    }
    merge.finish()
}

/// The files that the database of `session` references, or `None` when it has no
/// `system$filedocument`. Read in the session's transaction (the dump's snapshot, in a create).
pub fn select_referenced_by(session: &Session, store: &Path) -> Result<Option<Selection>> {
    let mut merge = ReferencedSelection::new(store)?;
    if !session.file_references(&mut |r| merge.add(r))? {
        return Ok(None);
    }
    merge.finish().map(Some)
}

/// Every well-named file of the store, for apps without `system$filedocument`.
pub fn select_all(store: &Path) -> Result<Selection> {
    let mut walk = Walk::new(store)?;
    let mut sel = Selection::new()?;
    while let Some((rel, size)) = walk.next_file(&mut sel)? {
        if is_tree_name(&rel) {
            sel.include(&rel, size, !rel.contains('-'))?;
        } else {
            sel.skip(format!(
                "{rel} (name does not follow the file-store layout)"
            ));
        }
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0d3e301f-5551-46f8-ad44-8de2be084c95";
    const B: &str = "1fbdf930-0000-4000-8000-000000000001";
    const C: &str = "2aaaaaaa-0000-4000-8000-000000000002";

    fn put(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn doc(uuid: &str, number: i64, contents: bool, dad: bool) -> FileDocument {
        FileDocument {
            uuid: Some(uuid.into()),
            number: Some(number),
            has_contents: contents,
            delete_after_download: dad,
        }
    }

    fn rels(sel: &mut Selection) -> Vec<String> {
        sel.files
            .iter()
            .unwrap()
            .map(|f| f.unwrap().rel().into_owned())
            .collect()
    }

    #[test]
    fn selects_by_reference_in_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, &uuid_rel_path(A), b"aaa");
        put(root, &legacy_rel_path(1234), b"legacy");
        put(root, &uuid_rel_path(C), b"dad");
        put(
            root,
            "ff/ff/ffffffff-0000-4000-8000-00000000000f",
            b"orphan",
        );
        let docs = vec![
            doc(A, 1, true, false),
            doc(B, 1234, true, false),
            doc(C, 3, true, true),
            doc("3bbbbbbb-0000-4000-8000-000000000003", 4, true, false),
            doc("4ccccccc-0000-4000-8000-000000000004", 5, false, false),
        ];
        let mut sel = select_referenced(root, &docs).unwrap();
        assert_eq!(
            rels(&mut sel),
            vec!["01/1234".to_string(), uuid_rel_path(A)]
        );
        assert_eq!(
            sel.counts,
            FileCounts {
                referenced: 4,
                included: 2,
                missing: 1,
                orphaned: 1,
                delete_after_download: 1,
                legacy_layout: 1,
                skipped: 0,
            }
        );
        assert_eq!(sel.total_bytes, 9);
    }

    #[test]
    fn the_uuid_file_wins_rows_without_names_are_missing_and_shared_files_come_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, &uuid_rel_path(A), b"new");
        put(root, &legacy_rel_path(7), b"old copy");
        put(root, &legacy_rel_path(12345), b"legacy only");
        put(root, "notes.txt", b"foreign");
        std::os::unix::fs::symlink("/etc/passwd", root.join("0d/link")).unwrap();
        let docs = vec![
            doc(A, 7, true, false),
            // A second row naming the same file.
            doc(A, -1, true, false),
            FileDocument {
                uuid: Some("NOT-A-UUID".into()),
                number: Some(12345),
                has_contents: true,
                delete_after_download: false,
            },
            FileDocument {
                uuid: None,
                number: None,
                has_contents: true,
                delete_after_download: false,
            },
            FileDocument {
                uuid: Some("bad".into()),
                number: None,
                has_contents: true,
                delete_after_download: false,
            },
        ];
        let mut sel = select_referenced(root, &docs).unwrap();
        assert_eq!(
            rels(&mut sel),
            vec![uuid_rel_path(A), legacy_rel_path(12345)]
        );
        assert_eq!(
            sel.counts,
            FileCounts {
                referenced: 5,
                included: 2,
                missing: 2,
                // notes.txt; the legacy copy of A is claimed by its row.
                orphaned: 1,
                delete_after_download: 0,
                legacy_layout: 1,
                skipped: 1,
            }
        );
        assert_eq!(sel.total_bytes, 3 + 11);
    }

    #[test]
    fn references_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut merge = ReferencedSelection::new(dir.path()).unwrap();
        let r = |u: &str| FileReference {
            path: ReferencePath::Uuid,
            doc: doc(u, -1, true, false),
        };
        merge.add(r(B)).unwrap();
        let e = merge.add(r(A)).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }

    #[test]
    fn all_files_skips_foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), &uuid_rel_path(A), b"aaa");
        put(dir.path(), "notes.txt", b"x");
        let sel = select_all(dir.path()).unwrap();
        assert_eq!(sel.counts.included, 1);
        assert_eq!(sel.counts.skipped, 1);
    }

    #[test]
    fn a_walk_comes_in_archive_order_and_the_list_spells_names_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = vec![
            uuid_rel_path(A),
            uuid_rel_path(B),
            uuid_rel_path(C),
            "01/1234".to_string(),
            "10/10000".to_string(),
            "100/100000".to_string(),
            "0D/3E/0D3E301F-5551-46F8-AD44-8DE2BE084C95".to_string(),
            "99/99999".to_string(),
        ];
        for n in &names {
            put(dir.path(), n, n.as_bytes());
        }
        let mut sel = select_all(dir.path()).unwrap();
        names.sort();
        assert_eq!(rels(&mut sel), names, "string order is walk order");
        // Read twice: each iteration starts from the beginning.
        assert_eq!(sel.files.iter().unwrap().count(), names.len());
        let sizes: Vec<u64> = sel.files.iter().unwrap().map(|f| f.unwrap().size).collect();
        let want: Vec<u64> = names.iter().map(|n| n.len() as u64).collect();
        assert_eq!(sizes, want);
        assert_eq!(sel.counts.legacy_layout, 4);
        let compact = StoreFile::new(&uuid_rel_path(A), 1);
        assert!(matches!(compact.name, TreeName::Uuid(_)));
        assert!(matches!(
            StoreFile::new("0d/3e/0D3E301F-5551-46F8-AD44-8DE2BE084C95", 1).name,
            TreeName::Path(_)
        ));
    }

    #[test]
    fn the_walk_goes_folder_by_folder_in_walk_order_and_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["a-c", "a/b", "a/a/z", "b", "a/b-"] {
            put(root, rel, rel.as_bytes());
        }
        let outside = tempfile::tempdir().unwrap();
        put(outside.path(), "secret", b"secret");
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("a/link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked-folder")).unwrap();
        let mut walk = Walk::new(root).unwrap();
        let mut sel = Selection::new().unwrap();
        let mut seen = Vec::new();
        while let Some((rel, size)) = walk.next_file(&mut sel).unwrap() {
            assert_eq!(size, rel.len() as u64, "{rel}");
            seen.push(rel);
        }
        assert_eq!(seen, ["a/a/z", "a/b", "a/b-", "a-c", "b"]);
        let mut sorted = seen.clone();
        sorted.sort_by(|x, y| walk_order(x, y));
        assert_eq!(seen, sorted);
        assert_eq!(sel.counts.skipped, 2, "{:?}", sel.skipped_examples);
    }

    #[test]
    fn store_files_open_in_their_folders_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["aa/bb/one", "aa/bb/two", "aa/cc/three", "top"] {
            put(root, rel, rel.as_bytes());
        }
        let mut files = StoreFiles::new(root);
        for rel in ["aa/bb/one", "aa/bb/two", "aa/cc/three", "top", "aa/bb/one"] {
            let mut got = String::new();
            files.open(rel).unwrap().read_to_string(&mut got).unwrap();
            assert_eq!(got, rel);
        }
        // Replaced by links after the scan: a file, and a folder.
        let outside = tempfile::tempdir().unwrap();
        put(outside.path(), "dd/secret", b"secret");
        std::fs::remove_file(root.join("aa/cc/three")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("dd/secret"), root.join("aa/cc/three"))
            .unwrap();
        std::fs::remove_dir_all(root.join("aa/bb")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("dd"), root.join("aa/bb")).unwrap();
        // And a folder higher up: `xx/yy` where `xx` is now a link.
        put(outside.path(), "xx/yy/deep", b"deep");
        std::os::unix::fs::symlink(outside.path().join("xx"), root.join("xx")).unwrap();
        let mut files = StoreFiles::new(root);
        for rel in ["aa/cc/three", "aa/bb/secret", "xx/yy/deep"] {
            let err = files.open(rel).unwrap_err();
            assert!(
                matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{rel}: {err}"
            );
        }
        assert_eq!(
            files.open("aa/cc/gone").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn walk_order_sorts_components_first() {
        assert_eq!(walk_order("a/b", "a-c"), Ordering::Less);
        assert_eq!(walk_order("01/1234", "0d/3e/x"), Ordering::Less);
        assert_eq!(walk_order("10/10000", "100/100000"), Ordering::Less);
    }
}
