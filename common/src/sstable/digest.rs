//! `Digest.crc32`: the ASCII decimal CRC32 (zlib polynomial) of the whole `Data.db` as stored on
//! disk, without a newline (research §5.3). Written by `ma` and later.

use std::io::Read;
use std::path::Path;

use super::FileFormatError;

const WHAT: &str = "Digest.crc32";

/// The CRC32 recorded in a `Digest.crc32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub u32);

impl Digest {
    /// Parses the content of a `Digest.crc32`; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, FileFormatError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| FileFormatError::format(WHAT, path, "not ASCII text"))?
            // Cassandra writes no newline, but a hand-edited or copied file may have one.
            .trim();
        if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FileFormatError::format(
                WHAT,
                path,
                format!("expected the decimal CRC32 of Data.db (e.g. 3400459090), found {:?}", truncate(text)),
            ));
        }
        let v: u64 = text.parse().map_err(|_| FileFormatError::format(WHAT, path, "not a number"))?;
        let v = u32::try_from(v)
            .map_err(|_| FileFormatError::format(WHAT, path, format!("{v} is larger than a CRC32 can be")))?;
        Ok(Self(v))
    }

    /// Reads and parses a `Digest.crc32` file.
    pub fn read(path: &Path) -> Result<Self, FileFormatError> {
        let bytes = std::fs::read(path).map_err(|e| FileFormatError::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// The file content Cassandra writes: the decimal value, no newline.
    pub fn render(&self) -> String {
        self.0.to_string()
    }

    /// The CRC32 of everything `reader` yields, read in 1 MiB blocks.
    pub fn compute<R: Read>(mut reader: R) -> std::io::Result<Self> {
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
        }
        Ok(Self(hasher.finalize()))
    }

    /// The CRC32 of a file.
    pub fn of_file(path: &Path) -> Result<Self, FileFormatError> {
        let f = std::fs::File::open(path).map_err(|e| FileFormatError::io(path, e))?;
        Self::compute(f).map_err(|e| FileFormatError::io(path, e))
    }

    /// Checks that `data` (a `Data.db`) has this CRC32.
    pub fn verify(&self, data: &Path) -> Result<(), FileFormatError> {
        let actual = Self::of_file(data)?;
        if actual != *self {
            return Err(FileFormatError::Checksum {
                what: "Digest.crc32 of Data.db".into(),
                path: data.to_owned(),
                stored: self.0,
                computed: actual.0,
            });
        }
        Ok(())
    }
}

/// Reads `digest_path` and verifies it against `data_path`.
pub fn verify_data_file(digest_path: &Path, data_path: &Path) -> Result<Digest, FileFormatError> {
    let d = Digest::read(digest_path)?;
    d.verify(data_path)?;
    Ok(d)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::fixtures;

    #[test]
    fn every_fixture_digest_matches_its_data_file() {
        let Some(dir) = fixtures::dir() else { return };
        let mut checked = 0;
        for entry in walk(&dir.join("legacy-sstables")) {
            let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
            if let Some(prefix) = name.strip_suffix("-Digest.crc32") {
                let data = entry.with_file_name(format!("{prefix}-Data.db"));
                let d = verify_data_file(&entry, &data).unwrap();
                assert_eq!(std::fs::read_to_string(&entry).unwrap(), d.render());
                checked += 1;
            }
        }
        assert_eq!(checked, 11, "one per fixture SSTable");
        let nb = dir.join("legacy-sstables/nb/legacy_tables/legacy_nb_simple/nb-1-big-Digest.crc32");
        assert_eq!(Digest::read(&nb).unwrap(), Digest(3_400_459_090));
    }

    #[test]
    fn a_damaged_data_file_fails_verification_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("nb-1-big-Data.db");
        std::fs::write(&data, b"hello world").unwrap();
        let good = Digest::of_file(&data).unwrap();
        assert_eq!(good, Digest(crc32fast::hash(b"hello world")));
        good.verify(&data).unwrap();
        std::fs::write(&data, b"hello wOrld").unwrap();
        let e = good.verify(&data).unwrap_err().to_string();
        assert!(e.contains("nb-1-big-Data.db") && e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn malformed_digests_are_errors() {
        let p = Path::new("ks/t/nb-1-big-Digest.crc32");
        assert_eq!(Digest::parse(b"3400459090\n", p).unwrap(), Digest(3_400_459_090));
        for bad in [&b""[..], b"abc", b"-1", b"99999999999", b"4294967296", b"\xff"] {
            let e = Digest::parse(bad, p).unwrap_err().to_string();
            assert!(e.contains("ks/t/nb-1-big-Digest.crc32"), "{e}");
        }
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }
}
