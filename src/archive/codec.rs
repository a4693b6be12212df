//! The outer compression: encoders for writing, decoders for reading, both streaming.

use std::io::{self, BufRead, Read, Write};

use super::Compression;

/// Big enough to keep syscalls and codec calls few; small enough to keep memory flat.
pub const IO_BUFFER: usize = 1 << 20;

/// zstd's multi-threaded job size.
const ZSTD_JOB: u32 = 2 << 20;

/// Compression threads: one per core.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A compressing writer. It must be [`finish`](Encoder::finish)ed: the codecs write their
/// trailers there, and a dropped encoder leaves a cut stream behind.
pub enum Encoder<W: Write> {
    Gzip(super::pgzip::ParallelGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(inner: W, compression: Compression, level: i32) -> io::Result<Encoder<W>> {
        Self::with_workers(inner, compression, level, workers())
    }

    /// An encoder on `workers` threads (zstd: on the caller's thread when 1).
    pub fn with_workers(
        inner: W,
        compression: Compression,
        level: i32,
        workers: usize,
    ) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::Gzip => Encoder::Gzip(super::pgzip::ParallelGzEncoder::new(
                inner,
                level.clamp(0, 9) as u32,
                workers,
            )),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, level)?;
                if level == 3 {
                    // The default level, tuned (benches/stages.rs `zstd_sweep`, and the
                    // whole-store runs in the README): matches of 6 bytes or more and tables
                    // of level 2's size. Skewed text that repeats nothing compresses about 1.4
                    // times as fast and 7 % smaller, a dump a little smaller, source code under
                    // 1 % larger at the same speed.
                    use zstd::stream::raw::CParameter;
                    enc.set_parameter(CParameter::MinMatch(6))?;
                    enc.set_parameter(CParameter::HashLog(16))?;
                    enc.set_parameter(CParameter::ChainLog(15))?;
                }
                // A content checksum per frame lets a reader tell a flipped byte from data.
                enc.include_checksum(true)?;
                let workers = workers as u32;
                if workers > 1 {
                    enc.multithread(workers)?;
                    // Smaller jobs than zstd's default (4 windows) keep memory under our
                    // 100 MiB ceiling with no measurable loss of ratio at level 3.
                    enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                }
                Encoder::Zstd(enc)
            }
            Compression::None => Encoder::Plain(inner),
        })
    }

    /// Writes the codec's trailer and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Plain(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// A decompressed stream that can hand over its next bytes as a whole buffer. A decoder that
/// already holds its output in buffers of its own (the parallel gzip decoder) gives them away
/// instead of copying them: a gigabyte of archive is otherwise copied once more, which cost
/// about a twentieth of a restore's CPU.
pub trait ChunkRead: Read + Send {
    /// Puts the next bytes of the stream at the start of `chunk`, whose old contents are
    /// dropped and whose buffer may be swapped for another (hand the used ones back for reuse,
    /// at their whole length); returns how many, 0 at the end. The chunk may be longer than
    /// that: buffers keep their length so that reusing one never zeroes it again.
    fn next_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<usize>;
}

/// A decompressed stream being read: see [`decoder`].
pub type Decoded<'a> = Box<dyn ChunkRead + 'a>;

/// Any reader as a [`ChunkRead`] that copies into the chunk.
pub struct Copied<R>(pub R);

impl<R: Read> Read for Copied<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Send> ChunkRead for Copied<R> {
    fn next_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<usize> {
        fill_chunk(&mut self.0, chunk)
    }
}

/// Reads up to `IO_BUFFER` bytes of `r` into the start of `chunk`; returns how many, 0 at the
/// end.
pub(crate) fn fill_chunk(r: &mut dyn Read, chunk: &mut Vec<u8>) -> io::Result<usize> {
    if chunk.len() < IO_BUFFER {
        chunk.resize(IO_BUFFER, 0);
    }
    read_full(r, &mut chunk[..IO_BUFFER])
}

/// `head` (bytes already taken off `rest` to look at them), then `rest`.
pub struct Rejoined<'a> {
    head: Vec<u8>,
    pos: usize,
    rest: Decoded<'a>,
}

impl<'a> Rejoined<'a> {
    pub fn new(head: Vec<u8>, rest: Decoded<'a>) -> Rejoined<'a> {
        Rejoined { head, pos: 0, rest }
    }
}

impl Read for Rejoined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

impl ChunkRead for Rejoined<'_> {
    fn next_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<usize> {
        if self.pos < self.head.len() {
            chunk.clear();
            chunk.extend_from_slice(&self.head[self.pos..]);
            self.pos = self.head.len();
            return Ok(chunk.len());
        }
        self.rest.next_chunk(chunk)
    }
}

/// A decompressing reader over `inner`.
///
/// Gzip is read as a series of members (as `gzip -d` does), so concatenated streams decode
/// whole; mxsnap's own members are inflated on every core. zstd likewise reads every frame. Both report a cut or damaged trailer as an error
/// when read to the end, which is why readers must always drain them.
pub fn decoder<'a, R: BufRead + Send + 'a>(
    inner: R,
    compression: Compression,
) -> io::Result<Decoded<'a>> {
    Ok(match compression {
        Compression::Gzip => Box::new(super::pgzip::ParallelGzDecoder::new(inner, workers())),
        Compression::Zstd => Box::new(Copied(zstd::stream::read::Decoder::with_buffer(inner)?)),
        Compression::None => Box::new(Copied(inner)),
    })
}

/// Reads `source` on a second thread, `IO_BUFFER` bytes at a time and a few chunks ahead, so
/// decompression runs on one core while the consumer (tar parsing, hashing, writing files)
/// runs on another. Memory: at most four chunks in flight.
///
/// `body` gets the reading end; when it returns (early, on an error), the reader thread
/// stops at its next chunk.
pub fn with_read_ahead<T>(source: &mut dyn ChunkRead, body: impl FnOnce(&mut dyn Read) -> T) -> T {
    use std::sync::mpsc::{channel, sync_channel};
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(4);
        // Read chunks come back for reuse: the same few buffers serve the whole archive, so
        // the allocator has nothing to fragment however long the archive is.
        let (recycle, recycled) = channel::<Vec<u8>>();
        scope.spawn(move || {
            loop {
                let mut chunk = recycled.try_recv().unwrap_or_default();
                match source.next_chunk(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok((chunk, n))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut reader = ChannelReader {
            rx,
            recycle,
            chunk: Vec::new(),
            pos: 0,
            end: 0,
        };
        let out = body(&mut reader);
        // Dropping the receiver ends the reader thread; the scope joins it.
        drop(reader);
        out
    })
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<(Vec<u8>, usize)>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    /// Holds unread bytes at `pos..end`.
    chunk: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.end {
            match self.rx.recv() {
                Ok(Ok((chunk, end))) => {
                    let used = std::mem::replace(&mut self.chunk, chunk);
                    if used.capacity() > 0 {
                        let _ = self.recycle.send(used);
                    }
                    self.pos = 0;
                    self.end = end;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Where a [`pump`] failed: reading its source, or handing a chunk on.
#[derive(Debug)]
pub enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Reads `from` to its end in `IO_BUFFER` chunks, handing each to `each`; returns the bytes
/// moved. The one copy loop of the crate: callers decide what a read or a write error means.
pub fn pump(
    from: &mut dyn Read,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; IO_BUFFER];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        each(&buf[..n]).map_err(PumpError::Write)?;
        total += n as u64;
    }
}

/// Reads until `buf` is full or the input ends, whatever sizes `read` returns.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::BufReader;

    /// Returns reads of random small length, to catch code that assumes `read` fills the buffer.
    pub struct ShortReader<R> {
        inner: R,
        state: u64,
    }

    impl<R: Read> ShortReader<R> {
        pub fn new(inner: R, seed: u64) -> Self {
            ShortReader {
                inner,
                state: seed | 1,
            }
        }
    }

    impl<R: Read> Read for ShortReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // xorshift: deterministic, no dependency.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let n = 1 + (self.state % 7) as usize;
            let n = n.min(buf.len());
            self.inner.read(&mut buf[..n])
        }
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3f)
            .collect()
    }

    fn encode(c: Compression) -> Vec<u8> {
        let mut enc = Encoder::new(Vec::new(), c, c.default_level()).unwrap();
        enc.write_all(&sample()).unwrap();
        enc.finish().unwrap()
    }

    fn decode(c: Compression, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let short = ShortReader::new(bytes, 42);
        let mut d = decoder(BufReader::with_capacity(64, short), c)?;
        let mut out = Vec::new();
        d.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_through_short_reads() {
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            assert_eq!(decode(c, &encode(c)).unwrap(), sample(), "{c}");
        }
    }

    #[test]
    fn cut_or_flipped_streams_fail_when_drained() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let good = encode(c);
            let cut = &good[..good.len() - 5];
            assert!(decode(c, cut).is_err(), "{c}: cut trailer accepted");
            let mut flipped = good.clone();
            let i = flipped.len() / 2;
            flipped[i] ^= 0x40;
            match decode(c, &flipped) {
                Err(_) => {}
                Ok(out) => assert_ne!(out, sample(), "{c}: flip went unseen"),
            }
            let mut flipped_tail = good.clone();
            let i = flipped_tail.len() - 3;
            flipped_tail[i] ^= 0x01;
            assert!(
                decode(c, &flipped_tail).is_err(),
                "{c}: checksum flip accepted"
            );
        }
    }

    #[test]
    fn concatenated_gzip_members_read_as_one_stream() {
        let mut both = encode(Compression::Gzip);
        both.extend(encode(Compression::Gzip));
        let out = decode(Compression::Gzip, &both).unwrap();
        assert_eq!(out.len(), 2 * sample().len());
    }

    #[test]
    fn read_ahead_delivers_everything_and_errors_in_order() {
        let data = sample();
        let mut src = Copied(ShortReader::new(&data[..], 5));
        let got = with_read_ahead(&mut src, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        assert_eq!(got.unwrap(), data);
        let good = encode(Compression::Gzip);
        let cut = &good[..good.len() - 5];
        let mut d = decoder(BufReader::new(cut), Compression::Gzip).unwrap();
        let got = with_read_ahead(&mut *d, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)
        });
        assert!(got.is_err(), "a cut stream's error must come through");
        // A consumer that stops early does not hang the reader.
        let mut src = Copied(&data[..]);
        let first = with_read_ahead(&mut src, |r| {
            let mut b = [0u8; 10];
            r.read(&mut b)
        });
        assert!(first.unwrap() > 0);
    }

    /// Chunks handed over whole (mxsnap's members), after a peeked head, and from a foreign
    /// gzip (the streaming decoder) all read back as the stream.
    #[test]
    fn chunks_of_every_decoder_read_back_whole() {
        let data: Vec<u8> = (0..5 * IO_BUFFER + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut ours = Encoder::new(Vec::new(), Compression::Gzip, 6).unwrap();
        ours.write_all(&data).unwrap();
        let ours = ours.finish().unwrap();
        let mut foreign = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        foreign.write_all(&data).unwrap();
        let foreign = foreign.finish().unwrap();
        for (what, stream) in [("ours", &ours), ("foreign", &foreign)] {
            for peek in [0usize, 4096] {
                let mut d = decoder(BufReader::new(&stream[..]), Compression::Gzip).unwrap();
                let mut head = vec![0u8; peek];
                d.read_exact(&mut head).unwrap();
                let mut d = Rejoined::new(head, d);
                let got = with_read_ahead(&mut d, |r| {
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).map(|_| v)
                });
                assert!(got.unwrap() == data, "{what}, {peek} bytes peeked");
            }
        }
    }

    #[test]
    fn read_full_fills_despite_short_reads() {
        let data = sample();
        let mut r = ShortReader::new(&data[..], 7);
        let mut buf = [0u8; 1000];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 1000);
        assert_eq!(&buf[..], &data[..1000]);
    }
}
