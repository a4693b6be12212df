//! Encryption at rest, in the age format (age-encryption.org/v1): archives sealed to public
//! keys (`age1...`) or to a passphrase, and opened with identity files or the passphrase.
//!
//! age encrypts in 64 KiB chunks (ChaCha20-Poly1305), each authenticated, the last one
//! marked: a changed byte, a cut file and a wrong key are each told apart. The stream is
//! sealed outermost, around the compressed tar, so what is on disk is a plain age file that
//! the `age` tool decrypts, and anything `age` encrypts mxsnap reads.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use age::secrecy::SecretString;

use crate::error::{Error, Result};

/// How every binary age file begins.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// True when `head` (the first bytes of an input) starts an age file.
pub fn is_encrypted(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

/// To whom an archive is sealed: public keys, or one passphrase.
#[derive(Clone)]
pub enum EncryptTo {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for EncryptTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptTo({:?})", self.describe())
    }
}

impl EncryptTo {
    /// Public keys (`age1...`) given one by one, and recipients files (one key a line, `#`
    /// comments), as the `age` tool reads them.
    pub fn recipients(keys: &[String], files: &[std::path::PathBuf]) -> Result<EncryptTo> {
        let mut all = Vec::new();
        for key in keys {
            all.push(parse_recipient(key, "--encrypt-to")?);
        }
        for file in files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                all.push(parse_recipient(
                    line,
                    &format!("{} line {}", file.display(), n + 1),
                )?);
            }
        }
        if all.is_empty() {
            return Err(Error::usage("no recipient to encrypt to")
                .with_hint("pass --encrypt-to age1... (age-keygen -y KEYFILE prints one)"));
        }
        Ok(EncryptTo::Recipients(all))
    }

    pub fn passphrase(passphrase: String) -> Result<EncryptTo> {
        if passphrase.is_empty() {
            return Err(Error::usage("the passphrase is empty"));
        }
        Ok(EncryptTo::Passphrase(SecretString::from(passphrase)))
    }

    /// What a record or a report says of it: the public keys, or "passphrase". Never secret.
    pub fn describe(&self) -> Vec<String> {
        match self {
            EncryptTo::Recipients(r) => r.iter().map(|r| r.to_string()).collect(),
            EncryptTo::Passphrase(_) => vec!["passphrase".to_string()],
        }
    }

    /// Starts an age file in `out`; everything written to the result is encrypted. It must be
    /// [`finish`](age::stream::StreamWriter::finish)ed, or the file is cut short.
    pub fn seal<W: Write>(&self, out: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor = match self {
            EncryptTo::Recipients(r) => {
                age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(io::Error::other)?
            }
            EncryptTo::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
        };
        encryptor.wrap_output(out)
    }
}

fn parse_recipient(text: &str, from: &str) -> Result<age::x25519::Recipient> {
    age::x25519::Recipient::from_str(text.trim()).map_err(|e| {
        Error::usage(format!("{from}: {text:?} is not an age public key: {e}"))
            .with_hint("an age public key starts with age1; age-keygen -y KEYFILE prints it")
    })
}

/// What opens encrypted archives: identities (private keys) and a passphrase, any of which
/// may be absent.
#[derive(Default, Clone)]
pub struct Keys {
    identities: Vec<std::sync::Arc<dyn age::Identity + Send + Sync>>,
    passphrase: Option<SecretString>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys({} identities, passphrase {})",
            self.identities.len(),
            self.passphrase.is_some()
        )
    }
}

impl Keys {
    pub fn none() -> Keys {
        Keys::default()
    }

    /// Adds the identities of an age identity file (as `age-keygen` writes it).
    pub fn add_identity_file(&mut self, path: &Path) -> Result<()> {
        let file = age::IdentityFile::from_file(path.display().to_string()).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::usage(format!("{}: no such identity file", path.display()))
            } else {
                Error::usage(format!(
                    "{} is not an age identity file: {e}",
                    path.display()
                ))
            }
        })?;
        let identities = file
            .into_identities()
            .map_err(|e| Error::usage(format!("{}: unusable identity: {e}", path.display())))?;
        if identities.is_empty() {
            return Err(Error::usage(format!(
                "{} holds no age identity",
                path.display()
            )));
        }
        self.identities
            .extend(identities.into_iter().map(std::sync::Arc::from));
        Ok(())
    }

    pub fn set_passphrase(&mut self, passphrase: String) {
        self.passphrase = Some(SecretString::from(passphrase));
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.passphrase.is_none()
    }

    /// Opens the age file `input` (`len` bytes long, when known), named `name` in messages;
    /// the result reads plaintext.
    pub fn open<R: Read>(&self, input: R, name: &str, len: Option<u64>) -> Result<Sealed<R>> {
        if self.is_empty() {
            return Err(
                Error::usage(format!("{name} is encrypted (age), and no key was given")).with_hint(
                    "pass --identity KEYFILE (the private key of a recipient), or --passphrase \
                 (or set MXSNAP_PASSPHRASE) for an archive sealed with a passphrase",
                ),
            );
        }
        let consumed = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: input,
            count: consumed.clone(),
        };
        // Reads the header and the nonce and no further.
        let decryptor = age::Decryptor::new(counted).map_err(|e| header_error(e, name))?;
        let header_len = consumed.load(Ordering::Relaxed);
        let scrypt = decryptor.is_scrypt();
        let passphrase = self
            .passphrase
            .as_ref()
            .map(|p| age::scrypt::Identity::new(p.clone()));
        let identities = self
            .identities
            .iter()
            .map(|i| i.as_ref() as &dyn age::Identity)
            .chain(passphrase.iter().map(|p| p as &dyn age::Identity));
        let inner = decryptor.decrypt(identities).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys | age::DecryptError::KeyDecryptionFailed
                if scrypt && self.passphrase.is_none() =>
            {
                Error::usage(format!(
                    "{name} is sealed with a passphrase, and none was given"
                ))
                .with_hint("pass --passphrase, or set MXSNAP_PASSPHRASE")
            }
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys if scrypt => {
                Error::usage(format!("{name}: wrong passphrase")).with_hint(
                    "nothing was changed; try again with the passphrase it was made with",
                )
            }
            age::DecryptError::NoMatchingKeys | age::DecryptError::KeyDecryptionFailed => {
                Error::usage(format!(
                    "{name} is encrypted to other keys: none of the given identities opens it"
                ))
                .with_hint(
                    "pass the --identity whose public key it was encrypted to (a catalogue \
                     record lists them under EncryptedTo); nothing was changed",
                )
            }
            other => header_error(other, name),
        })?;
        Ok(Sealed {
            inner,
            header_len,
            len,
            plain_pos: 0,
        })
    }
}

/// Plaintext bytes of a full age chunk, and the chunk's size on disk (with its tag).
const CHUNK: u64 = 64 * 1024;
const SEALED_CHUNK: u64 = CHUNK + 16;

/// The plaintext of an age file. A chunk that fails to authenticate is named: one followed by
/// more chunks was altered; the last one means the file was cut short (or its end altered).
pub struct Sealed<R: Read> {
    inner: age::stream::StreamReader<Counted<R>>,
    header_len: u64,
    len: Option<u64>,
    plain_pos: u64,
}

impl<R: Read> Sealed<R> {
    fn diagnose(&self, err: io::Error) -> io::Error {
        self.diagnose_at(self.plain_pos / CHUNK, err)
    }

    /// Names what the failure of chunk `chunk` (counted from 0) means.
    fn diagnose_at(&self, chunk: u64, err: io::Error) -> io::Error {
        let chunks = self
            .len
            .map(|len| len.saturating_sub(self.header_len).div_ceil(SEALED_CHUNK));
        match chunks {
            Some(chunks) if chunk + 1 < chunks => io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "encrypted chunk {} of {chunks} (plaintext byte {}) fails authentication: \
                     the file was altered",
                    chunk + 1,
                    self.plain_pos
                ),
            ),
            Some(chunks) => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the last encrypted chunk ({} of {chunks}) fails authentication: the file \
                     was cut short (or its end altered)",
                    chunk + 1
                ),
            ),
            None => io::Error::new(
                err.kind(),
                format!(
                    "encrypted data fails authentication at plaintext byte {}: the stream was \
                     cut short or altered",
                    self.plain_pos
                ),
            ),
        }
    }
}

impl<R: Read> Read for Sealed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.plain_pos += n as u64;
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Err(self.diagnose(e))
            }
            Err(e) => Err(e),
        }
    }
}

impl<R: Read + Seek> Sealed<R> {
    /// Back to the start of the plaintext (after a peek). Seeking makes age read the last
    /// chunk, so a cut file is found here.
    pub fn rewind(&mut self) -> io::Result<()> {
        match self.inner.seek(SeekFrom::Start(0)) {
            Ok(_) => {
                self.plain_pos = 0;
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ) =>
            {
                let last = self
                    .len
                    .map(|len| len.saturating_sub(self.header_len).div_ceil(SEALED_CHUNK))
                    .unwrap_or(1);
                Err(self.diagnose_at(last.saturating_sub(1), e))
            }
            Err(e) => Err(e),
        }
    }
}

/// Counts what the age reader takes from its input: the header's length, once it is parsed.
pub struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for Counted<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn header_error(e: age::DecryptError, name: &str) -> Error {
    match e {
        age::DecryptError::Io(io) => {
            Error::reading(format!("reading the age header of {name}"), io)
        }
        age::DecryptError::ExcessiveWork { required, target } => Error::usage(format!(
            "{name}: its passphrase needs scrypt work factor {required}, more than the {target} \
             allowed"
        )),
        other => Error::corrupt(format!("{name}: the age header is damaged: {other}"))
            .with_hint("the encrypted archive was damaged or altered; use another copy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(to: &EncryptTo, plain: &[u8]) -> Vec<u8> {
        let mut w = to.seal(Vec::new()).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    fn read_all(keys: &Keys, data: &[u8]) -> Result<Vec<u8>> {
        let mut r = keys.open(data, "test", Some(data.len() as u64))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::reading("reading test", e))?;
        Ok(out)
    }

    #[test]
    fn a_key_opens_what_was_sealed_to_it_and_only_that() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let to = EncryptTo::recipients(&[id.to_public().to_string()], &[]).unwrap();
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let data = sealed(&to, &plain);
        assert!(is_encrypted(&data));

        let mut keys = Keys::none();
        keys.identities.push(std::sync::Arc::new(id));
        assert_eq!(read_all(&keys, &data).unwrap(), plain);

        let mut wrong = Keys::none();
        wrong.identities.push(std::sync::Arc::new(other));
        let err = read_all(&wrong, &data).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        assert!(err.message().contains("other keys"), "{}", err.message());

        let err = read_all(&Keys::none(), &data).unwrap_err();
        assert!(err.message().contains("no key was given"));

        let cut = read_all(&keys, &data[..data.len() - 1000]).unwrap_err();
        assert_eq!(cut.kind(), crate::ErrorKind::Corrupt, "{}", cut.message());
        assert!(cut.message().contains("cut short"), "{}", cut.message());
        assert!(cut.message().contains("truncated"), "{}", cut.message());
        let mut flipped = data.clone();
        flipped[data.len() / 3] ^= 1;
        let bad = read_all(&keys, &flipped).unwrap_err();
        assert_eq!(bad.kind(), crate::ErrorKind::Corrupt, "{}", bad.message());
        assert!(bad.message().contains("was altered"), "{}", bad.message());
        assert!(bad.message().contains("chunk 2 of 4"), "{}", bad.message());
    }

    #[test]
    fn a_passphrase_opens_what_it_sealed() {
        let to = EncryptTo::passphrase("correct horse".into()).unwrap();
        let data = sealed(&to, b"secret rows");
        let mut keys = Keys::none();
        keys.set_passphrase("correct horse".into());
        assert_eq!(read_all(&keys, &data).unwrap(), b"secret rows");
        let mut wrong = Keys::none();
        wrong.set_passphrase("wrong".into());
        let err = read_all(&wrong, &data).unwrap_err();
        assert!(
            err.message().contains("wrong passphrase"),
            "{}",
            err.message()
        );
        let mut only_key = Keys::none();
        only_key
            .identities
            .push(std::sync::Arc::new(age::x25519::Identity::generate()));
        let err = read_all(&only_key, &data).unwrap_err();
        assert!(err.message().contains("passphrase"), "{}", err.message());
        assert_eq!(to.describe(), vec!["passphrase".to_string()]);
    }

    #[test]
    fn bad_recipients_are_refused_by_name() {
        let err = EncryptTo::recipients(&["age1nope".into()], &[]).unwrap_err();
        assert!(err.message().contains("not an age public key"));
        assert!(EncryptTo::recipients(&[], &[]).is_err());
    }
}
