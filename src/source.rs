//! Where an archive is read from (a file, or any stream such as standard input), opened once:
//! a plan peeks at its start, and its execution reads it from the beginning.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::codec::read_full;
use crate::archive::detect::{self, Container};
use crate::archive::layout::METADATA;
use crate::archive::manifest::Metadata;
use crate::archive::{Compression, Content, Input, Variant};
use crate::crypt::{self, Keys};
use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Where an archive comes from.
pub enum Source {
    File(PathBuf),
    /// A stream read once, front to back (standard input, a socket): nothing can be peeked.
    Stream {
        name: String,
        reader: Input<'static>,
    },
    /// An `http://` or `https://` URL, read as a stream that resumes (see [`crate::http`]);
    /// `notes` hears what the reader has to say (a restart from zero).
    Url {
        url: String,
        notes: crate::http::Notes,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "File({})", p.display()),
            Source::Stream { name, .. } => write!(f, "Stream({name})"),
            Source::Url { url, .. } => write!(f, "Url({})", crate::http::shown(url)),
        }
    }
}

impl Source {
    /// `-` is standard input, `http(s)://...` a URL; anything else a file. `notes` hears a
    /// URL reader's remarks.
    pub fn from_arg(arg: &Path, notes: crate::http::Notes) -> Source {
        if let Some(url) = arg.to_str().filter(|a| crate::http::is_url(a)) {
            return Source::Url {
                url: url.to_string(),
                notes,
            };
        }
        if arg == Path::new("-") {
            Source::Stream {
                name: "standard input".into(),
                reader: Box::new(io::stdin()),
            }
        } else {
            Source::File(arg.to_path_buf())
        }
    }
}

/// What the first bytes of an archive tell, without reading it all.
#[derive(Debug, Clone, Serialize)]
pub struct Peek {
    /// `None` when the first member does not settle it.
    pub variant: Option<Variant>,
    pub compression: Compression,
    pub container: Container,
    /// `.metadata`, when it is the first member (as in the cloud's layout).
    pub metadata: Option<Metadata>,
}

/// Reads only the start of `input`: detection and, for a full snapshot, its `.metadata`.
pub fn peek(input: Input<'_>) -> Result<Peek> {
    let opened = detect::open(input)?;
    let d = opened.detected;
    let mut metadata = None;
    if d.container == Container::Tar && opened.head.len() >= 512 {
        let header = tar::Header::from_byte_slice(&opened.head[..512]);
        let name = header.path_bytes();
        let name = name.strip_prefix(b"./").unwrap_or(&name);
        if name == METADATA.as_bytes() {
            let size = header.entry_size().unwrap_or(0) as usize;
            if let Some(body) = opened.head.get(512..512 + size) {
                metadata = Metadata::parse_lenient(body).ok().map(|(m, _)| m);
            }
        }
    }
    Ok(Peek {
        variant: d.variant,
        compression: d.compression,
        container: d.container,
        metadata,
    })
}

/// A source, opened: a regular file is peeked at (and so refused at once when it is not an
/// archive), then read again from its start. An age-encrypted source is decrypted with the
/// keys given, peek included.
pub struct ArchiveInput {
    name: String,
    path: Option<PathBuf>,
    reader: ReaderKind,
    size: Option<u64>,
    peek: Option<Peek>,
    encrypted: bool,
}

enum ReaderKind {
    File(File),
    Sealed(crypt::Sealed<File>),
    Stream(Input<'static>),
}

/// Looks at the first bytes of `reader`: an age file is decrypted with `keys`.
fn open_stream(
    name: &str,
    mut reader: Input<'static>,
    keys: &Keys,
) -> Result<(Input<'static>, bool)> {
    let mut head = vec![0u8; crypt::AGE_MAGIC.len()];
    let n =
        read_full(&mut reader, &mut head).map_err(|e| Error::io(format!("reading {name}"), e))?;
    head.truncate(n);
    let encrypted = crypt::is_encrypted(&head);
    let rejoined: Input<'static> = Box::new(io::Cursor::new(head).chain(reader));
    if encrypted {
        Ok((Box::new(keys.open(rejoined, name, None)?), true))
    } else {
        Ok((rejoined, false))
    }
}

impl ArchiveInput {
    /// Opens `source`; `keys` open it when it is encrypted (and are not needed otherwise).
    pub fn open(source: Source, keys: &Keys) -> Result<ArchiveInput> {
        match source {
            Source::Url { url, notes } => {
                let name = crate::http::shown(&url);
                let reader = crate::http::HttpReader::open(&url, notes)?;
                let size = reader.size();
                // Large reads: each call into the HTTP client costs syscalls of its own (the
                // per-read timeout), and the decoders downstream ask for 32 KiB at a time.
                let reader = io::BufReader::with_capacity(1 << 20, reader);
                let (reader, encrypted) = open_stream(&name, Box::new(reader), keys)?;
                Ok(ArchiveInput {
                    name,
                    path: None,
                    reader: ReaderKind::Stream(reader),
                    size,
                    peek: None,
                    encrypted,
                })
            }
            Source::Stream { name, reader } => {
                let (reader, encrypted) = open_stream(&name, reader, keys)?;
                Ok(ArchiveInput {
                    name,
                    path: None,
                    reader: ReaderKind::Stream(reader),
                    size: None,
                    peek: None,
                    encrypted,
                })
            }
            Source::File(path) => {
                let file = File::open(&path).map_err(|e| {
                    if e.kind() == io::ErrorKind::NotFound {
                        Error::usage(format!("{}: no such file", path.display()))
                    } else {
                        Error::io(format!("opening {}", path.display()), e)
                    }
                })?;
                let meta = file
                    .metadata()
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let name = path.display().to_string();
                if !meta.is_file() {
                    // A pipe given by name (`<(curl ...)`) can be read only once.
                    let (reader, encrypted) = open_stream(&name, Box::new(file), keys)?;
                    return Ok(ArchiveInput {
                        name,
                        path: Some(path),
                        reader: ReaderKind::Stream(reader),
                        size: None,
                        peek: None,
                        encrypted,
                    });
                }
                let rewind = |e| Error::reading(format!("reading {name}"), e);
                let mut head = vec![0u8; crypt::AGE_MAGIC.len()];
                let n = read_full(&mut &file, &mut head)
                    .map_err(|e| Error::io(format!("reading {name}"), e))?;
                (&file).seek(SeekFrom::Start(0)).map_err(rewind)?;
                let (reader, peeked, encrypted) = if crypt::is_encrypted(&head[..n]) {
                    let mut sealed = keys.open(file, &name, Some(meta.len()))?;
                    let peeked = peek(Box::new(&mut sealed)).map_err(|e| e.context(&name))?;
                    sealed.rewind().map_err(rewind)?;
                    (ReaderKind::Sealed(sealed), peeked, true)
                } else {
                    let peeked = peek(Box::new(&file)).map_err(|e| e.context(&name))?;
                    (&file).seek(SeekFrom::Start(0)).map_err(rewind)?;
                    (ReaderKind::File(file), peeked, false)
                };
                Ok(ArchiveInput {
                    name,
                    path: Some(path),
                    reader,
                    size: Some(meta.len()),
                    peek: Some(peeked),
                    encrypted,
                })
            }
        }
    }

    /// How the archive is named in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Its size in bytes, for a regular file.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// What its start told, for a regular file.
    pub fn peek(&self) -> Option<&Peek> {
        self.peek.as_ref()
    }

    /// Whether it is age-encrypted (and read decrypted).
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// What the reader takes: a zip in a plain file as the file (a zip is read from its end),
    /// anything else as a stream; every read checks `cancel`.
    pub fn into_content(self, cancel: &Cancel) -> Content<'static> {
        let zip = self.peek.as_ref().map(|p| p.container) == Some(Container::Zip);
        match (self.reader, self.size) {
            (ReaderKind::File(f), Some(size)) if zip => Content::File {
                reader: Box::new(cancel.reader(f)),
                size,
            },
            (ReaderKind::File(f), _) => Content::Stream(Box::new(cancel.reader(f))),
            (ReaderKind::Sealed(r), _) => Content::Stream(Box::new(cancel.reader(r))),
            (ReaderKind::Stream(r), _) => Content::Stream(Box::new(cancel.reader(r))),
        }
    }

    /// The bytes (decrypted), from the start.
    pub fn into_reader(self) -> Input<'static> {
        match self.reader {
            ReaderKind::File(f) => Box::new(f),
            ReaderKind::Sealed(r) => Box::new(r),
            ReaderKind::Stream(r) => r,
        }
    }
}
