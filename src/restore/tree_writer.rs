//! Creates extracted files on a thread of its own.
//!
//! Extraction is a chain: decompress, walk the tar and hash, create and write each file. The
//! last link is mostly kernel time, and on a filesystem whose metadata is not cached it also
//! waits on the disk: a new folder or file reads its group's bitmaps and inode table first (a
//! 1 GiB store of 18,899 files in ~16,900 folders blocked on such reads ~2,200 times). Done on
//! the walking thread, those waits stalled the whole chain. Here the walking thread hands each
//! file's bytes over in chunks, in order, to one writer thread; a bounded queue and recycled
//! buffers keep memory flat. (Three writers, each taking whole folders, measured no faster,
//! with more system time.)

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// Bytes handed over at a time: the bytes of many small files, or a piece of a big one.
const CHUNK: usize = 512 * 1024;
/// Chunks queued for the writer (with two in hand: 9 MiB at most). A store's folders are mostly
/// new, and a new folder can wait on a read of its block group's bitmaps (about 0.5 ms, over a
/// thousand times in the 1 GiB bench): the queue lets decompression and hashing go on
/// meanwhile.
const QUEUE: usize = 16;
/// Files begun or ended in one chunk at most, so a chunk of tiny files is not held back long.
const MAX_PIECES: usize = 1024;

/// The bytes of one file, or of one part of it, in a chunk.
struct Piece {
    /// Set on a file's first piece: the file to create.
    create: Option<PathBuf>,
    /// Where the piece ends in the chunk; it starts where the one before ends.
    end: usize,
    /// Ends the file.
    last: bool,
}

/// A buffer of `CHUNK` bytes (its length, always: a recycled buffer is never zeroed again)
/// and the pieces in use of it.
struct Chunk {
    buf: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Chunk {
    fn used(&self) -> usize {
        self.pieces.last().map_or(0, |p| p.end)
    }
}

pub struct TreeWriter {
    queue: Option<SyncSender<Chunk>>,
    spare: Receiver<Chunk>,
    gathering: Option<Chunk>,
    writer: Option<JoinHandle<Result<()>>>,
}

impl TreeWriter {
    pub fn new() -> TreeWriter {
        let (queue, chunks) = sync_channel::<Chunk>(QUEUE);
        let (give_back, spare) = channel::<Chunk>();
        let writer = std::thread::Builder::new()
            .name("tree-writer".into())
            .spawn(move || write_files(chunks, give_back))
            .expect("spawning the tree writer thread");
        TreeWriter {
            queue: Some(queue),
            spare,
            gathering: None,
            writer: Some(writer),
        }
    }

    /// Queues `path` (a new file; its folder is made when missing) with all of `data`.
    /// Returns the bytes read. The file is written later, with the files queued after it
    /// (at the latest by `finish`); a failure of an earlier file surfaces here or in `finish`.
    pub fn write_file(&mut self, path: PathBuf, data: &mut dyn Read) -> Result<u64> {
        let mut create = Some(path);
        let mut total = 0u64;
        loop {
            let mut chunk = match self.gathering.take() {
                Some(c) if c.used() < CHUNK && c.pieces.len() < MAX_PIECES => c,
                Some(full) => {
                    self.send(full)?;
                    self.fresh_chunk()
                }
                None => self.fresh_chunk(),
            };
            let used = chunk.used();
            let len = crate::archive::codec::read_full(data, &mut chunk.buf[used..])
                .map_err(|e| Error::reading("reading the archive", e))?;
            total += len as u64;
            // Only the end of `data` leaves room unfilled.
            let last = used + len < CHUNK;
            chunk.pieces.push(Piece {
                create: create.take(),
                end: used + len,
                last,
            });
            self.gathering = Some(chunk);
            if last {
                return Ok(total);
            }
        }
    }

    fn fresh_chunk(&mut self) -> Chunk {
        self.spare.try_recv().unwrap_or_else(|_| Chunk {
            buf: vec![0u8; CHUNK],
            pieces: Vec::new(),
        })
    }

    fn send(&mut self, chunk: Chunk) -> Result<()> {
        let sent = self.queue.as_ref().map(|q| q.send(chunk));
        if matches!(sent, Some(Ok(()))) {
            return Ok(());
        }
        // The writer has stopped: its error says why.
        Err(self
            .stop()
            .err()
            .unwrap_or_else(|| Error::environment("the file writer thread stopped early")))
    }

    /// Writes what is gathered, then waits until every queued file is written and closed.
    pub fn finish(mut self) -> Result<()> {
        if let Some(chunk) = self.gathering.take() {
            self.send(chunk)?;
        }
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        drop(self.queue.take());
        match self.writer.take() {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(Error::environment("the file writer thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Default for TreeWriter {
    fn default() -> Self {
        TreeWriter::new()
    }
}

impl Drop for TreeWriter {
    /// Nothing is written after the writer is dropped: a failed restore removes the staging
    /// tree next, and no file may appear in it afterwards. What was gathered and not sent is
    /// dropped.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_files(chunks: Receiver<Chunk>, give_back: Sender<Chunk>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Members come sorted, so most share the previous one's folder: create each once.
    let mut last_dir: Option<PathBuf> = None;
    let mut open: Option<(File, PathBuf)> = None;
    for mut chunk in chunks {
        let mut start = 0;
        for piece in chunk.pieces.drain(..) {
            if let Some(path) = piece.create {
                if let Some(parent) = path.parent() {
                    if last_dir.as_deref() != Some(parent) {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
                        last_dir = Some(parent.to_path_buf());
                    }
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| {
                        // Members of one name are refused by the walk, out of order only at
                        // its end: the staging tree, which starts empty, sees the repeat first.
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            let name = path.file_name().unwrap_or_default().to_string_lossy();
                            Error::corrupt(format!(
                                "a member for file {name} appears twice; refusing an ambiguous \
                                 archive"
                            ))
                        } else {
                            Error::io(format!("creating {}", path.display()), e)
                        }
                    })?;
                open = Some((file, path));
            }
            let Some((file, path)) = open.as_mut() else {
                return Err(Error::environment("file data came before its file"));
            };
            file.write_all(&chunk.buf[start..piece.end])
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            start = piece.end;
            if piece.last {
                open = None;
            }
        }
        let _ = give_back.send(chunk);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_every_size_arrive_whole_and_in_their_folders() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TreeWriter::new();
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7];
        for (i, &size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            let path = dir.path().join(format!("a{}/b/f{i}", i % 2));
            assert_eq!(w.write_file(path, &mut &data[..]).unwrap(), size as u64);
        }
        w.finish().unwrap();
        for (i, &size) in sizes.iter().enumerate() {
            let want: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
            let got = std::fs::read(dir.path().join(format!("a{}/b/f{i}", i % 2))).unwrap();
            assert_eq!(got, want, "file {i} of {size} bytes");
        }
    }

    /// Small files share chunks: more of them than a chunk takes pieces, sizes that end
    /// files at and across chunk boundaries, big files between them.
    #[test]
    fn files_packed_into_shared_chunks_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TreeWriter::new();
        let size = |i: usize| match i % 500 {
            7 => 2 * CHUNK + 3,
            250 => CHUNK - 1000,
            _ => (i * 37) % 700,
        };
        let content = |i: usize| -> Vec<u8> { (0..size(i)).map(|b| (b + 3 * i) as u8).collect() };
        let files = 3 * MAX_PIECES;
        for i in 0..files {
            let path = dir.path().join(format!("{:02}/{i}", i / 100));
            assert_eq!(
                w.write_file(path, &mut &content(i)[..]).unwrap(),
                size(i) as u64
            );
        }
        w.finish().unwrap();
        for i in 0..files {
            let got = std::fs::read(dir.path().join(format!("{:02}/{i}", i / 100))).unwrap();
            assert!(got == content(i), "file {i} of {} bytes", size(i));
        }
    }

    #[test]
    fn a_failure_on_the_writer_thread_reaches_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken"), b"x").unwrap();
        let mut w = TreeWriter::new();
        let mut failed = None;
        // The first file fails to be created (it exists); later calls or finish say so.
        for i in 0..100 {
            let name = if i == 0 {
                "taken".to_string()
            } else {
                format!("f{i}")
            };
            if let Err(e) = w.write_file(dir.path().join(name), &mut &b"data"[..]) {
                failed = Some(e);
                break;
            }
        }
        let err = match failed {
            Some(e) => e,
            None => w.finish().unwrap_err(),
        };
        assert!(err.to_string().contains("taken"), "{err}");
    }
}
