//! SHA-256 helpers: the only content hash Cassette uses.
//!
//! sha2 picks the SHA-NI/ARMv8 backends at run time, about 1.5 GiB/s per core on x86_64.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ids::BlobHash;

/// Read buffer for hashing files: large enough to amortise syscalls, small enough to stay in cache.
pub const HASH_BUFFER: usize = 1 << 20;

/// An incremental SHA-256.
#[derive(Debug, Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A new hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything fed so far.
    pub fn finish(self) -> BlobHash {
        BlobHash::from_bytes(self.0.finalize().into())
    }
}

/// SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> BlobHash {
    BlobHash::from_bytes(Sha256::digest(bytes).into())
}

/// SHA-256 and length of everything `reader` yields.
pub fn sha256_reader(reader: impl Read) -> io::Result<(BlobHash, u64)> {
    sha256_reader_with(reader, |_| {})
}

/// [`sha256_reader`], calling `progress` with the size of each chunk read.
pub fn sha256_reader_with(mut reader: impl Read, mut progress: impl FnMut(usize)) -> io::Result<(BlobHash, u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
        progress(n);
    }
    Ok((hasher.finish(), len))
}

/// SHA-256 and length of a file (blocking; run it on a blocking thread).
pub fn sha256_file(path: &Path) -> io::Result<(BlobHash, u64)> {
    sha256_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(sha256(b"").to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256(b"abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let big = vec![7u8; 3 * HASH_BUFFER + 17];
        let (h, n) = sha256_reader(&big[..]).unwrap();
        assert_eq!((h, n), (sha256(&big), big.len() as u64));
        let mut inc = Hasher::new();
        inc.update(&big[..5]);
        inc.update(&big[5..]);
        assert_eq!(inc.finish(), h);
    }

    #[test]
    fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), (sha256(b"abc"), 3));
        let e = sha256_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
