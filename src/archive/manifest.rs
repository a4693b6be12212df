//! The two small JSON members: the cloud's `.metadata` and mxsnap's own manifest.
//!
//! The manifest is JSON Lines: a header object, then one object per member in archive order
//! with its size and SHA-256. It is written to a spool file while the archive streams, so its
//! memory cost does not grow with the number of files, and appended as the last member.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Seek, Write};

use serde::{Deserialize, Serialize};

use super::Variant;

/// Model version recorded in `.metadata` when none is given: the cloud always knows it, we
/// may not.
pub const UNKNOWN_MODEL_VERSION: &str = "unknown";

/// `.metadata` as the cloud writes it: every value a string, keys in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Seconds the database dump took (the part of the work done when `.metadata` is written).
    pub duration: String,
    /// Bytes of `db/db.backup`.
    pub dump_size: String,
    pub model_version: String,
    /// Bytes the live database occupied (`pg_database_size`).
    pub database_size: String,
    /// Bytes of all members under `tree/`.
    pub files_size: String,
}

/// The keys of the cloud's `.metadata`, in its order.
const METADATA_KEYS: [&str; 5] = [
    "duration",
    "dumpSize",
    "modelVersion",
    "databaseSize",
    "filesSize",
];

impl Metadata {
    /// Reads a `.metadata` as others may have written it: the cloud's values are inferred,
    /// not documented, so a number instead of a string is taken as its digits, a missing key
    /// as empty, an unknown key is ignored; each such liberty is named in the notes. Only
    /// what is not a JSON object at all is an error.
    pub fn parse_lenient(text: &[u8]) -> Result<(Metadata, Vec<String>), String> {
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let serde_json::Value::Object(map) = value else {
            return Err("not a JSON object".to_string());
        };
        let mut notes = Vec::new();
        let mut get = |key: &str| match map.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => {
                notes.push(format!("{key} is a number, not a string"));
                n.to_string()
            }
            Some(other) => {
                notes.push(format!("{key} is {other}, neither a string nor a number"));
                String::new()
            }
            None => {
                notes.push(format!("{key} is missing"));
                String::new()
            }
        };
        let metadata = Metadata {
            duration: get("duration"),
            dump_size: get("dumpSize"),
            model_version: get("modelVersion"),
            database_size: get("databaseSize"),
            files_size: get("filesSize"),
        };
        let mut extra: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !METADATA_KEYS.contains(k))
            .collect();
        extra.sort();
        if !extra.is_empty() {
            notes.push(format!("unknown key(s) {}", extra.join(", ")));
        }
        Ok((metadata, notes))
    }

    /// A size field as a number, when it is one.
    pub fn size(field: &str) -> Option<u64> {
        field.trim().parse().ok()
    }
}

/// Largest `.metadata` we read; the real one is about 120 bytes.
pub const METADATA_LIMIT: u64 = 64 * 1024;

pub const MANIFEST_FORMAT: &str = "mxsnap-manifest";
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: String,
    pub version: u32,
    pub variant: Variant,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Collects manifest lines in a spool file while the archive is written.
pub struct ManifestSpool {
    /// The header line, kept apart so entries of an archive's leading part can follow it.
    header: Vec<u8>,
    out: BufWriter<File>,
    len: u64,
}

impl ManifestSpool {
    pub fn new(variant: Variant, comment: Option<&str>) -> io::Result<ManifestSpool> {
        let header = ManifestHeader {
            format: MANIFEST_FORMAT.to_string(),
            version: MANIFEST_VERSION,
            variant,
            tool: format!("mxsnap {}", env!("CARGO_PKG_VERSION")),
            comment: comment.map(str::to_string),
        };
        let mut header = serde_json::to_vec(&header).map_err(io::Error::other)?;
        header.push(b'\n');
        Ok(ManifestSpool {
            header,
            out: BufWriter::new(tempfile::tempfile()?),
            len: 0,
        })
    }

    fn line(&mut self, json: &[u8]) -> io::Result<()> {
        self.out.write_all(json)?;
        self.out.write_all(b"\n")?;
        self.len += json.len() as u64 + 1;
        Ok(())
    }

    pub fn add(&mut self, entry: &ManifestEntry) -> io::Result<()> {
        self.line(&serde_json::to_vec(entry).map_err(io::Error::other)?)
    }

    /// The finished manifest and its length: the header, `leading` (entries of members
    /// written before the ones added here), then the spooled entries.
    pub fn finish(self, leading: &[ManifestEntry]) -> io::Result<(impl io::Read, u64)> {
        let mut head = self.header;
        for entry in leading {
            serde_json::to_writer(&mut head, entry).map_err(io::Error::other)?;
            head.push(b'\n');
        }
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let len = head.len() as u64 + self.len;
        Ok((io::Read::chain(io::Cursor::new(head), file), len))
    }
}

/// Parses the manifest's first line.
pub fn parse_header(line: &str) -> Result<ManifestHeader, String> {
    let header: ManifestHeader =
        serde_json::from_str(line).map_err(|e| format!("manifest header unreadable: {e}"))?;
    if header.format != MANIFEST_FORMAT {
        return Err(format!("manifest format is {:?}", header.format));
    }
    if header.version > MANIFEST_VERSION {
        return Err(format!(
            "manifest version {} is newer than this mxsnap understands ({MANIFEST_VERSION})",
            header.version
        ));
    }
    Ok(header)
}

/// Reads manifest entries line by line from `r` (after the header).
pub fn read_entries<R: BufRead>(r: R) -> impl Iterator<Item = Result<ManifestEntry, String>> {
    // One line buffer for all lines: a manifest can have millions.
    let mut line = String::new();
    let mut r = r;
    std::iter::from_fn(move || {
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Err(e) => return Some(Err(format!("manifest unreadable: {e}"))),
                Ok(0) => return None,
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => {
                    let l = line.trim_end_matches(['\n', '\r']);
                    return Some(
                        serde_json::from_str::<ManifestEntry>(l)
                            .map_err(|e| format!("manifest line {l:?} unreadable: {e}")),
                    );
                }
            }
        }
    })
}

/// Why two entry lists could not be compared.
#[derive(Debug)]
pub enum Unreadable {
    /// The manifest in the archive.
    Manifest(String),
    /// The entries computed while reading.
    Computed(String),
}

/// Compares the manifest's entries (`expected`) with those computed while reading the archive
/// (`actual`). Both are in the order mxsnap writes (`.metadata`, `db/db.backup`, `tree/`
/// sorted), so a merge join names a missing or an extra member instead of every one after
/// it. Returns how many members matched by name, and the differences (ten at most).
pub fn differences(
    expected: impl Iterator<Item = Result<ManifestEntry, String>>,
    actual: impl Iterator<Item = Result<ManifestEntry, String>>,
) -> Result<(u64, Vec<String>), Unreadable> {
    let mut expected = expected.peekable();
    let mut actual = actual.peekable();
    let mut checked = 0;
    let mut problems = Vec::new();
    // Which side(s) the next step takes, decided on borrowed entries: a million-file
    // manifest is checked at the very end of a restore, on one thread, so nothing is copied.
    enum Step {
        Missing,
        Extra,
        Both,
    }
    loop {
        let step = match (expected.peek(), actual.peek()) {
            (Some(Err(e)), _) => return Err(Unreadable::Manifest(e.clone())),
            (_, Some(Err(e))) => return Err(Unreadable::Computed(e.clone())),
            (None, None) => break,
            (Some(Ok(_)), None) => Step::Missing,
            (None, Some(Ok(_))) => Step::Extra,
            (Some(Ok(w)), Some(Ok(g))) => match order_key(&w.path).cmp(&order_key(&g.path)) {
                std::cmp::Ordering::Less => Step::Missing,
                std::cmp::Ordering::Greater => Step::Extra,
                std::cmp::Ordering::Equal => Step::Both,
            },
        };
        match step {
            Step::Missing => problems.push(format!(
                "member {} is listed in the manifest but missing from the archive",
                take(&mut expected).path
            )),
            Step::Extra => problems.push(format!(
                "member {} is in the archive but not in the manifest",
                take(&mut actual).path
            )),
            Step::Both => {
                checked += 1;
                let (w, g) = (take(&mut expected), take(&mut actual));
                if let Some(p) = compare(&w, &g) {
                    problems.push(p);
                }
            }
        }
        if problems.len() >= 10 {
            problems.push("(further differences not listed)".into());
            break;
        }
    }
    Ok((checked, problems))
}

/// The next entry of a side peeked as one.
fn take(side: &mut impl Iterator<Item = Result<ManifestEntry, String>>) -> ManifestEntry {
    match side.next() {
        Some(Ok(entry)) => entry,
        _ => unreachable!("peeked as an entry"),
    }
}

/// The order mxsnap writes members in.
fn order_key(path: &str) -> (u8, &str) {
    match path {
        super::layout::METADATA => (0, path),
        super::layout::DUMP => (1, path),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_read_leniently_and_each_liberty_is_named() {
        let cloud = br#"{"duration":"0","dumpSize":"94769","modelVersion":"1.0.0.40","databaseSize":"9730584","filesSize":"1346575"}"#;
        let (m, notes) = Metadata::parse_lenient(cloud).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(Metadata::size(&m.dump_size), Some(94769));
        let odd = br#"{"dumpSize":94769,"modelVersion":"1.2","filesSize":"x","region":"eu"}"#;
        let (m, notes) = Metadata::parse_lenient(odd).unwrap();
        assert_eq!(m.dump_size, "94769");
        assert_eq!(Metadata::size(&m.files_size), None);
        let notes = notes.join("; ");
        assert!(notes.contains("dumpSize is a number"), "{notes}");
        assert!(notes.contains("duration is missing"), "{notes}");
        assert!(notes.contains("unknown key(s) region"), "{notes}");
        assert!(Metadata::parse_lenient(b"[1,2]").is_err());
        assert!(Metadata::parse_lenient(b"").is_err());
    }

    fn entry(path: &str, size: u64, sha: &str) -> Result<ManifestEntry, String> {
        Ok(ManifestEntry {
            path: path.into(),
            size,
            sha256: sha.into(),
        })
    }

    #[test]
    fn differences_name_the_missing_the_extra_and_the_changed() {
        let expected = vec![
            entry(".metadata", 10, "a"),
            entry("db/db.backup", 20, "b"),
            entry("tree/00/00/x", 1, "c"),
            entry("tree/00/00/y", 1, "d"),
        ];
        let actual = vec![
            entry(".metadata", 10, "a"),
            entry("db/db.backup", 20, "B"),
            entry("tree/00/00/w", 1, "e"),
            entry("tree/00/00/y", 1, "d"),
        ];
        let (checked, problems) = differences(expected.into_iter(), actual.into_iter()).unwrap();
        assert_eq!(checked, 3);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("db/db.backup has SHA-256 B"));
        assert!(problems[1].contains("tree/00/00/w is in the archive but not in the manifest"));
        assert!(problems[2].contains("tree/00/00/x is listed in the manifest but missing"));
        let damaged = vec![Err("bad line".to_string())];
        assert!(matches!(
            differences(damaged.into_iter(), std::iter::empty()),
            Err(Unreadable::Manifest(_))
        ));
    }
    #[test]
    fn entries_are_read_line_by_line_past_blank_lines_and_crlf() {
        let text = "{\"path\":\"tree/00/00/x\",\"size\":1,\"sha256\":\"c\"}\r\n\n  \n\
                    {\"path\":\"tree/00/00/y\",\"size\":2,\"sha256\":\"d\"}\n\
                    not json\n\
                    {\"path\":\"tree/00/00/z\",\"size\":3,\"sha256\":\"e\"}";
        let read: Vec<_> = read_entries(text.as_bytes()).collect();
        assert_eq!(read.len(), 4, "{read:?}");
        assert_eq!(read[0], entry("tree/00/00/x", 1, "c"));
        assert_eq!(read[1], entry("tree/00/00/y", 2, "d"));
        assert!(
            read[2].as_ref().unwrap_err().contains("\"not json\""),
            "{read:?}"
        );
        assert_eq!(read[3], entry("tree/00/00/z", 3, "e"));
    }

    use std::io::{BufReader, Read};

    #[test]
    fn metadata_matches_the_cloud_example() {
        let m = Metadata {
            duration: "0".into(),
            dump_size: "94769".into(),
            model_version: "1.0.0.40".into(),
            database_size: "9730584".into(),
            files_size: "1346575".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"duration":"0","dumpSize":"94769","modelVersion":"1.0.0.40","databaseSize":"9730584","filesSize":"1346575"}"#
        );
        // Numbers where the cloud writes strings are refused.
        assert!(
            serde_json::from_str::<Metadata>(
                r#"{"duration":0,"dumpSize":"1","modelVersion":"x","databaseSize":"1","filesSize":"1"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn spool_round_trip() {
        let mut spool = ManifestSpool::new(Variant::Full, Some("c")).unwrap();
        let e = ManifestEntry {
            path: ".metadata".into(),
            size: 3,
            sha256: "ab".into(),
        };
        spool.add(&e).unwrap();
        let (mut f, len) = spool.finish(&[]).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text.len() as u64, len);
        let mut lines = text.lines();
        let header = parse_header(lines.next().unwrap()).unwrap();
        assert_eq!(header.variant, Variant::Full);
        let rest: String = lines.collect::<Vec<_>>().join("\n");
        let entries: Vec<_> = read_entries(BufReader::new(rest.as_bytes()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(entries, vec![e]);
    }
}
