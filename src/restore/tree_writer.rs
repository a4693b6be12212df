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

/// Bytes handed over at a time: a whole file for most of a store's files.
const CHUNK: usize = 512 * 1024;
/// Chunks queued for the writer (with two in hand: 5 MiB at most).
const QUEUE: usize = 8;

struct Chunk {
    /// Set on a file's first chunk: the file to create.
    create: Option<PathBuf>,
    buf: Vec<u8>,
    /// Bytes of `buf` in use; fewer than `CHUNK` ends the file (an empty chunk, when its size
    /// is a multiple of `CHUNK`).
    len: usize,
}

pub struct TreeWriter {
    queue: Option<SyncSender<Chunk>>,
    spare: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<Result<()>>>,
}

impl TreeWriter {
    pub fn new() -> TreeWriter {
        let (queue, chunks) = sync_channel::<Chunk>(QUEUE);
        let (give_back, spare) = channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("tree-writer".into())
            .spawn(move || write_files(chunks, give_back))
            .expect("spawning the tree writer thread");
        TreeWriter {
            queue: Some(queue),
            spare,
            writer: Some(writer),
        }
    }

    /// Queues `path` (a new file; its folder is made when missing) with all of `data`.
    /// Returns the bytes read. A failure of an earlier file surfaces here or in `finish`.
    pub fn write_file(&mut self, path: PathBuf, data: &mut dyn Read) -> Result<u64> {
        let mut create = Some(path);
        let mut total = 0u64;
        loop {
            let mut buf = self.spare.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            let len = crate::archive::codec::read_full(data, &mut buf)
                .map_err(|e| Error::reading("reading the archive", e))?;
            total += len as u64;
            let chunk = Chunk {
                create: create.take(),
                buf,
                len,
            };
            let sent = self.queue.as_ref().map(|q| q.send(chunk));
            if !matches!(sent, Some(Ok(()))) {
                // The writer has stopped: its error says why.
                return Err(self.stop().err().unwrap_or_else(|| {
                    Error::environment("the file writer thread stopped early")
                }));
            }
            if len < CHUNK {
                return Ok(total);
            }
        }
    }

    /// Waits until every queued file is written and closed.
    pub fn finish(mut self) -> Result<()> {
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
    /// tree next, and no file may appear in it afterwards.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_files(chunks: Receiver<Chunk>, give_back: Sender<Vec<u8>>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    // Members come sorted, so most share the previous one's folder: create each once.
    let mut last_dir: Option<PathBuf> = None;
    let mut open: Option<(File, PathBuf)> = None;
    for chunk in chunks {
        if let Some(path) = chunk.create {
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
                    // Members of one name are refused by the walk, out of order only at its
                    // end: the staging tree, which starts empty, sees the repeat first.
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
        file.write_all(&chunk.buf[..chunk.len])
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        if chunk.len < CHUNK {
            open = None;
        }
        let _ = give_back.send(chunk.buf);
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
