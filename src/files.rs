//! The file-object store: which files a snapshot must carry and where they are on disk.
//!
//! An app keeps uploaded files as `<aa>/<bb>/<uuid>`, or, for old apps, in the legacy numeric
//! layout `<nn>/<number>`. When the database has `system$filedocument`, a snapshot carries
//! exactly the files with contents that are not delete-after-download, found in either layout.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::archive::layout::{is_tree_name, legacy_rel_path, uuid_rel_path};
use crate::error::{Error, Result};
use crate::pg::FileDocument;

/// One file to pack: its path below `tree/` (and below the store), and the size seen when
/// scanning. Kept small: a store of a million files holds a million of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    pub rel: Box<str>,
    pub size: u64,
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

/// Every regular file below `store`, by path relative to it, with its size.
fn scan(store: &Path, sel: &mut Selection) -> Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
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
        found.push((rel, size));
    }
    Ok(found)
}

/// The files the rows of `system$filedocument` call for.
pub fn select_referenced(store: &Path, docs: &[FileDocument]) -> Result<Selection> {
    let mut sel = Selection::default();
    let present: HashMap<String, u64> = scan(store, &mut sel)?.into_iter().collect();
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
                sel.files.push(StoreFile {
                    rel: rel.into_boxed_str(),
                    size,
                });
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
    let present = scan(store, &mut sel)?;
    for (rel, size) in present {
        if is_tree_name(&rel) {
            if !rel.contains('-') {
                sel.counts.legacy_layout += 1;
            }
            sel.total_bytes += size;
            sel.files.push(StoreFile {
                rel: rel.into_boxed_str(),
                size,
            });
        } else {
            sel.counts.skipped += 1;
            if sel.skipped_examples.len() < EXAMPLES {
                sel.skipped_examples.push(format!(
                    "{rel} (name does not follow the file-store layout)"
                ));
            }
        }
    }
    finish(sel)
}

fn finish(mut sel: Selection) -> Result<Selection> {
    sel.files.sort_by(|a, b| a.rel.cmp(&b.rel));
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
        let rels: Vec<_> = sel.files.iter().map(|f| &*f.rel).collect();
        assert_eq!(rels, vec!["01/1234", uuid_rel_path(A).as_str()]);
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
}
