//! Member names of a snapshot archive and the rules an archive's entries must follow.
//!
//! The cloud's layout is `.metadata`, `db/db.backup`, then `tree/<aa>/<bb>/<uuid>`. mxsnap adds
//! one member of its own at the very end, [`MANIFEST`], unless asked for the strict layout.
//! Files kept in the legacy numeric layout travel as `tree/<nn>/<number>`, exactly where an
//! on-premises app keeps them under `data/files`.

use crate::error::{Error, Result};

pub const METADATA: &str = ".metadata";
pub const DUMP: &str = "db/db.backup";
pub const TREE_PREFIX: &str = "tree/";
pub const MANIFEST: &str = ".mxsnap-manifest";

/// What an archive entry is, once its name and type have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Metadata,
    Dump,
    /// A file object; the string is its path below `tree/`, e.g. `0d/3e/0d3e301f-...`.
    TreeFile(String),
    Manifest,
    /// One of the directories of the layout (`db/`, `tree/`, `tree/aa/`, ...). Archives made by
    /// GNU tar from a directory carry these; they hold nothing.
    Directory,
}

impl Member {
    /// The canonical archive path of a content member.
    pub fn path(&self) -> String {
        match self {
            Member::Metadata => METADATA.to_string(),
            Member::Dump => DUMP.to_string(),
            Member::TreeFile(rel) => format!("{TREE_PREFIX}{rel}"),
            Member::Manifest => MANIFEST.to_string(),
            Member::Directory => String::new(),
        }
    }
}

/// The kind of a tar entry, reduced to what the rules care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    HardLink,
    Device,
    Fifo,
    Other(u8),
}

impl EntryKind {
    pub fn from_tar(t: tar::EntryType) -> EntryKind {
        use tar::EntryType as T;
        match t {
            T::Regular | T::Continuous => EntryKind::File,
            T::Directory => EntryKind::Directory,
            T::Symlink => EntryKind::Symlink,
            T::Link => EntryKind::HardLink,
            T::Char | T::Block => EntryKind::Device,
            T::Fifo => EntryKind::Fifo,
            other => EntryKind::Other(other.as_byte()),
        }
    }
}

/// Checks one entry's raw name and kind against the layout and says what it is.
///
/// This is the single gate every entry passes, for `verify` and for restore alike: anything
/// that is not a plain file or directory of the layout is refused, with the reason.
pub fn classify(raw_name: &[u8], kind: EntryKind) -> Result<Member> {
    let shown = String::from_utf8_lossy(raw_name).into_owned();
    let name = std::str::from_utf8(raw_name)
        .map_err(|_| Error::corrupt(format!("member name {shown:?} is not valid UTF-8")))?;
    if name.starts_with('/') {
        return Err(Error::corrupt(format!(
            "member {shown:?} has an absolute path; refusing the archive"
        )));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(Error::corrupt(format!(
            "member {shown:?} climbs out of the archive with '..'; refusing the archive"
        )));
    }
    match kind {
        EntryKind::File | EntryKind::Directory => {}
        EntryKind::Symlink => {
            return Err(Error::corrupt(format!(
                "member {shown:?} is a symbolic link; snapshot archives hold none"
            )));
        }
        EntryKind::HardLink => {
            return Err(Error::corrupt(format!(
                "member {shown:?} is a hard link; snapshot archives hold none"
            )));
        }
        EntryKind::Device | EntryKind::Fifo => {
            return Err(Error::corrupt(format!(
                "member {shown:?} is a device or FIFO; snapshot archives hold none"
            )));
        }
        EntryKind::Other(t) => {
            return Err(Error::corrupt(format!(
                "member {shown:?} has tar entry type {:?}, which snapshot archives do not use",
                t as char
            )));
        }
    }

    // Archives made with `tar -C dir .` prefix every name with "./".
    let name = name.strip_prefix("./").unwrap_or(name);
    if kind == EntryKind::Directory {
        let dir = name.trim_end_matches('/');
        if is_layout_directory(dir) {
            return Ok(Member::Directory);
        }
        return Err(Error::corrupt(format!(
            "directory {shown:?} is not part of the snapshot layout"
        )));
    }
    match name {
        METADATA => return Ok(Member::Metadata),
        DUMP => return Ok(Member::Dump),
        MANIFEST => return Ok(Member::Manifest),
        _ => {}
    }
    if let Some(rel) = name.strip_prefix(TREE_PREFIX) {
        if is_tree_name(rel) {
            return Ok(Member::TreeFile(rel.to_string()));
        }
        return Err(Error::corrupt(format!(
            "member {shown:?} does not match the file-store layout \
             (tree/<aa>/<bb>/<uuid> or tree/<nn>/<number>)"
        )));
    }
    Err(Error::corrupt(format!(
        "unexpected member {shown:?}: a snapshot holds only .metadata, db/db.backup, tree/ \
         and {MANIFEST}"
    )))
}

fn is_layout_directory(dir: &str) -> bool {
    if matches!(dir, "" | "." | "db" | "tree") {
        return true;
    }
    let Some(rest) = dir.strip_prefix(TREE_PREFIX) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [a] => is_hex_pair(a) || is_decimal(a),
        [a, b] => is_hex_pair(a) && is_hex_pair(b),
        _ => false,
    }
}

fn is_hex_pair(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// True for a canonical UUID: 8-4-4-4-12 hex digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// True when `rel` (a path below `tree/`) is a well-formed file-object name in either layout.
pub fn is_tree_name(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        [a, b, uuid] => is_uuid(uuid) && uuid[0..2] == **a && uuid[2..4] == **b,
        [nn, number] => {
            is_decimal(number)
                && number
                    .parse::<u64>()
                    .is_ok_and(|n| legacy_dir(n) == *nn && n.to_string() == *number)
        }
        _ => false,
    }
}

/// Where the current layout keeps the file object with this UUID: `<aa>/<bb>/<uuid>`.
pub fn uuid_rel_path(uuid: &str) -> String {
    format!("{}/{}/{}", &uuid[0..2], &uuid[2..4], uuid)
}

/// The folder of the legacy numeric layout: `%02d` of `floor(n / 1000)`.
fn legacy_dir(n: u64) -> String {
    format!("{:02}", n / 1000)
}

/// Where the legacy layout keeps file number `n`: `<nn>/<n>`.
pub fn legacy_rel_path(n: u64) -> String {
    format!("{}/{}", legacy_dir(n), n)
}

/// The UUID's bytes when `rel` is `aa/bb/<uuid>` spelled exactly as [`uuid_rel_path`] would
/// spell it back (lower case), so that nothing is lost.
pub fn compact_uuid_path(rel: &str) -> Option<[u8; 16]> {
    let uuid = rel.get(6..)?;
    if !is_uuid(uuid) || uuid.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    if uuid_rel_path(uuid) != rel {
        return None;
    }
    uuid::Uuid::parse_str(uuid).ok().map(|u| *u.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0d3e301f-5551-46f8-ad44-8de2be084c95";

    fn file(name: &str) -> Result<Member> {
        classify(name.as_bytes(), EntryKind::File)
    }

    #[test]
    fn accepts_the_cloud_layout() {
        assert_eq!(file(".metadata").unwrap(), Member::Metadata);
        assert_eq!(file("db/db.backup").unwrap(), Member::Dump);
        assert_eq!(file("./db/db.backup").unwrap(), Member::Dump);
        assert_eq!(
            file(&format!("tree/0d/3e/{U}")).unwrap(),
            Member::TreeFile(format!("0d/3e/{U}"))
        );
        assert_eq!(
            file("tree/12/12345").unwrap(),
            Member::TreeFile("12/12345".into())
        );
        assert_eq!(file("tree/00/7").unwrap(), Member::TreeFile("00/7".into()));
        assert_eq!(file(MANIFEST).unwrap(), Member::Manifest);
        for d in ["./", "db/", "tree/", "tree/0d/", "tree/0d/3e/", "tree/12"] {
            assert_eq!(
                classify(d.as_bytes(), EntryKind::Directory).unwrap(),
                Member::Directory,
                "{d}"
            );
        }
    }

    #[test]
    fn refuses_hostile_and_foreign_names() {
        for bad in [
            "/etc/passwd",
            "../x",
            "tree/../../x",
            "tree/0d/3e/../../../x",
            "tree/0e/3e/0d3e301f-5551-46f8-ad44-8de2be084c95",
            "tree/0d/3e/not-a-uuid",
            "tree/1/12345",
            "tree/13/12345",
            "tree/00/007",
            "db/other.backup",
            "README",
            ".metadata/x",
        ] {
            let err = file(bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt, "{bad}");
        }
        for kind in [
            EntryKind::Symlink,
            EntryKind::HardLink,
            EntryKind::Device,
            EntryKind::Fifo,
        ] {
            assert!(classify(b"tree/00/7", kind).is_err());
        }
        assert!(classify(b"etc/", EntryKind::Directory).is_err());
        assert!(classify(b"tree/\xff", EntryKind::File).is_err());
    }

    #[test]
    fn paths_for_both_layouts() {
        assert_eq!(uuid_rel_path(U), format!("0d/3e/{U}"));
        assert_eq!(legacy_rel_path(12345), "12/12345");
        assert_eq!(legacy_rel_path(7), "00/7");
        assert!(is_tree_name(&legacy_rel_path(123_456)));
    }
}
