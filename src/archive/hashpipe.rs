//! SHA-256 of a run of members on a thread of its own. Hashing a gigabyte costs about as much
//! CPU as writing it to files; done on the thread that moves the bytes, it serialises the two.
//! Here the mover copies each chunk into a pooled buffer (a copy costs a tenth of a hash) and
//! goes on while the hashing thread catches up. Digests come back in member order.
//!
//! Small members travel together: a chunk holds the bytes of as many members as fit, with the
//! offsets where each ends, and its digests come back as one batch. One message a member cost
//! two thread wake-ups a file, which with a million small files was a large part of the work.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes gathered before a chunk goes to the hashing thread: small members are sent whole,
/// big ones in pieces big enough to keep messages few.
const CHUNK: usize = 128 << 10;

/// Members ended in one chunk at most, so digests of small files do not lag far behind.
const MAX_ENDS: usize = 256;

/// Chunks in flight: the mover blocks (memory stays flat) when the hasher falls this far behind.
const IN_FLIGHT: usize = 8;

/// Bytes of the current members, and the offsets in them where members end.
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

pub struct HashPipe {
    to_hasher: Option<SyncSender<Chunk>>,
    digests: Receiver<Vec<[u8; 32]>>,
    recycled: Receiver<Chunk>,
    gathering: Chunk,
    /// Digests received and not yet taken.
    ready: VecDeque<[u8; 32]>,
    /// Members ended whose digests have not been taken yet.
    pending: usize,
    hasher: Option<JoinHandle<()>>,
}

impl Default for HashPipe {
    fn default() -> Self {
        Self::new()
    }
}

impl HashPipe {
    pub fn new() -> HashPipe {
        let (to_hasher, inbox) = sync_channel::<Chunk>(IN_FLIGHT);
        let (digest_tx, digests) = channel();
        let (recycle, recycled) = channel::<Chunk>();
        let hasher = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for mut chunk in inbox {
                    let mut start = 0;
                    let mut batch = Vec::with_capacity(chunk.ends.len());
                    for &end in &chunk.ends {
                        hasher.update(&chunk.bytes[start..end]);
                        batch.push(hasher.finalize_reset().into());
                        start = end;
                    }
                    hasher.update(&chunk.bytes[start..]);
                    if !batch.is_empty() && digest_tx.send(batch).is_err() {
                        return;
                    }
                    chunk.bytes.clear();
                    chunk.ends.clear();
                    let _ = recycle.send(chunk);
                }
            })
            .expect("spawning the hashing thread");
        HashPipe {
            to_hasher: Some(to_hasher),
            digests,
            recycled,
            gathering: Chunk {
                bytes: Vec::new(),
                ends: Vec::new(),
            },
            ready: VecDeque::new(),
            pending: 0,
            hasher: Some(hasher),
        }
    }

    /// Adds bytes to the current member.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.gathering.bytes.capacity() == 0 {
                self.gathering.bytes.reserve_exact(CHUNK);
            }
            let room = CHUNK - self.gathering.bytes.len();
            let take = room.min(data.len());
            self.gathering.bytes.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.gathering.bytes.len() == CHUNK {
                self.send_gathered();
            }
        }
    }

    fn send_gathered(&mut self) {
        if self.gathering.bytes.is_empty() && self.gathering.ends.is_empty() {
            return;
        }
        let next = self.recycled.try_recv().unwrap_or_else(|_| Chunk {
            bytes: Vec::with_capacity(CHUNK),
            ends: Vec::with_capacity(MAX_ENDS),
        });
        let chunk = std::mem::replace(&mut self.gathering, next);
        let sent = self
            .to_hasher
            .as_ref()
            .expect("the pipe is open until dropped")
            .send(chunk);
        // The hashing thread only stops when the pipe closes or it panicked (a bug): then
        // there is nothing to recover.
        sent.expect("the hashing thread stopped");
    }

    /// Ends the current member; its digest comes from [`next_digest`](Self::next_digest).
    pub fn end_member(&mut self) {
        self.gathering.ends.push(self.gathering.bytes.len());
        self.pending += 1;
        if self.gathering.ends.len() == MAX_ENDS {
            self.send_gathered();
        }
    }

    /// Members ended whose digests have not been taken.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The digest of the oldest ended member not yet taken: waits for it when `wait`, else
    /// `None` while it is not ready (or none is pending).
    pub fn next_digest(&mut self, wait: bool) -> Option<[u8; 32]> {
        if self.pending == 0 {
            return None;
        }
        if self.ready.is_empty() {
            while let Ok(batch) = self.digests.try_recv() {
                self.ready.extend(batch);
            }
        }
        if self.ready.is_empty() && wait {
            // The member may still be in the chunk being gathered.
            self.send_gathered();
            let batch = self.digests.recv().expect("the hashing thread stopped");
            self.ready.extend(batch);
        }
        let digest = self.ready.pop_front();
        if digest.is_some() {
            self.pending -= 1;
        }
        digest
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        drop(self.to_hasher.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_back_in_member_order() {
        let members: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"abc".to_vec(),
            (0..3 * CHUNK + 17).map(|i| (i * 7) as u8).collect(),
            vec![1u8; CHUNK],
        ];
        let mut pipe = HashPipe::new();
        for m in &members {
            // Fed in uneven pieces, as reads return them.
            for piece in m.chunks(1000.max(m.len() / 3 + 1)) {
                pipe.update(piece);
            }
            pipe.end_member();
        }
        assert_eq!(pipe.pending(), members.len());
        for m in &members {
            let got = pipe.next_digest(true).unwrap();
            assert_eq!(got, <[u8; 32]>::from(Sha256::digest(m)));
        }
        assert_eq!(pipe.next_digest(true), None);
        assert_eq!(pipe.next_digest(false), None);
    }

    #[test]
    fn many_small_members_batch_and_a_wait_never_hangs() {
        let mut pipe = HashPipe::new();
        let mut expected = VecDeque::new();
        let mut got = Vec::new();
        for i in 0..(3 * MAX_ENDS + 7) {
            let m: Vec<u8> = (0..(i % 50)).map(|b| (b * i) as u8).collect();
            pipe.update(&m);
            pipe.end_member();
            expected.push_back(<[u8; 32]>::from(Sha256::digest(&m)));
            // Taken as the writer does: whatever is ready, now and then all of it.
            while let Some(d) = pipe.next_digest(i % 100 == 99) {
                got.push(d);
            }
        }
        while let Some(d) = pipe.next_digest(true) {
            got.push(d);
        }
        assert_eq!(got, Vec::from(expected));
        assert_eq!(pipe.pending(), 0);
    }
}
