//! Reads a snapshot tar member by member, checking every entry against the layout, hashing
//! every member, and reading the stream to its very end so that a cut or damaged trailer is
//! noticed. The tar crate skips some entries silently and treats a missing end-of-archive
//! marker as the end; here both are errors.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;

use super::codec::IO_BUFFER;
use super::hashpipe::HashPipe;
use super::layout::{EntryKind, Member, classify};
pub(crate) use super::seen::SeenMembers;
use super::writer::hex;
use crate::error::{Error, Result};

/// What the walk tells a visitor about each content member.
pub trait Visitor {
    /// Called with the member's content; whatever is not read here is read (and hashed) after.
    fn content(&mut self, _member: &Member, _size: u64, _data: &mut dyn Read) -> Result<()> {
        Ok(())
    }
    /// Called once the member has been read whole and hashed: in member order, but possibly
    /// after later members' `content` (hashing runs behind on its own thread). Every member
    /// before the manifest is finished before the manifest's `content`.
    fn finished(&mut self, member: &Member, size: u64, sha256: &str) -> Result<()>;
}

/// Counts bytes read through it, shared with whoever holds the other handle.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

struct HashingReader<'a, R: ?Sized> {
    inner: &'a mut R,
    hasher: &'a mut HashPipe,
    read: u64,
}

impl<R: Read + ?Sized> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Summary of a walk.
#[derive(Debug, Default, Clone)]
pub struct Walked {
    pub members: u64,
    pub content_bytes: u64,
}

/// Walks the tar in `content` (already decompressed), calling `visitor` for each member.
pub fn walk_tar(content: &mut dyn Read, visitor: &mut dyn Visitor) -> Result<Walked> {
    let count = Rc::new(Cell::new(0u64));
    let counted = CountingReader {
        inner: &mut *content,
        count: Rc::clone(&count),
    };
    let mut archive = tar::Archive::new(counted);
    let mut seen = SeenMembers::default();
    let mut walked = Walked::default();
    let mut data_end = 0u64;
    let mut repeats_checked = false;
    let mut buf = vec![0u8; IO_BUFFER];
    let mut hasher = HashPipe::new();
    // Members read whole, waiting for their digests.
    let mut hashing_behind: VecDeque<(Member, u64)> = VecDeque::new();
    let catch_up = |hasher: &mut HashPipe,
                    behind: &mut VecDeque<(Member, u64)>,
                    visitor: &mut dyn Visitor,
                    wait: bool|
     -> Result<()> {
        while let Some(digest) = hasher.next_digest(wait) {
            let (member, size) = behind.pop_front().expect("a digest per member");
            visitor.finished(&member, size, &hex(&digest))?;
        }
        Ok(())
    };
    let entries = archive
        .entries()
        .map_err(|e| Error::reading("reading the tar stream", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::reading("reading a tar header", e))?;
        let size = entry.size();
        data_end = entry.raw_file_position() + size.div_ceil(512) * 512;
        let entry_type = entry.header().entry_type();
        if entry_type == tar::EntryType::XGlobalHeader {
            // A pax global header (some tar writers add one) carries no member.
            continue;
        }
        let name = entry.path_bytes().into_owned();
        let member = classify(&name, EntryKind::from_tar(entry_type))?;
        if member == Member::Directory {
            continue;
        }
        let path = member.path();
        if let Some(repeat) = seen.insert(&path)? {
            return Err(appears_twice(&repeat));
        }
        if seen.manifest && member != Member::Manifest {
            return Err(Error::corrupt(format!(
                "member {path} follows the manifest, which must be the last member"
            )));
        }
        if member == Member::Manifest {
            // The manifest is checked against every member before it: repeats first, so
            // that a repeat is named as such rather than as a mismatch with the manifest.
            if let Some(repeat) = seen.finish()? {
                return Err(appears_twice(&repeat));
            }
            repeats_checked = true;
            catch_up(&mut hasher, &mut hashing_behind, visitor, true)?;
        }
        let mut hashing = HashingReader {
            inner: &mut entry,
            hasher: &mut hasher,
            read: 0,
        };
        visitor.content(&member, size, &mut hashing)?;
        loop {
            match hashing.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::reading(format!("reading member {path}"), e)),
            }
        }
        if hashing.read != size {
            return Err(Error::corrupt(format!(
                "member {path} ends after {} of its {size} bytes: the archive is truncated",
                hashing.read
            )));
        }
        hasher.end_member();
        walked.members += 1;
        walked.content_bytes += size;
        hashing_behind.push_back((member, size));
        catch_up(&mut hasher, &mut hashing_behind, visitor, false)?;
    }
    drop(archive);
    catch_up(&mut hasher, &mut hashing_behind, visitor, true)?;
    // The tar crate stops at a zero block *or* at the end of input, so a cut archive can look
    // whole to it. Every tar writer ends with two zero blocks after the last member's data;
    // count what follows and insist on them. The rest must be zero padding, and reading it to
    // the end makes the decompressor check its trailer.
    let mut total = count.get();
    loop {
        match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if buf[..n].iter().any(|&b| b != 0) {
                    return Err(Error::corrupt(
                        "unexpected data after the end of the tar archive",
                    ));
                }
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::reading("reading the end of the archive", e)),
        }
    }
    if total < data_end + 1024 {
        return Err(Error::corrupt(
            "the tar stream ends without its end-of-archive marker: the archive is truncated",
        )
        .with_hint("the file was cut short; download or copy it again"));
    }
    // Nothing follows the manifest (refused above), so a check made there is complete.
    if !repeats_checked {
        if let Some(repeat) = seen.finish()? {
            return Err(appears_twice(&repeat));
        }
    }
    Ok(walked)
}

fn appears_twice(path: &str) -> Error {
    Error::corrupt(format!(
        "member {path} appears twice; refusing an ambiguous archive"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::codec::tests::ShortReader;
    use crate::error::ErrorKind;

    struct Collect(Vec<(String, u64)>);
    impl Visitor for Collect {
        fn finished(&mut self, m: &Member, size: u64, _sha: &str) -> Result<()> {
            self.0.push((m.path(), size));
            Ok(())
        }
    }

    fn tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            // set_path refuses '..'; write the name bytes raw as a hostile tool would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn walk(bytes: &[u8]) -> Result<Vec<(String, u64)>> {
        let mut c = Collect(Vec::new());
        let mut r = ShortReader::new(bytes, 3);
        walk_tar(&mut r, &mut c)?;
        Ok(c.0)
    }

    const F: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn walks_a_good_archive() {
        let t = tar(&[
            (".metadata", F, b"{}"),
            ("db/", tar::EntryType::Directory, b""),
            ("db/db.backup", F, b"PGDMP"),
            ("tree/00/7", F, b"seven"),
        ]);
        assert_eq!(
            walk(&t).unwrap(),
            vec![
                (".metadata".to_string(), 2),
                ("db/db.backup".to_string(), 5),
                ("tree/00/7".to_string(), 5)
            ]
        );
    }

    #[test]
    fn refuses_hostile_entries() {
        for t in [
            tar(&[("../evil", F, b"x")]),
            tar(&[("/etc/evil", F, b"x")]),
            tar(&[("tree/00/7", tar::EntryType::Symlink, b"")]),
            tar(&[("tree/00/7", tar::EntryType::Link, b"")]),
            tar(&[("tree/00/7", tar::EntryType::Fifo, b"")]),
            tar(&[("tree/00/7", tar::EntryType::Char, b"")]),
            tar(&[("tree/00/7", F, b"a"), ("tree/00/7", F, b"b")]),
            // Out of order, the repeat is found by the merge at the end.
            tar(&[
                ("tree/00/7", F, b"a"),
                ("tree/00/5", F, b""),
                ("tree/00/7", F, b"b"),
            ]),
            tar(&[("tree/00/7", F, b"a"), ("evil.sh", F, b"b")]),
        ] {
            assert_eq!(walk(&t).unwrap_err().kind(), ErrorKind::Corrupt);
        }
    }

    #[test]
    fn truncation_anywhere_is_caught() {
        let t = tar(&[(".metadata", F, b"{}"), ("tree/00/7", F, &[7u8; 3000])]);
        // Cut inside data, at a header boundary, and just before the end marker.
        for cut in [1500, 1024, 512 * 3, 512 * 6, t.len() - 1024, t.len() - 10] {
            let err = walk(&t[..cut]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "cut at {cut}: {err}");
        }
        let mut junk = t.clone();
        junk.extend_from_slice(b"trailing junk");
        assert_eq!(walk(&junk).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
