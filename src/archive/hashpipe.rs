//! SHA-256 of a run of members on a thread of its own. Hashing a gigabyte costs about as much
//! CPU as writing it to files; done on the thread that moves the bytes, it serialises the two.
//! Here the mover copies each chunk into a pooled buffer (a copy costs a tenth of a hash) and
//! goes on while the hashing thread catches up. Digests come back in member order.

use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes gathered before a chunk goes to the hashing thread: small members are sent whole,
/// big ones in pieces big enough to keep messages few.
const CHUNK: usize = 128 << 10;

/// Chunks in flight: the mover blocks (memory stays flat) when the hasher falls this far behind.
const IN_FLIGHT: usize = 8;

enum Message {
    Data(Vec<u8>),
    /// The current member ends: send its digest and start the next.
    End,
}

pub struct HashPipe {
    to_hasher: Option<SyncSender<Message>>,
    digests: Receiver<[u8; 32]>,
    recycled: Receiver<Vec<u8>>,
    gathering: Vec<u8>,
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
        let (to_hasher, inbox) = sync_channel::<Message>(IN_FLIGHT);
        let (digest_tx, digests) = channel();
        let (recycle, recycled) = channel::<Vec<u8>>();
        let hasher = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for message in inbox {
                    match message {
                        Message::Data(mut chunk) => {
                            hasher.update(&chunk);
                            chunk.clear();
                            let _ = recycle.send(chunk);
                        }
                        Message::End => {
                            if digest_tx.send(hasher.finalize_reset().into()).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .expect("spawning the hashing thread");
        HashPipe {
            to_hasher: Some(to_hasher),
            digests,
            recycled,
            gathering: Vec::new(),
            pending: 0,
            hasher: Some(hasher),
        }
    }

    /// Adds bytes to the current member.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.gathering.capacity() == 0 {
                self.gathering = self
                    .recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
            }
            let room = CHUNK - self.gathering.len();
            let take = room.min(data.len());
            self.gathering.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.gathering.len() == CHUNK {
                self.send_gathered();
            }
        }
    }

    fn send_gathered(&mut self) {
        if self.gathering.is_empty() {
            return;
        }
        let chunk = std::mem::take(&mut self.gathering);
        self.send(Message::Data(chunk));
    }

    fn send(&mut self, message: Message) {
        let sent = self
            .to_hasher
            .as_ref()
            .expect("the pipe is open until dropped")
            .send(message);
        // The hashing thread only stops when the pipe closes or it panicked (a bug): then
        // there is nothing to recover.
        sent.expect("the hashing thread stopped");
    }

    /// Ends the current member; its digest comes from [`next_digest`](Self::next_digest).
    pub fn end_member(&mut self) {
        self.send_gathered();
        self.send(Message::End);
        self.pending += 1;
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
        let digest = if wait {
            Some(self.digests.recv().expect("the hashing thread stopped"))
        } else {
            self.digests.try_recv().ok()
        };
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
}
