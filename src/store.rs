//! The file-object store: which files a snapshot must carry and where they are on disk.
//!
//! An app keeps uploaded files as `<aa>/<bb>/<uuid>`, or, for old apps, in the legacy numeric
//! layout `<nn>/<number>`. When the database has `system$filedocument`, a snapshot carries
//! exactly the files with contents that are not delete-after-download, found in either layout.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::archive::layout::{compact_uuid_path, is_tree_name, legacy_rel_path, uuid_rel_path};
use crate::error::{Error, Result};
use crate::pg::FileDocument;

/// One file to pack: its path below `tree/` (and below the store), and the size seen when
/// scanning. Kept small, because the list of them is the one thing in memory that grows with
/// the store: 32 bytes a file in the usual `aa/bb/<uuid>` layout, whose path is kept as the
/// UUID's 16 bytes, against about 80 for the path as a string.
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

impl Ord for StoreFile {
    /// The order of the paths as strings: the archive's order.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (&self.name, &other.name) {
            // Lower-case hex compares as the bytes it spells, and `aa/bb/` repeats the
            // UUID's first bytes, so the bytes order the paths.
            (TreeName::Uuid(a), TreeName::Uuid(b)) => a.cmp(b),
            _ => self.rel().cmp(&other.rel()),
        }
        .then(self.size.cmp(&other.size))
    }
}

impl PartialOrd for StoreFile {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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

#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Sorted by `rel`, the order they take in the archive.
    pub files: Vec<StoreFile>,
    pub counts: FileCounts,
    pub total_bytes: u64,
    /// A few examples of each problem, for messages.
    pub missing_examples: Vec<String>,
    pub skipped_examples: Vec<String>,
}

const EXAMPLES: usize = 5;

/// Every regular file below `store`, by path relative to it, with its size, handed to `found`
/// one at a time (no list of strings: see [`StoreFile`]).
fn scan(
    store: &Path,
    sel: &mut Selection,
    mut found: impl FnMut(&mut Selection, String, u64),
) -> Result<()> {
    if !store.is_dir() {
        return Err(Error::environment(format!(
            "the file store {} is not a directory",
            store.display()
        ))
        .with_hint("pass the app's uploaded-files directory (data/files) with --files"));
    }
    for entry in walkdir::WalkDir::new(store).min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Error::io(
                format!("scanning the file store at {path}"),
                e.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
            )
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(store)
            .expect("walkdir stays below its root")
            .to_string_lossy()
            .into_owned();
        if !entry.file_type().is_file() {
            sel.counts.skipped += 1;
            if sel.skipped_examples.len() < EXAMPLES {
                sel.skipped_examples
                    .push(format!("{rel} (not a regular file)"));
            }
            continue;
        }
        let size = entry
            .metadata()
            .map_err(|e| {
                Error::io(
                    format!("reading {}", entry.path().display()),
                    e.into_io_error()
                        .unwrap_or_else(|| std::io::Error::other("metadata")),
                )
            })?
            .len();
        found(sel, rel, size);
    }
    Ok(())
}

/// The files the rows of `system$filedocument` call for.
pub fn select_referenced(store: &Path, docs: &[FileDocument]) -> Result<Selection> {
    let mut sel = Selection::default();
    let mut present: HashMap<String, u64> = HashMap::new();
    scan(store, &mut sel, |_, rel, size| {
        present.insert(rel, size);
    })?;
    let mut claimed: HashSet<String> = HashSet::new();
    for doc in docs {
        let uuid_rel = doc
            .uuid
            .as_deref()
            .filter(|u| crate::archive::layout::is_uuid(u))
            .map(uuid_rel_path);
        let legacy_rel = doc
            .number
            .filter(|n| *n >= 0)
            .map(|n| legacy_rel_path(n as u64));
        claimed.extend(uuid_rel.iter().cloned());
        claimed.extend(legacy_rel.iter().cloned());
        if !doc.has_contents {
            continue;
        }
        sel.counts.referenced += 1;
        if doc.delete_after_download {
            sel.counts.delete_after_download += 1;
            continue;
        }
        let found = [(uuid_rel, false), (legacy_rel, true)]
            .into_iter()
            .find_map(|(rel, legacy)| {
                let rel = rel?;
                let size = *present.get(&rel)?;
                Some((rel, size, legacy))
            });
        match found {
            Some((rel, size, legacy)) => {
                if legacy {
                    sel.counts.legacy_layout += 1;
                }
                sel.total_bytes += size;
                sel.files.push(StoreFile::new(&rel, size));
            }
            None => {
                sel.counts.missing += 1;
                if sel.missing_examples.len() < EXAMPLES {
                    let name = doc
                        .uuid
                        .clone()
                        .or_else(|| doc.number.map(|n| n.to_string()))
                        .unwrap_or_else(|| "(no name)".into());
                    sel.missing_examples.push(name);
                }
            }
        }
    }
    sel.counts.orphaned = present.keys().filter(|r| !claimed.contains(*r)).count() as u64;
    finish(sel)
}

/// Every well-named file of the store, for apps without `system$filedocument`.
pub fn select_all(store: &Path) -> Result<Selection> {
    let mut sel = Selection::default();
    scan(store, &mut sel, |sel, rel, size| {
        if is_tree_name(&rel) {
            if !rel.contains('-') {
                sel.counts.legacy_layout += 1;
            }
            sel.total_bytes += size;
            sel.files.push(StoreFile::new(&rel, size));
        } else {
            sel.counts.skipped += 1;
            if sel.skipped_examples.len() < EXAMPLES {
                sel.skipped_examples.push(format!(
                    "{rel} (name does not follow the file-store layout)"
                ));
            }
        }
    })?;
    finish(sel)
}

fn finish(mut sel: Selection) -> Result<Selection> {
    sel.files.sort_unstable();
    sel.files.shrink_to_fit();
    sel.counts.included = sel.files.len() as u64;
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
        let sel = select_referenced(root, &docs).unwrap();
        let rels: Vec<_> = sel.files.iter().map(|f| f.rel().into_owned()).collect();
        assert_eq!(rels, vec!["01/1234".to_string(), uuid_rel_path(A)]);
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
    fn all_files_skips_foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), &uuid_rel_path(A), b"aaa");
        put(dir.path(), "notes.txt", b"x");
        let sel = select_all(dir.path()).unwrap();
        assert_eq!(sel.counts.included, 1);
        assert_eq!(sel.counts.skipped, 1);
    }

    #[test]
    fn compact_names_spell_the_same_paths_in_the_same_order() {
        let names = [
            uuid_rel_path(A),
            uuid_rel_path(B),
            uuid_rel_path(C),
            "01/1234".to_string(),
            "0d/3e/0D3E301F-5551-46F8-AD44-8DE2BE084C95".to_string(),
            "ff/ff/0d3e301f-5551-46f8-ad44-8de2be084c95".to_string(),
            "99/99999".to_string(),
        ];
        let mut files: Vec<StoreFile> = names.iter().map(|n| StoreFile::new(n, 1)).collect();
        assert!(matches!(files[0].name, TreeName::Uuid(_)));
        assert!(
            matches!(files[4].name, TreeName::Path(_)),
            "upper case kept as found"
        );
        assert!(
            matches!(files[5].name, TreeName::Path(_)),
            "folders must match the UUID"
        );
        for (f, n) in files.iter().zip(&names) {
            assert_eq!(f.rel(), n.as_str());
        }
        files.sort_unstable();
        let mut want = names.to_vec();
        want.sort();
        let got: Vec<String> = files.iter().map(|f| f.rel().into_owned()).collect();
        assert_eq!(got, want);
        assert_eq!(std::mem::size_of::<StoreFile>(), 32);
    }
}
