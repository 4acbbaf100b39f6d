//! Test and benchmark data: random files that do not compress or deduplicate by accident.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};

/// Writes `count` files of `size` bytes of seeded random data into `dir` (names `f00000.bin`, …)
/// and returns their paths. The same seed gives the same bytes.
pub fn random_files(dir: &Path, count: usize, size: u64, seed: u64) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut paths = Vec::with_capacity(count);
    for i in 0..count {
        let path = dir.join(format!("f{i:05}.bin"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
        paths.push(path);
    }
    Ok(paths)
}

/// Writes one file of `size` random bytes (creating its directory).
pub fn random_file(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::tempdir_in(dir)?;
    let made = random_files(tmp.path(), 1, size, seed)?;
    std::fs::rename(&made[0], path)
}
