//! The `cassandra.yaml` settings the adapter needs: `data_file_directories`,
//! `local_system_data_file_directory` and `commitlog_directory`, and where the node listens
//! (`listen_address`, `storage_port`, `native_transport_port`: an in-place restore checks that
//! nothing does).
//!
//! Not a YAML parser: it reads top-level keys with a scalar value or a block (`- item`) or flow
//! (`[a, b]`) list of scalars, which is how every cassandra.yaml writes these settings. Anything
//! else is ignored.

use std::path::{Path, PathBuf};

use super::error::CassandraError;

/// Directory settings found in a `cassandra.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct YamlDirectories {
    /// `data_file_directories`.
    pub data_file_directories: Vec<PathBuf>,
    /// `local_system_data_file_directory` (4.0+).
    pub local_system_data_file_directory: Option<PathBuf>,
    /// `commitlog_directory`.
    pub commitlog_directory: Option<PathBuf>,
    /// `listen_address`.
    pub listen_address: Option<String>,
    /// `storage_port`.
    pub storage_port: Option<u16>,
    /// `native_transport_port`.
    pub native_transport_port: Option<u16>,
}

fn scalar(v: &str) -> Option<String> {
    // Strip a trailing comment (` #`), then quotes.
    let v = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    };
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v);
    (!v.is_empty() && v != "~" && v != "null").then(|| v.to_owned())
}

/// Parses the directory settings out of `cassandra.yaml` text.
pub fn parse(text: &str) -> YamlDirectories {
    let mut out = YamlDirectories::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.starts_with([' ', '\t', '#', '-']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key.trim() {
            "data_file_directories" => {
                let mut dirs = Vec::new();
                if let Some(flow) = value.strip_prefix('[') {
                    let flow = flow.split(']').next().unwrap_or_default();
                    dirs.extend(flow.split(',').filter_map(scalar));
                } else if let Some(v) = scalar(value) {
                    dirs.push(v);
                } else {
                    while i < lines.len() {
                        let t = lines[i].trim();
                        if t.is_empty() || t.starts_with('#') {
                            i += 1;
                            continue;
                        }
                        let Some(item) = t.strip_prefix('-') else { break };
                        if !lines[i].starts_with([' ', '\t', '-']) {
                            break;
                        }
                        dirs.extend(scalar(item));
                        i += 1;
                    }
                }
                out.data_file_directories = dirs.into_iter().map(PathBuf::from).collect();
            }
            "commitlog_directory" => out.commitlog_directory = scalar(value).map(PathBuf::from),
            "local_system_data_file_directory" => {
                out.local_system_data_file_directory = scalar(value).map(PathBuf::from)
            }
            "listen_address" => out.listen_address = scalar(value),
            "storage_port" => out.storage_port = scalar(value).and_then(|v| v.parse().ok()),
            "native_transport_port" => out.native_transport_port = scalar(value).and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    out
}

/// Reads the directory settings from a `cassandra.yaml` file.
pub fn read(path: &Path) -> Result<YamlDirectories, CassandraError> {
    let text = std::fs::read_to_string(path).map_err(|e| CassandraError::files("read", path, e))?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_scalars_and_comments() {
        let y = "cluster_name: 'Test Cluster'\n# data_file_directories:\n#     - /commented\ndata_file_directories:\n    - /var/lib/cassandra/data\n    # a comment between items\n    - \"/mnt/disk2/data\"   # second disk\ncommitlog_directory: /var/lib/cassandra/commitlog\nhints_directory: /var/lib/cassandra/hints\n";
        let d = parse(y);
        assert_eq!(
            d.data_file_directories,
            [PathBuf::from("/var/lib/cassandra/data"), PathBuf::from("/mnt/disk2/data")]
        );
        assert_eq!(d.commitlog_directory, Some(PathBuf::from("/var/lib/cassandra/commitlog")));
        assert_eq!(d.local_system_data_file_directory, None);
    }

    #[test]
    fn flow_lists_and_unindented_items() {
        let d = parse("data_file_directories: [/a, '/b']\nlocal_system_data_file_directory: /sys\n");
        assert_eq!(d.data_file_directories, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(d.local_system_data_file_directory, Some(PathBuf::from("/sys")));
        let d = parse("data_file_directories:\n- /x\n- /y\nnum_tokens: 16\n");
        assert_eq!(d.data_file_directories.len(), 2);
        let d = parse("# nothing set\ncommitlog_directory:\n");
        assert_eq!(d, YamlDirectories::default());
        let d = parse("listen_address: 10.0.0.5\nstorage_port: 7010 # internode\nnative_transport_port: '9142'\n");
        assert_eq!(
            (d.listen_address.as_deref(), d.storage_port, d.native_transport_port),
            (Some("10.0.0.5"), Some(7010), Some(9142))
        );
    }
}
