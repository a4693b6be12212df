//! Parallel gzip, as pigz does it: the stream is cut into blocks that are compressed on every
//! core at once, each into complete gzip members, and written in order. Concatenated members
//! are one valid gzip stream (RFC 1952 §2.2): `gzip -d`, `tar xzf` and every reader that follows
//! the RFC read them whole. Blocks of 1 MiB cost well under 1 % of ratio against one member.
//!
//! Members are deflated by libdeflate, which works on whole buffers, as these are, faster than
//! zlib for the same level on text and dumps (benches/stages.rs); 64 KiB segments that LZ77
//! cannot shrink are stored (too dense) or coded by zlib-rs's run-length strategy (skewed bytes,
//! nothing repeated), which skips the search for matches that are not there. Every member's header
//! carries an extra field (RFC 1952 §2.3.1.1, as BGZF does with `BC`): subfield `MX` holds the
//! member's whole length, so a reader can cut the stream into members without inflating it and
//! inflate them on every core ([`ParallelGzDecoder`]). Other readers skip the field.
//!
//! Memory stays flat: at most `3 × workers` blocks are between the writer and the output
//! (queued, compressing, or compressed and waiting for an earlier one), and their buffers
//! (input and output) are reused rather than freed, so a long archive does not fragment the
//! heap. The decoder bounds its members the same way.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Cursor, Read, Write};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use libdeflater::{CompressionLvl, Compressor, Decompressor};

pub const BLOCK: usize = 1 << 20;

/// The header of every member mxsnap writes, up to the length: deflate, FEXTRA, no mtime,
/// no extra flags, OS unknown; XLEN 8; subfield `MX` of 4 bytes.
const HEADER_PREFIX: [u8; 16] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 8, 0, b'M', b'X', 4, 0,
];
/// The prefix, then the member's length (header to trailer, u32 little-endian).
const HEADER_LEN: usize = 20;
/// CRC-32 and ISIZE.
const TRAILER_LEN: usize = 8;
/// The largest member a reader accepts as mxsnap's: a block stored, with room to spare. A
/// longer one is damage, not something to allocate for.
const MAX_MEMBER_LEN: usize = BLOCK + BLOCK / 4;

/// A job for a worker: its sequence number, its input, and the buffer for its output.
type Job = (u64, Vec<u8>, Vec<u8>);
/// The output (or the error), and the input buffer back for reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

pub struct ParallelGzEncoder<W: Write> {
    /// Taken by `finish`.
    inner: Option<W>,
    block: Vec<u8>,
    next_seq: u64,
    next_out: u64,
    ready: BTreeMap<u64, Vec<u8>>,
    /// Emptied buffers, for the next blocks (inputs) and their compressed forms (outputs).
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    in_flight: usize,
    /// Blocks dispatched but not yet written out. Counting these, not just the ones still
    /// compressing, bounds memory: a slow block (text) would otherwise let the other workers
    /// pile up any number of fast ones (stored) behind it.
    max_in_flight: usize,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    block_size: usize,
}

/// A worker's step: input, the worker's own state, the buffer to fill; the output.
type Work<S> = fn(&[u8], &mut S, Vec<u8>) -> io::Result<Vec<u8>>;

/// Starts `workers` threads that each keep a `state` (a compressor, a decompressor) and turn
/// every job's input into its output with `work`, handing the input back for reuse.
fn spawn_workers<S: 'static>(
    workers: usize,
    state: impl Fn() -> S + Send + Clone + 'static,
    work: Work<S>,
) -> (SyncSender<Job>, Receiver<Done>, Vec<JoinHandle<()>>) {
    let (job_tx, job_rx) = sync_channel::<Job>(workers);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx): (Sender<Done>, Receiver<Done>) = channel();
    let handles = (0..workers)
        .map(|_| {
            let rx = Arc::clone(&job_rx);
            let tx = done_tx.clone();
            let state = state.clone();
            std::thread::spawn(move || {
                let mut state = state();
                loop {
                    let job = rx.lock().expect("job queue").recv();
                    let Ok((seq, input, out)) = job else { break };
                    if tx
                        .send((seq, work(&input, &mut state, out), input))
                        .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    (job_tx, done_rx, handles)
}

/// Closes the job queue and waits for the workers to end.
fn stop_workers(jobs: &mut Option<SyncSender<Job>>, workers: &mut Vec<JoinHandle<()>>) {
    *jobs = None;
    for w in workers.drain(..) {
        let _ = w.join();
    }
}

/// Bytes classified at a time: one stored block's worth (a stored block holds at most 65,535).
const SEGMENT: usize = 64 * 1024;

/// Above this many bits per byte (order-0 entropy) deflate cannot gain more than about 1 %
/// through Huffman coding, and data that dense (compressed media, archives, encrypted files)
/// leaves LZ77 nothing to find either; such segments are stored, not deflated.
const STORE_ABOVE_BITS: f64 = 7.9;

/// Compresses one block into one or more complete gzip members, appended to `out`.
///
/// Segments that cannot shrink are written as stored deflate blocks instead of being run
/// through the compressor, which spends most of its time searching for matches in them for
/// nothing; the output is the same size (deflate itself falls back to stored blocks for such
/// data) at a fraction of the CPU. Likewise segments with next to nothing repeated are coded
/// with Huffman codes and runs alone. Each run of segments of one kind is a member of its own, since
/// each coder ends every stream it makes with a final block.
fn compress(block: &[u8], deflaters: &mut Deflaters, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    out.clear();
    out.reserve(block.len() / 2 + 64);
    if block.is_empty() {
        member(&[], Kind::Stored, deflaters, &mut out)?;
        return Ok(out);
    }
    // Each segment classified once, then each run of one kind made a member.
    let kinds: Vec<Kind> = block
        .chunks(SEGMENT)
        .map(|segment| match classify(segment) {
            Kind::RunLength if deflaters.level == 0 => Kind::Deflated, // libdeflate's stored-only
            kind => kind,
        })
        .collect();
    let mut start = 0;
    for run in kinds.chunk_by(|a, b| a == b) {
        let end = (start + run.len() * SEGMENT).min(block.len());
        member(&block[start..end], run[0], deflaters, &mut out)?;
        start = end;
    }
    Ok(out)
}

/// What a segment is made into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Stored blocks: too dense to shrink.
    Stored,
    /// Huffman codes and runs of one byte only (zlib's run-length strategy): skewed bytes
    /// with next to nothing repeated but runs (a tar header's zeros), where LZ77 searches at
    /// length for matches it does not find.
    RunLength,
    /// Deflated by libdeflate at the chosen level.
    Deflated,
}

fn classify(segment: &[u8]) -> Kind {
    if is_incompressible(segment) {
        Kind::Stored
    } else if few_repeats(segment) {
        Kind::RunLength
    } else {
        Kind::Deflated
    }
}

/// A worker's compressors, kept for every block it makes.
pub(crate) struct Deflaters {
    level: u32,
    lz: Compressor,
    /// zlib-rs with the run-length strategy, raw deflate: about three times libdeflate's
    /// speed on segments LZ77 cannot shrink, at the same size (benches/stages.rs).
    run_length: zlib_rs::Deflate,
}

impl Deflaters {
    pub(crate) fn new(level: u32) -> Deflaters {
        let level = level.min(9);
        Deflaters {
            level,
            lz: Compressor::new(CompressionLvl::new(level as i32).expect("levels 0 to 9 exist")),
            run_length: zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
                level: 6,
                window_bits: -15,
                strategy: zlib_rs::Strategy::Rle,
                ..Default::default()
            }),
        }
    }
}

/// Whether LZ77 would find next to nothing in a segment but runs of one byte: repeats of 8
/// bytes or more, found as a greedy matcher with one candidate per hash finds them, cover under
/// 1/64 of it. Such a segment deflates to its Huffman coding (and runs) at any level, so coding
/// it without the search costs at most that 1/64. Text, dumps and code repeat far more and stop
/// the scan early. Only every other position is looked at; a repeat an odd distance back is
/// seen at twice that distance when it recurs (periodic records), a single one not at all.
fn few_repeats(segment: &[u8]) -> bool {
    if segment.len() < 4096 {
        return false;
    }
    // Each slot keeps a tag (the hash's other bits) of the last 8 bytes that hashed there: a
    // tag that matches is a repeat (a false one once in 2^32, harmless to an estimate), found
    // without reading the earlier bytes back. Big enough that a position 32 KiB back
    // (deflate's window) is mostly still there.
    const BITS: u32 = 15;
    let mut table = [0u32; 1 << BITS];
    let limit = segment.len() / 64;
    let mut covered = 0;
    let mut i = 0;
    let words = segment.len() - 7;
    while i < words {
        let w = u64::from_le_bytes(segment[i..i + 8].try_into().expect("8 bytes"));
        if w == w.rotate_left(8) {
            // A run of one byte (a tar header's or padding's zeros): run-length coding takes
            // it, no search needed.
            i += 8;
            continue;
        }
        let h = w.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = (h >> (64 - BITS)) as usize;
        let tag = ((w.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 32) as u32) | 1;
        if std::mem::replace(&mut table[slot], tag) == tag {
            // Every other position is looked at, so half the repeats (those an odd distance
            // back) go unseen: each one seen counts for two.
            covered += 16;
            if covered > limit {
                return false;
            }
            i += 8;
        } else {
            i += 2;
        }
    }
    true
}

/// Appends one gzip member holding `data`, coded as `kind` says.
fn member(data: &[u8], kind: Kind, deflaters: &mut Deflaters, out: &mut Vec<u8>) -> io::Result<()> {
    let begin = out.len();
    out.extend_from_slice(&HEADER_PREFIX);
    out.extend_from_slice(&[0; 4]);
    if kind == Kind::Stored {
        let mut pieces = data.chunks(u16::MAX as usize).peekable();
        if pieces.peek().is_none() {
            out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]); // empty, stored, final
        }
        while let Some(piece) = pieces.next() {
            let len = piece.len() as u16;
            // BFINAL on the last piece, BTYPE = 00 (stored), padded to the byte.
            out.push(u8::from(pieces.peek().is_none()));
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(piece);
        }
    } else if kind == Kind::RunLength {
        let at = out.len();
        out.resize(at + zlib_rs::compress_bound(data.len()), 0);
        let coder = &mut deflaters.run_length;
        coder.reset();
        match coder.compress(data, &mut out[at..], zlib_rs::DeflateFlush::Finish) {
            Ok(zlib_rs::Status::StreamEnd) => {}
            other => {
                return Err(io::Error::other(format!(
                    "run-length coding a segment failed: {other:?}"
                )));
            }
        }
        out.truncate(at + coder.total_out() as usize);
    } else {
        let at = out.len();
        out.resize(at + deflaters.lz.deflate_compress_bound(data.len()), 0);
        let n = deflaters
            .lz
            .deflate_compress(data, &mut out[at..])
            .map_err(io::Error::other)?;
        out.truncate(at + n);
    }
    out.extend_from_slice(&libdeflater::crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let len = (out.len() - begin) as u32;
    out[begin + 16..begin + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Whether a segment is too dense for deflate to shrink: its order-0 entropy, from a byte
/// histogram, which costs a few percent of what deflating it would.
fn is_incompressible(segment: &[u8]) -> bool {
    // Short segments are not worth judging; deflate handles them.
    if segment.len() < 4096 {
        return false;
    }
    // Four interleaved tables avoid the store-to-load stalls of one counter per byte value.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = segment.chunks_exact(4);
    for q in &mut quads {
        counts[0][q[0] as usize] += 1;
        counts[1][q[1] as usize] += 1;
        counts[2][q[2] as usize] += 1;
        counts[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        counts[0][b as usize] += 1;
    }
    let n = segment.len() as f64;
    let bits: f64 = (0..256)
        .map(|i| counts[0][i] + counts[1][i] + counts[2][i] + counts[3][i])
        .filter(|&c| c > 0)
        .map(|c| {
            let c = c as f64;
            c * (n / c).log2()
        })
        .sum();
    bits / n > STORE_ABOVE_BITS
}

impl<W: Write> ParallelGzEncoder<W> {
    pub fn new(inner: W, level: u32, workers: usize) -> ParallelGzEncoder<W> {
        Self::with_block_size(inner, level, workers, BLOCK)
    }

    pub fn with_block_size(
        inner: W,
        level: u32,
        workers: usize,
        block_size: usize,
    ) -> ParallelGzEncoder<W> {
        // A reader refuses members longer than that.
        assert!(block_size <= BLOCK, "gzip blocks are at most {BLOCK} bytes");
        let workers = workers.max(1);
        // One set of compressors a worker: their tables (a few hundred KiB) are not
        // reallocated a thousand times a GiB.
        let (job_tx, done_rx, handles) =
            spawn_workers(workers, move || Deflaters::new(level), compress);
        ParallelGzEncoder {
            inner: Some(inner),
            block: Vec::with_capacity(block_size),
            next_seq: 0,
            next_out: 0,
            ready: BTreeMap::new(),
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
            in_flight: 0,
            max_in_flight: 3 * workers,
            jobs: Some(job_tx),
            done: done_rx,
            workers: handles,
            block_size,
        }
    }

    /// Writes out every finished block that is next in order.
    fn drain_ready(&mut self) -> io::Result<()> {
        while let Some(out) = self.ready.remove(&self.next_out) {
            self.inner.as_mut().expect("not finished").write_all(&out)?;
            self.next_out += 1;
            self.spare_outputs.push(out);
        }
        Ok(())
    }

    fn receive_one(&mut self) -> io::Result<()> {
        let done = self
            .done
            .recv()
            .map_err(|_| io::Error::other("a compression worker died"))?;
        self.accept(done)?;
        self.drain_ready()
    }

    fn accept(&mut self, (seq, result, mut input): Done) -> io::Result<()> {
        self.in_flight -= 1;
        input.clear();
        self.spare_inputs.push(input);
        self.ready.insert(seq, result?);
        Ok(())
    }

    fn dispatch(&mut self) -> io::Result<()> {
        while self.next_seq - self.next_out >= self.max_in_flight as u64 {
            self.receive_one()?;
        }
        let next = self
            .spare_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.block_size));
        let block = std::mem::replace(&mut self.block, next);
        let out = self.spare_outputs.pop().unwrap_or_default();
        self.jobs
            .as_ref()
            .expect("not finished")
            .send((self.next_seq, block, out))
            .map_err(|_| io::Error::other("the compression workers stopped"))?;
        self.next_seq += 1;
        self.in_flight += 1;
        // Write whatever is done without waiting.
        while let Ok(done) = self.done.try_recv() {
            self.accept(done)?;
        }
        self.drain_ready()
    }

    /// Compresses what is left, writes every member in order and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || self.next_seq == 0 {
            // An empty input still makes one (empty) member: a valid gzip file.
            self.dispatch()?;
        }
        while self.in_flight > 0 {
            self.receive_one()?;
        }
        stop_workers(&mut self.jobs, &mut self.workers);
        Ok(self.inner.take().expect("finished once"))
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.block_size - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == self.block_size {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        // Unfinished (an error path): stop the workers; the output is abandoned anyway.
        stop_workers(&mut self.jobs, &mut self.workers);
    }
}

/// Reads a gzip stream, inflating mxsnap's members (those with the `MX` length field) on
/// `workers` threads at once and handing the output on in order. From the first member
/// without the field (a foreign gzip, or anything appended to one of ours) the rest of the
/// stream goes through the streaming decoder, member after member, as `gzip -d` reads it.
///
/// Errors come in stream order: a member that fails to inflate, or a stream cut inside one,
/// is reported when the reader gets there, after every good byte before it.
pub struct ParallelGzDecoder<R: BufRead> {
    /// Taken when the rest of the stream goes to `streaming`.
    inner: Option<R>,
    streaming: Option<flate2::bufread::MultiGzDecoder<io::Chain<Cursor<Vec<u8>>, R>>>,
    /// What stops dispatching: the end, an error to report after the members before it,
    /// or a foreign header (its bytes) to hand to the streaming decoder.
    stopped: Option<Stop>,
    next_seq: u64,
    next_out: u64,
    /// Inflated members by sequence number, each with its size (its buffer may be longer).
    ready: BTreeMap<u64, io::Result<(Vec<u8>, usize)>>,
    spare_members: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    max_in_flight: u64,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Holds unread bytes at `pos..end`.
    current: Vec<u8>,
    pos: usize,
    end: usize,
}

enum Stop {
    End,
    Error(io::Error),
    Foreign(Vec<u8>),
}

impl<R: BufRead> ParallelGzDecoder<R> {
    pub fn new(inner: R, workers: usize) -> ParallelGzDecoder<R> {
        let workers = workers.max(1);
        let (job_tx, done_rx, handles) = spawn_workers(workers, Decompressor::new, inflate);
        ParallelGzDecoder {
            inner: Some(inner),
            streaming: None,
            stopped: None,
            next_seq: 0,
            next_out: 0,
            ready: BTreeMap::new(),
            spare_members: Vec::new(),
            spare_outputs: Vec::new(),
            max_in_flight: 3 * workers as u64,
            jobs: Some(job_tx),
            done: done_rx,
            workers: handles,
            current: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Reads members off the stream and hands them to the workers until enough are in flight
    /// or something stops it.
    fn dispatch(&mut self) {
        while self.stopped.is_none() && self.next_seq - self.next_out < self.max_in_flight {
            let inner = self.inner.as_mut().expect("not streaming yet");
            let mut member = self.spare_members.pop().unwrap_or_default();
            match read_member(inner, &mut member) {
                Ok(Next::Member) => {
                    let out = self.spare_outputs.pop().unwrap_or_default();
                    let sent = self.jobs.as_ref().expect("workers running").send((
                        self.next_seq,
                        member,
                        out,
                    ));
                    if sent.is_err() {
                        self.stopped = Some(Stop::Error(io::Error::other(
                            "the decompression workers stopped",
                        )));
                        return;
                    }
                    self.next_seq += 1;
                }
                Ok(Next::End) => self.stopped = Some(Stop::End),
                Ok(Next::Foreign) => self.stopped = Some(Stop::Foreign(member)),
                Err(e) => self.stopped = Some(Stop::Error(e)),
            }
        }
    }

    /// The next member's output, in order; `None` when no member is in flight.
    fn next_output(&mut self) -> Option<io::Result<(Vec<u8>, usize)>> {
        if self.next_out == self.next_seq {
            return None;
        }
        while !self.ready.contains_key(&self.next_out) {
            match self.done.recv() {
                Ok((seq, result, member)) => {
                    let result = result.map(|out| (out, inflated_size(&member)));
                    self.spare_members.push(member);
                    self.ready.insert(seq, result);
                }
                Err(_) => return Some(Err(io::Error::other("a decompression worker died"))),
            }
        }
        let out = self.ready.remove(&self.next_out);
        self.next_out += 1;
        out
    }
}

impl<R: BufRead> ParallelGzDecoder<R> {
    /// Makes `current` hold unread bytes, unless the stream has gone over to the streaming
    /// decoder (`Ok(true)`, nothing done) or ended (`Ok(false)`).
    fn fill_current(&mut self) -> io::Result<bool> {
        while self.pos == self.end {
            if self.streaming.is_some() {
                return Ok(true);
            }
            self.dispatch();
            match self.next_output() {
                Some(result) => {
                    let (out, size) = result.inspect_err(|_| {
                        // Nothing after a failed member is handed on.
                        self.stopped = Some(Stop::End);
                        self.next_seq = self.next_out;
                    })?;
                    let used = std::mem::replace(&mut self.current, out);
                    self.spare_outputs.push(used);
                    self.pos = 0;
                    self.end = size;
                }
                None => match self.stopped.take() {
                    Some(Stop::Error(e)) => {
                        self.stopped = Some(Stop::End);
                        return Err(e);
                    }
                    Some(Stop::Foreign(head)) => {
                        let inner = self.inner.take().expect("not streaming yet");
                        self.streaming = Some(flate2::bufread::MultiGzDecoder::new(
                            Cursor::new(head).chain(inner),
                        ));
                    }
                    Some(Stop::End) | None => {
                        self.stopped = Some(Stop::End);
                        return Ok(false);
                    }
                },
            }
        }
        Ok(true)
    }
}

impl<R: BufRead> Read for ParallelGzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.fill_current()? {
            return Ok(0);
        }
        if let Some(streaming) = self.streaming.as_mut() {
            return streaming.read(buf);
        }
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: BufRead + Send> super::codec::ChunkRead for ParallelGzDecoder<R> {
    /// A whole member's output is handed over as it is, and `chunk`'s buffer becomes a spare
    /// output buffer for the workers: no copy.
    fn next_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<usize> {
        if !self.fill_current()? {
            return Ok(0);
        }
        if let Some(streaming) = self.streaming.as_mut() {
            return super::codec::fill_chunk(streaming, chunk);
        }
        let n = self.end - self.pos;
        if self.pos == 0 {
            std::mem::swap(chunk, &mut self.current);
            // `current` now holds the caller's old buffer, with nothing unread in it.
            self.end = 0;
        } else {
            chunk.clear();
            chunk.extend_from_slice(&self.current[self.pos..self.end]);
            self.pos = self.end;
        }
        Ok(n)
    }
}

impl<R: BufRead> Drop for ParallelGzDecoder<R> {
    fn drop(&mut self) {
        stop_workers(&mut self.jobs, &mut self.workers);
    }
}

enum Next {
    /// A whole member of ours is in the buffer.
    Member,
    /// The stream ended between members.
    End,
    /// The next bytes (in the buffer) are not a member of ours.
    Foreign,
}

/// Reads the next member into the start of `member` when its header is mxsnap's (the header
/// gives its length: [`member_len`]). `member` is a recycled buffer, grown once to the largest
/// member and never shortened: its old bytes are overwritten, never zeroed first (members'
/// lengths vary, and growing a buffer zeroes what it adds: a gigabyte of archive would
/// otherwise be zeroed once more as it is read).
fn read_member(inner: &mut impl BufRead, member: &mut Vec<u8>) -> io::Result<Next> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    let foreign = |member: &mut Vec<u8>, head: &[u8]| {
        member.clear();
        member.extend_from_slice(head);
        Ok(Next::Foreign)
    };
    while got < HEADER_LEN {
        let available = inner.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let n = available.len().min(HEADER_LEN - got);
        head[got..got + n].copy_from_slice(&available[..n]);
        inner.consume(n);
        got += n;
        let known = got.min(HEADER_PREFIX.len());
        if head[..known] != HEADER_PREFIX[..known] {
            return foreign(member, &head[..got]);
        }
    }
    if got == 0 {
        member.clear();
        return Ok(Next::End);
    }
    if got < HEADER_LEN {
        return foreign(member, &head[..got]); // cut in the header: the streaming decoder says so
    }
    let len = u32::from_le_bytes(head[16..HEADER_LEN].try_into().expect("4 bytes")) as usize;
    if !(HEADER_LEN + TRAILER_LEN..=MAX_MEMBER_LEN).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a gzip member gives its length as {len} bytes, which mxsnap never writes"),
        ));
    }
    if member.len() < len {
        member.resize(MAX_MEMBER_LEN, 0);
    }
    member[..HEADER_LEN].copy_from_slice(&head);
    inner
        .read_exact(&mut member[HEADER_LEN..len])
        .map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), "the gzip stream ends inside a member")
            } else {
                e
            }
        })?;
    Ok(Next::Member)
}

/// The length of the member at the start of `buf`, from its header (checked by
/// [`read_member`]).
fn member_len(buf: &[u8]) -> usize {
    u32::from_le_bytes(buf[16..HEADER_LEN].try_into().expect("4 bytes")) as usize
}

/// The inflated size the trailer of the member at the start of `buf` gives.
fn inflated_size(buf: &[u8]) -> usize {
    let len = member_len(buf);
    u32::from_le_bytes(buf[len - 4..len].try_into().expect("4 bytes")) as usize
}

/// Inflates the member at the start of `member` into the start of `out`, checking its length
/// and CRC-32. `out` comes back at least [`inflated_size`] long: a recycled buffer is grown to
/// a whole block once and never shortened, so it is not zeroed again (members' sizes vary).
fn inflate(member: &[u8], inflater: &mut Decompressor, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("gzip member: {what}"));
    let member = &member[..member_len(member)];
    let trailer = &member[member.len() - TRAILER_LEN..];
    let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) as usize;
    if size > BLOCK {
        return Err(bad("its trailer gives a size larger than mxsnap writes"));
    }
    if out.len() < size {
        out.resize(BLOCK, 0);
    }
    let n = inflater
        .deflate_decompress(
            &member[HEADER_LEN..member.len() - TRAILER_LEN],
            &mut out[..size],
        )
        .map_err(|_| bad("corrupt deflate data"))?;
    if n != size {
        return Err(bad("its length does not match its trailer"));
    }
    if libdeflater::crc32(&out[..size]) != crc {
        return Err(bad("CRC-32 mismatch"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Text-like: pseudo-random letters, about 2:1 compressible, never repeating.
    fn data(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"eeeettaaoinshrdlu  \n"[(x % 20) as usize]
            })
            .collect()
    }

    const SMALL: usize = 64 * 1024;

    #[test]
    fn members_decode_as_one_stream_in_order() {
        for n in [0, 1, 1000, SMALL, SMALL + 1, 5 * SMALL + 12345] {
            let input = data(n);
            let mut enc = ParallelGzEncoder::with_block_size(Vec::new(), 6, 3, SMALL);
            for chunk in input.chunks(77_777) {
                enc.write_all(chunk).unwrap();
            }
            let gz = enc.finish().unwrap();
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, input, "{n} bytes");
        }
    }

    #[test]
    fn ratio_is_close_to_one_member() {
        let input = data(BLOCK + BLOCK / 2);
        let mut enc = ParallelGzEncoder::new(Vec::new(), 6, 2);
        enc.write_all(&input).unwrap();
        let parallel = enc.finish().unwrap().len() as f64;
        // zlib's level 6, one member, as gzip and pigz -p1 write it.
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        one.write_all(&input).unwrap();
        let single = one.finish().unwrap().len() as f64;
        assert!(parallel / single < 1.01, "{parallel} vs {single}");
    }

    /// Random bytes: what compressed media and archives look like to deflate.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Prose of a small vocabulary: repeats of every length, as text and dumps have.
    fn words(n: usize) -> Vec<u8> {
        let vocabulary = [
            "backup ",
            "restore ",
            "the ",
            "database ",
            "files ",
            "of ",
            "snapshot ",
            "app ",
            "environment ",
            "and ",
            "stream ",
            "archive\n",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(vocabulary[(x % 12) as usize].as_bytes());
        }
        out.truncate(n);
        out
    }

    #[test]
    fn segments_are_classified_by_density_and_repeats() {
        assert_eq!(classify(&noise(SEGMENT, 3)), Kind::Stored);
        assert_eq!(classify(&data(SEGMENT)), Kind::RunLength);
        assert_eq!(classify(&words(SEGMENT)), Kind::Deflated);
        // Runs of one byte are run-length coded (at distance 1) without a search.
        assert_eq!(classify(&vec![0u8; SEGMENT]), Kind::RunLength);
        // Skewed bytes with a repeated stretch of a tenth: worth LZ77.
        let mut mixed = data(SEGMENT);
        let (head, tail) = mixed.split_at_mut(SEGMENT / 2);
        tail[..SEGMENT / 10].copy_from_slice(&head[..SEGMENT / 10]);
        assert_eq!(classify(&mixed), Kind::Deflated);
        // Records of an odd length repeated: seen at twice the distance.
        let record = data(333);
        let periodic: Vec<u8> = record.iter().copied().cycle().take(SEGMENT).collect();
        assert_eq!(classify(&periodic), Kind::Deflated);
        // Short ones are left to deflate.
        assert_eq!(classify(&data(4000)), Kind::Deflated);
    }

    #[test]
    fn run_length_coded_segments_decode_and_are_as_small_as_deflated() {
        let mut input = data(3 * SEGMENT + 123);
        input.extend(words(SEGMENT));
        input.extend(data(2 * SEGMENT));
        let ours = compress(&input, &mut Deflaters::new(6), Vec::new()).unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&ours[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, input);
        assert_eq!(parallel_decode(&ours).unwrap(), input);
        // Against libdeflate at level 6 over the same runs: within 1 %.
        let mut lz = Compressor::new(CompressionLvl::new(6).unwrap());
        let mut buf = vec![0u8; lz.deflate_compress_bound(input.len())];
        let whole = lz.deflate_compress(&input, &mut buf).unwrap() as f64;
        assert!(
            (ours.len() as f64) < whole * 1.01,
            "{} vs {whole}",
            ours.len()
        );
        if let Ok(mut child) = std::process::Command::new("gzip")
            .args(["-t", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            child.stdin.take().unwrap().write_all(&ours).unwrap();
            assert!(child.wait().unwrap().success(), "gzip -t refused it");
        }
        // Level 0 stores: nothing is run-length coded there.
        let stored = compress(&input, &mut Deflaters::new(0), Vec::new()).unwrap();
        assert!(
            stored.len() > input.len(),
            "{} of {}",
            stored.len(),
            input.len()
        );
    }

    #[test]
    fn dense_segments_are_stored_and_the_stream_still_decodes() {
        // Text, noise, text, a short noise tail: runs of both kinds and odd lengths.
        let mut input = data(100_000);
        input.extend(noise(3 * SEGMENT + 999, 7));
        input.extend(data(SEGMENT + 5));
        input.extend(noise(5000, 9));
        let member = compress(&input, &mut Deflaters::new(6), Vec::new()).unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&member[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, input);
        assert_eq!(parallel_decode(&member).unwrap(), input);
        // No bigger than deflating everything: deflate stores noise too, only slower.
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        plain.write_all(&input).unwrap();
        let plain = plain.finish().unwrap().len() as f64;
        let ours = member.len() as f64;
        assert!(ours / plain < 1.005, "{ours} vs {plain}");
        // And GNU gzip agrees it is a valid stream.
        if let Ok(mut child) = std::process::Command::new("gzip")
            .args(["-t", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            child.stdin.take().unwrap().write_all(&member).unwrap();
            assert!(
                child.wait().unwrap().success(),
                "gzip -t rejected the member"
            );
        }
    }

    #[test]
    fn entropy_tells_noise_from_text() {
        assert!(is_incompressible(&noise(SEGMENT, 3)));
        assert!(!is_incompressible(&data(SEGMENT)));
        assert!(!is_incompressible(&vec![0u8; SEGMENT]));
        assert!(
            !is_incompressible(&noise(100, 3)),
            "short segments are left to deflate"
        );
    }

    fn ours(input: &[u8], block: usize) -> Vec<u8> {
        let mut enc = ParallelGzEncoder::with_block_size(Vec::new(), 6, 2, block);
        enc.write_all(input).unwrap();
        enc.finish().unwrap()
    }

    fn foreign(input: &[u8]) -> Vec<u8> {
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        one.write_all(input).unwrap();
        one.finish().unwrap()
    }

    /// Decodes through short reads, as a pipe or a slow network would deliver the stream.
    fn parallel_decode(gz: &[u8]) -> io::Result<Vec<u8>> {
        let short = crate::archive::codec::tests::ShortReader::new(gz, 11);
        let mut d = ParallelGzDecoder::new(io::BufReader::with_capacity(100, short), 3);
        let mut out = Vec::new();
        d.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn members_inflate_in_parallel_in_order() {
        for n in [0, 1, 1000, SMALL, SMALL + 1, 9 * SMALL + 12345] {
            let mut input = data(n);
            // Noise in the middle: stored members among deflated ones.
            if n > 2 * SMALL {
                input[SMALL..2 * SMALL].copy_from_slice(&noise(SMALL, 5));
            }
            assert_eq!(
                parallel_decode(&ours(&input, SMALL)).unwrap(),
                input,
                "{n} bytes"
            );
        }
    }

    /// Buffers are reused at their longest and only their start holds a member's bytes: members
    /// of many sizes (text and noise cut where the kind changes) must come out whole, whether
    /// read or handed over as chunks whose buffers come back longer than what they held.
    #[test]
    fn members_of_varying_sizes_decode_through_reused_buffers() {
        let mut input = Vec::new();
        for (i, n) in [SMALL, 3 * SMALL, 100, 2 * SMALL + 7, SMALL / 2, 5 * SMALL]
            .into_iter()
            .enumerate()
        {
            input.extend_from_slice(&if i % 2 == 0 {
                data(n)
            } else {
                noise(n, i as u64)
            });
        }
        let gz = ours(&input, 4 * SMALL);
        assert_eq!(parallel_decode(&gz).unwrap(), input);

        use crate::archive::codec::ChunkRead;
        let mut d = ParallelGzDecoder::new(io::BufReader::new(&gz[..]), 2);
        let (mut out, mut chunk) = (Vec::new(), vec![0xAA; 3 * BLOCK]);
        loop {
            let n = d.next_chunk(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(out, input);
    }

    #[test]
    fn foreign_members_go_through_the_streaming_decoder() {
        let a = data(3 * SMALL + 7);
        let b = data(SMALL / 3);
        // Foreign alone; ours then foreign; foreign then ours (read by the streaming decoder,
        // which skips the extra field like any reader).
        assert_eq!(parallel_decode(&foreign(&a)).unwrap(), a);
        let mut mixed = ours(&a, SMALL);
        mixed.extend(foreign(&b));
        assert_eq!(parallel_decode(&mixed).unwrap(), [&a[..], &b[..]].concat());
        let mut mixed = foreign(&b);
        mixed.extend(ours(&a, SMALL));
        assert_eq!(parallel_decode(&mixed).unwrap(), [&b[..], &a[..]].concat());
    }

    #[test]
    fn damage_is_reported_after_the_good_members_before_it() {
        let input = data(6 * SMALL);
        let good = ours(&input, SMALL);
        // Cut inside the last member, or inside a header.
        for cut in [good.len() - 3, good.len() - 100, 10] {
            let e = parallel_decode(&good[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
        }
        // A flipped byte in the fourth member: the three before it come out, then the error.
        let mut flipped = good.clone();
        let mut at = 0;
        for _ in 0..3 {
            at += u32::from_le_bytes(flipped[at + 16..at + 20].try_into().unwrap()) as usize;
        }
        flipped[at + HEADER_LEN + 50] ^= 0x10;
        let short = crate::archive::codec::tests::ShortReader::new(&flipped[..], 3);
        let mut d = ParallelGzDecoder::new(io::BufReader::new(short), 2);
        let mut out = Vec::new();
        let e = d.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert_eq!(out, input[..3 * SMALL]);
        assert!(
            d.read(&mut [0u8; 10]).unwrap() == 0,
            "nothing after the failed member"
        );
        // A length no member of ours has, and rubbish after the last member.
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = parallel_decode(&huge).unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"not gzip at all");
        assert!(
            parallel_decode(&trailing).is_err(),
            "rubbish after the members"
        );
        // A trailer whose size or CRC is wrong.
        for back in [1, 5] {
            let mut bad = good.clone();
            let i = bad.len() - back;
            bad[i] ^= 0x01;
            assert_eq!(
                parallel_decode(&bad).unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
    }

    #[test]
    fn gnu_gzip_reads_our_members() {
        let mut input = data(5 * SMALL + 3);
        input.extend(noise(2 * SMALL, 1));
        let gz = ours(&input, SMALL);
        let Ok(mut child) = std::process::Command::new("gzip")
            .args(["-dc", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return; // no gzip here: the RFC tests above stand
        };
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&gz).unwrap());
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(out.status.success(), "gzip -d refused our members");
        assert_eq!(out.stdout, input);
    }
}
