//! `TOC.txt`: the components of one SSTable, one per line (research §5.3).
//!
//! Cassandra writes the names in hash-set order, lists `TOC.txt` itself, ends every line with
//! `\n`, and appends components built later (e.g. SAI). The TOC is the authoritative file list of
//! an SSTable: a backed-up SSTable is complete iff every entry is present.

use std::path::Path;

use super::{FileFormatError, valid_component};

const WHAT: &str = "TOC.txt";

/// A parsed `TOC.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    components: Vec<String>,
}

impl Toc {
    /// A TOC listing `components` in this order (duplicates dropped).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(components: I) -> Self {
        let mut out: Vec<String> = Vec::new();
        for c in components {
            let c = c.into();
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Self { components: out }
    }

    /// Parses the content of a `TOC.txt`; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, FileFormatError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| FileFormatError::format(WHAT, path, format!("not UTF-8 text ({e})")))?;
        let mut components = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // Cassandra reads lines and trims nothing, but a CRLF copy or stray blank line is harmless.
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if !valid_component(line) {
                return Err(FileFormatError::format(
                    WHAT,
                    path,
                    format!("line {} {line:?} is not a component name such as Data.db", n + 1),
                ));
            }
            if !components.iter().any(|c| c == line) {
                components.push(line.to_owned());
            }
        }
        if components.is_empty() {
            return Err(FileFormatError::format(WHAT, path, "lists no components"));
        }
        Ok(Self { components })
    }

    /// Reads and parses a `TOC.txt` file.
    pub fn read(path: &Path) -> Result<Self, FileFormatError> {
        let bytes = std::fs::read(path).map_err(|e| FileFormatError::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// The components in file order.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Whether the TOC lists `component`.
    pub fn contains(&self, component: &str) -> bool {
        self.components.iter().any(|c| c == component)
    }

    /// Adds a component at the end, as Cassandra's `appendTOC` does; no-op if listed.
    pub fn append(&mut self, component: &str) {
        if !self.contains(component) {
            self.components.push(component.to_owned());
        }
    }

    /// The file content: every name followed by `\n`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.components {
            s.push_str(c);
            s.push('\n');
        }
        s
    }

    /// The listed components whose files are missing from `dir`, where the SSTable's files are
    /// named `<prefix>-<component>`.
    pub fn missing_in(&self, dir: &Path, prefix: &str) -> Vec<String> {
        self.components.iter().filter(|c| !dir.join(format!("{prefix}-{c}")).exists()).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::fixtures;

    #[test]
    fn parses_the_real_big_and_bti_tocs() {
        let Some(dir) = fixtures::dir() else { return };
        let nb = dir.join("legacy-sstables/nb/legacy_tables/legacy_nb_simple/nb-1-big-TOC.txt");
        let toc = Toc::read(&nb).unwrap();
        assert_eq!(
            toc.components(),
            [
                "CompressionInfo.db",
                "Index.db",
                "TOC.txt",
                "Filter.db",
                "Summary.db",
                "Statistics.db",
                "Digest.crc32",
                "Data.db"
            ]
        );
        assert_eq!(toc.render().as_bytes(), std::fs::read(&nb).unwrap());
        assert!(toc.missing_in(nb.parent().unwrap(), "nb-1-big").is_empty());
        assert_eq!(toc.missing_in(nb.parent().unwrap(), "nb-2-big").len(), 8);

        let da = dir.join("legacy-sstables/da/legacy_tables/legacy_da_clust/da-1-bti-TOC.txt");
        let toc = Toc::read(&da).unwrap();
        assert_eq!(
            toc.components(),
            [
                "Data.db",
                "Statistics.db",
                "Digest.crc32",
                "TOC.txt",
                "CompressionInfo.db",
                "Filter.db",
                "Partitions.db",
                "Rows.db"
            ]
        );
        assert!(!toc.contains("Index.db"));
    }

    #[test]
    fn appends_sai_components_and_round_trips() {
        let mut toc = Toc::parse(b"Data.db\nTOC.txt\n", Path::new("nb-1-big-TOC.txt")).unwrap();
        toc.append("SAI+aa+GroupComplete.db");
        toc.append("Data.db");
        assert_eq!(toc.render(), "Data.db\nTOC.txt\nSAI+aa+GroupComplete.db\n");
        assert_eq!(Toc::new(["Data.db", "Data.db", "TOC.txt"]).components().len(), 2);
        let crlf = Toc::parse(b"Data.db\r\nTOC.txt\r\n\r\n", Path::new("x")).unwrap();
        assert_eq!(crlf.components(), ["Data.db", "TOC.txt"]);
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let p = Path::new("/data/ks/t-0123/nb-1-big-TOC.txt");
        for bad in [&b""[..], b"\n\n", b"Data.db\nnot a component\n", b"\xff\xfe"] {
            let e = Toc::parse(bad, p).unwrap_err().to_string();
            assert!(e.contains("/data/ks/t-0123/nb-1-big-TOC.txt"), "{e}");
        }
        let e = Toc::read(Path::new("/nonexistent/nb-1-big-TOC.txt")).unwrap_err().to_string();
        assert!(e.starts_with("read /nonexistent/nb-1-big-TOC.txt"), "{e}");
    }
}
