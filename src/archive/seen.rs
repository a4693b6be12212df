//! The duplicate-name check of a reader, in memory that does not grow with the archive.
//!
//! A second member of the same name makes an archive ambiguous, so every name must be compared
//! with every earlier one. mxsnap's own archives come in a strictly rising order (`.metadata`,
//! the dump, `tree/` sorted, the manifest): while that holds, a repeat can only be the name just
//! before, and nothing but that name is kept in memory. Other archives (the cloud's come in the
//! order of its file system) are checked by an external sort: the names go to a temporary
//! file in sorted runs of bounded size, merged at the end of the walk, where a repeat shows as
//! two equal neighbours.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};

use super::layout::{DUMP, MANIFEST, METADATA};
use crate::error::{Error, Result};
use crate::sys::ReadAt;

/// Name bytes held in memory before a run is sorted and written out.
const RUN_BYTES: usize = 4 << 20;

/// mxsnap's member order: a total order, so a strictly rising sequence has no repeats.
fn order(a: &str, b: &str) -> Ordering {
    let rank = |p: &str| match p {
        METADATA => 0,
        DUMP => 1,
        MANIFEST => 3,
        _ => 2,
    };
    rank(a).cmp(&rank(b)).then_with(|| a.cmp(b))
}

/// The member names met so far.
#[derive(Default)]
pub(crate) struct SeenMembers {
    /// The last name while every name so far came in rising order; `None` once it broke.
    last: Option<String>,
    broken: bool,
    /// Every name, on disk: the rising ones as the first run, then sorted runs of the rest.
    spill: Option<Spill>,
    pub(crate) manifest: bool,
}

/// Sorted runs of length-prefixed names in one temporary file.
struct Spill {
    file: BufWriter<File>,
    /// (offset, names) of each finished run.
    runs: Vec<(u64, u64)>,
    /// Where the run being written starts, and its names so far.
    run_start: u64,
    run_names: u64,
    written: u64,
    /// Names after the order broke, sorted and written when they fill [`RUN_BYTES`].
    pending: Vec<String>,
    pending_bytes: usize,
}

impl Spill {
    fn new() -> Result<Spill> {
        let file = tempfile::tempfile().map_err(spill_error)?;
        Ok(Spill {
            file: BufWriter::with_capacity(64 * 1024, file),
            runs: Vec::new(),
            run_start: 0,
            run_names: 0,
            written: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        })
    }

    fn write(&mut self, name: &str) -> Result<()> {
        self.file
            .write_all(&(name.len() as u32).to_le_bytes())
            .and_then(|()| self.file.write_all(name.as_bytes()))
            .map_err(spill_error)?;
        self.written += 4 + name.len() as u64;
        self.run_names += 1;
        Ok(())
    }

    fn end_run(&mut self) {
        if self.run_names > 0 {
            self.runs.push((self.run_start, self.run_names));
        }
        self.run_start = self.written;
        self.run_names = 0;
    }

    /// Sorts the pending names and writes them as a run; a repeat among them is returned.
    fn flush_pending(&mut self) -> Result<Option<String>> {
        let mut names = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        names.sort_unstable_by(|a, b| order(a, b));
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Ok(Some(pair[0].clone()));
        }
        for n in &names {
            self.write(n)?;
        }
        self.end_run();
        Ok(None)
    }
}

impl SeenMembers {
    /// Notes `path`; `Some(path)` back when it is a repeat found at once. Other repeats are
    /// found by [`finish`](Self::finish).
    pub(crate) fn insert(&mut self, path: &str) -> Result<Option<String>> {
        if path == MANIFEST {
            self.manifest = true;
        }
        let spill = match &mut self.spill {
            Some(s) => s,
            None => self.spill.insert(Spill::new()?),
        };
        if !self.broken {
            match self.last.as_deref().map(|last| order(last, path)) {
                None | Some(Ordering::Less) => {
                    spill.write(path)?;
                    self.last = Some(path.to_string());
                    return Ok(None);
                }
                Some(Ordering::Equal) => return Ok(Some(path.to_string())),
                Some(Ordering::Greater) => {
                    self.broken = true;
                    self.last = None;
                    spill.end_run();
                }
            }
        }
        spill.pending_bytes += path.len() + std::mem::size_of::<String>();
        spill.pending.push(path.to_string());
        if spill.pending_bytes >= RUN_BYTES {
            return spill.flush_pending();
        }
        Ok(None)
    }

    /// After the last member: a name that came twice, if any.
    pub(crate) fn finish(&mut self) -> Result<Option<String>> {
        let Some(spill) = self.spill.as_mut().filter(|_| self.broken) else {
            return Ok(None);
        };
        if let Some(repeat) = spill.flush_pending()? {
            return Ok(Some(repeat));
        }
        spill.file.flush().map_err(spill_error)?;
        let file = spill.file.get_mut();
        let mut readers = Vec::with_capacity(spill.runs.len());
        for (start, names) in &spill.runs {
            let handle = file.try_clone().map_err(spill_error)?;
            readers.push(RunReader {
                reader: BufReader::with_capacity(16 * 1024, ReadAt::new(handle, *start)),
                left: *names,
            });
        }
        // A k-way merge: the smallest head of every run in turn.
        let mut heads = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(name) = r.next_name()? {
                heads.push(Reverse(Head { name, run: i }));
            }
        }
        let mut previous: Option<String> = None;
        while let Some(Reverse(Head { name, run })) = heads.pop() {
            if previous.as_deref() == Some(name.as_str()) {
                return Ok(Some(name));
            }
            if let Some(next) = readers[run].next_name()? {
                heads.push(Reverse(Head { name: next, run }));
            }
            previous = Some(name);
        }
        Ok(None)
    }
}

struct Head {
    name: String,
    run: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        order(&self.name, &other.name).then(self.run.cmp(&other.run))
    }
}

/// Reads a shared file from its own offset (`pread`): the duplicated handles of one file
/// share a seek position, so each run keeps its own.
struct RunReader {
    reader: BufReader<ReadAt<File>>,
    left: u64,
}

impl RunReader {
    fn next_name(&mut self) -> Result<Option<String>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(spill_error)?;
        let mut name = vec![0u8; u32::from_le_bytes(len) as usize];
        self.reader.read_exact(&mut name).map_err(spill_error)?;
        String::from_utf8(name)
            .map(Some)
            .map_err(|e| spill_error(io::Error::other(e)))
    }
}

fn spill_error(e: io::Error) -> Error {
    Error::io("spooling member names to a temporary file", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeat_in(names: &[&str]) -> Option<String> {
        let mut seen = SeenMembers::default();
        for n in names {
            if let Some(r) = seen.insert(n).unwrap() {
                return Some(r);
            }
        }
        seen.finish().unwrap()
    }

    #[test]
    fn rising_names_keep_one_name_and_a_repeat_is_caught_at_once() {
        let mut seen = SeenMembers::default();
        for n in [METADATA, DUMP, "tree/00/1", "tree/ab/cd/x", MANIFEST] {
            assert_eq!(seen.insert(n).unwrap(), None);
        }
        assert!(!seen.broken && seen.manifest);
        assert_eq!(seen.finish().unwrap(), None);
        assert_eq!(
            repeat_in(&[METADATA, "tree/a", "tree/a"]),
            Some("tree/a".into())
        );
    }

    #[test]
    fn repeats_in_any_order_are_found_across_runs() {
        assert_eq!(repeat_in(&["tree/b", "tree/a", "tree/c"]), None);
        assert_eq!(
            repeat_in(&["tree/a", "tree/c", "tree/b", "tree/a"]),
            Some("tree/a".into())
        );
        assert_eq!(
            repeat_in(&["tree/z", "tree/y", "tree/x", "tree/y"]),
            Some("tree/y".into())
        );
        // Enough shuffled names for several runs, then one early name again.
        let mut names: Vec<String> = (0..300_000u32)
            .map(|i| format!("tree/{:08x}", i.wrapping_mul(2_654_435_761)))
            .collect();
        let first_run: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(repeat_in(&first_run), None);
        names.push(names[7].clone());
        let with_repeat: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(repeat_in(&with_repeat), Some(names[7].clone()));
    }

    #[test]
    fn every_spelling_is_its_own_name() {
        let spellings = [
            "tree/ab/cd/abcd0000-1111-4222-8333-444455556666",
            "tree/abcd0000-1111-4222-8333-444455556666",
            "tree/ab/cd/ABCD0000-1111-4222-8333-444455556666",
            "tree/ab/ce/abcd0000-1111-4222-8333-444455556666",
            ".metadata",
        ];
        assert_eq!(repeat_in(&spellings), None);
        let twice: Vec<&str> = spellings.iter().chain(spellings.iter()).copied().collect();
        assert!(repeat_in(&twice).is_some());
    }
}
