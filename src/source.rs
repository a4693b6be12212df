//! Where an archive is read from (a file, or any stream such as standard input), opened once:
//! a plan peeks at its start, and its execution reads it from the beginning.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::detect::{self, Container};
use crate::archive::layout::METADATA;
use crate::archive::manifest::Metadata;
use crate::archive::{Compression, Input, Variant};
use crate::error::{Error, Result};

/// Where an archive comes from.
pub enum Source {
    File(PathBuf),
    /// A stream read once, front to back (standard input, a socket): nothing can be peeked.
    Stream {
        name: String,
        reader: Input<'static>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "File({})", p.display()),
            Source::Stream { name, .. } => write!(f, "Stream({name})"),
        }
    }
}

impl Source {
    /// `-` is standard input; anything else a file.
    pub fn from_arg(arg: &Path) -> Source {
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
                metadata = serde_json::from_slice(body).ok();
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
/// archive), then read again from its start.
pub struct ArchiveInput {
    name: String,
    path: Option<PathBuf>,
    reader: ReaderKind,
    size: Option<u64>,
    peek: Option<Peek>,
}

enum ReaderKind {
    File(File),
    Stream(Input<'static>),
}

impl ArchiveInput {
    pub fn open(source: Source) -> Result<ArchiveInput> {
        match source {
            Source::Stream { name, reader } => Ok(ArchiveInput {
                name,
                path: None,
                reader: ReaderKind::Stream(reader),
                size: None,
                peek: None,
            }),
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
                    return Ok(ArchiveInput {
                        name,
                        path: Some(path),
                        reader: ReaderKind::Stream(Box::new(file)),
                        size: None,
                        peek: None,
                    });
                }
                let peeked = peek(Box::new(&file)).map_err(|e| e.context(&name))?;
                (&file)
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| Error::io(format!("rewinding {name}"), e))?;
                Ok(ArchiveInput {
                    name,
                    path: Some(path),
                    reader: ReaderKind::File(file),
                    size: Some(meta.len()),
                    peek: Some(peeked),
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

    /// The bytes, from the start.
    pub fn into_reader(self) -> Input<'static> {
        match self.reader {
            ReaderKind::File(f) => Box::new(f),
            ReaderKind::Stream(r) => r,
        }
    }
}
