//! Byte-exact renderings of what Cassandra prints and writes, per version (research §2.3–2.5, §3).

use super::state::{Table, Version};

/// `FileUtils.stringifyFileSize`: DecimalFormat `#.##` + ` bytes`/` KiB`/` MiB`/` GiB`/` TiB`.
pub fn file_size(v: u64) -> String {
    const K: f64 = 1024.0;
    let v = v as f64;
    let (d, unit) = if v >= K * K * K * K {
        (v / (K * K * K * K), "TiB")
    } else if v >= K * K * K {
        (v / (K * K * K), "GiB")
    } else if v >= K * K {
        (v / (K * K), "MiB")
    } else if v >= K {
        (v / K, "KiB")
    } else {
        (v, "bytes")
    };
    format!("{} {unit}", decimal_2(d))
}

/// `DecimalFormat("#.##")` (HALF_EVEN on the double value).
pub fn decimal_2(d: f64) -> String {
    let s = format!("{d:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".into() } else { s.to_owned() }
}

/// `DecimalFormat("##0.0%")`.
pub fn percent_1(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// `nodetool`'s `TableBuilder`: every cell left-aligned to its column's width, joined by `delimiter`.
pub fn table(rows: &[Vec<String>], delimiter: &str) -> String {
    let widths = widths(rows);
    table_with_widths(rows, delimiter, &widths)
}

/// Column widths over `rows`.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let mut w: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if w.len() <= i {
                w.push(0);
            }
            w[i] = w[i].max(c.chars().count());
        }
    }
    w
}

/// Like [`table`] with given widths (`TableBuilder.SharedTable`).
pub fn table_with_widths(rows: &[Vec<String>], delimiter: &str, widths: &[usize]) -> String {
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> =
            r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0))).collect();
        out.push_str(&cells.join(delimiter));
        out.push('\n');
    }
    out
}

/// `Instant.toString()` / `DateTimeFormatter.ISO_INSTANT` for millisecond values.
pub fn iso_instant(ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    if ms.rem_euclid(1000) == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

/// `manifest.json` exactly as each version writes it.
pub fn manifest_json(
    v: Version,
    files: &[String],
    created_ms: i64,
    expires_ms: Option<i64>,
    ephemeral: bool,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let expires = expires_ms.map(|e| q(&iso_instant(e))).unwrap_or_else(|| "null".into());
    match v {
        // json-simple: `/` escaped, then println.
        Version::V311 | Version::V40 => {
            let list: Vec<String> = files.iter().map(|f| q(f).replace('/', "\\/")).collect();
            format!("{{\"files\":[{}]}}\n", list.join(","))
        }
        Version::V41 => {
            let list: Vec<String> = files.iter().map(|f| q(f)).collect();
            format!(
                "{{\"files\":[{}],\"created_at\":{},\"expires_at\":{expires}}}",
                list.join(","),
                q(&iso_instant(created_ms))
            )
        }
        Version::V50 => {
            let list = if files.is_empty() {
                "[ ]".to_owned()
            } else {
                format!("[ {} ]", files.iter().map(|f| q(f)).collect::<Vec<_>>().join(", "))
            };
            format!(
                "{{\n  \"files\" : {list},\n  \"created_at\" : {},\n  \"expires_at\" : {expires},\n  \"ephemeral\" : {ephemeral}\n}}",
                q(&iso_instant(created_ms))
            )
        }
    }
}

const OPTIONS_3: &[(&str, &str)] = &[
    ("bloom_filter_fp_chance", "0.01"),
    ("dclocal_read_repair_chance", "0.1"),
    ("crc_check_chance", "1.0"),
    ("default_time_to_live", "0"),
    ("gc_grace_seconds", "864000"),
    ("min_index_interval", "128"),
    ("max_index_interval", "2048"),
    ("memtable_flush_period_in_ms", "0"),
    ("read_repair_chance", "0.0"),
    ("speculative_retry", "'99PERCENTILE'"),
    ("comment", "''"),
    ("caching", "{ 'keys': 'ALL', 'rows_per_partition': 'NONE' }"),
    (
        "compaction",
        "{ 'max_threshold': '32', 'min_threshold': '4', 'class': 'org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy' }",
    ),
    ("compression", "{ 'chunk_length_in_kb': '64', 'class': 'org.apache.cassandra.io.compress.LZ4Compressor' }"),
    ("cdc", "false"),
    ("extensions", "{  }"),
];

const OPTIONS_4: &[(&str, &str)] = &[
    ("additional_write_policy", "'99p'"),
    ("bloom_filter_fp_chance", "0.01"),
    ("caching", "{'keys': 'ALL', 'rows_per_partition': 'NONE'}"),
    ("cdc", "false"),
    ("comment", "''"),
    (
        "compaction",
        "{'class': 'org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy', 'max_threshold': '32', 'min_threshold': '4'}",
    ),
    ("compression", "{'chunk_length_in_kb': '16', 'class': 'org.apache.cassandra.io.compress.LZ4Compressor'}"),
    ("crc_check_chance", "1.0"),
    ("default_time_to_live", "0"),
    ("extensions", "{}"),
    ("gc_grace_seconds", "864000"),
    ("max_index_interval", "2048"),
    ("memtable_flush_period_in_ms", "0"),
    ("min_index_interval", "128"),
    ("read_repair", "'BLOCKING'"),
    ("speculative_retry", "'99p'"),
];

/// `schema.cql` as written into a snapshot: 4-space indentation (4.0+) or TABs (3.11), `WITH ID`.
pub fn schema_cql(v: Version, keyspace: &str, name: &str, t: &Table) -> String {
    let pk = if t.partition_key.len() == 1 {
        t.partition_key[0].clone()
    } else {
        format!("({})", t.partition_key.join(", "))
    };
    let key = if t.clustering.is_empty() { pk } else { format!("{pk}, {}", t.clustering.join(", ")) };
    let order = (!t.clustering.is_empty()).then(|| {
        format!(
            "CLUSTERING ORDER BY ({})",
            t.clustering.iter().map(|c| format!("{c} ASC")).collect::<Vec<_>>().join(", ")
        )
    });
    let mut s = String::new();
    if v == Version::V311 {
        s.push_str(&format!("CREATE TABLE IF NOT EXISTS {keyspace}.{name} (\n"));
        for (c, ty) in &t.columns {
            s.push_str(&format!("\t{c} {ty},\n"));
        }
        s.push_str(&format!("\tPRIMARY KEY ({key}))\n\tWITH ID = {}\n", t.id));
        if let Some(o) = &order {
            s.push_str(&format!("\tAND {o}\n"));
        }
        let opts: Vec<String> = OPTIONS_3.iter().map(|(k, val)| format!("\tAND {k} = {val}")).collect();
        s.push_str(&opts.join("\n"));
        s.push_str(";\n");
    } else {
        s.push_str(&format!("CREATE TABLE IF NOT EXISTS {keyspace}.{name} (\n"));
        for (c, ty) in &t.columns {
            s.push_str(&format!("    {c} {ty},\n"));
        }
        s.push_str(&format!("    PRIMARY KEY ({key})\n) WITH ID = {}\n", t.id));
        if let Some(o) = &order {
            s.push_str(&format!("    AND {o}\n"));
        }
        let opts: Vec<String> = OPTIONS_4.iter().map(|(k, val)| format!("    AND {k} = {val}")).collect();
        s.push_str(&opts.join("\n"));
        s.push_str(";\n");
    }
    for i in &t.indexes {
        match i.kind {
            super::state::IndexKind::Native => s.push_str(&format!("CREATE INDEX {} ON {keyspace}.{name} ({});\n", i.name, i.column)),
            super::state::IndexKind::Sai => s.push_str(&format!(
                "CREATE CUSTOM INDEX {} ON {keyspace}.{name} ({}) USING 'org.apache.cassandra.index.sai.StorageAttachedIndex';\n",
                i.name, i.column
            )),
            super::state::IndexKind::Sasi => s.push_str(&format!(
                "CREATE CUSTOM INDEX {} ON {keyspace}.{name} ({}) USING 'org.apache.cassandra.index.sasi.SASIIndex';\n",
                i.name, i.column
            )),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_file_utils() {
        assert_eq!(file_size(812), "812 bytes");
        assert_eq!(file_size(0), "0 bytes");
        assert_eq!(file_size(5837), "5.7 KiB");
        assert_eq!(file_size(4977), "4.86 KiB");
        assert_eq!(file_size(1024), "1 KiB");
        assert_eq!(file_size(45076), "44.02 KiB");
        assert_eq!(file_size(3 << 30), "3 GiB");
    }

    #[test]
    fn instants() {
        assert_eq!(iso_instant(1709288130123), "2024-03-01T10:15:30.123Z");
        assert_eq!(iso_instant(1709288130000), "2024-03-01T10:15:30Z");
        assert_eq!(iso_instant(1709288130120), "2024-03-01T10:15:30.120Z");
    }

    #[test]
    fn manifests_per_version() {
        let f = vec!["na-1-big-Data.db".to_owned()];
        // The 31-byte 4.0-beta doc example + LF.
        assert_eq!(manifest_json(Version::V40, &f, 0, None, false), "{\"files\":[\"na-1-big-Data.db\"]}\n");
        assert_eq!(manifest_json(Version::V40, &f, 0, None, false).len(), 31, "the 31-byte doc example, LF included");
        let idx = vec![".idx/mc-1-big-Data.db".to_owned()];
        assert_eq!(manifest_json(Version::V311, &idx, 0, None, false), "{\"files\":[\".idx\\/mc-1-big-Data.db\"]}\n");
        let f = vec!["nb-1-big-Data.db".to_owned()];
        assert_eq!(
            manifest_json(Version::V41, &f, 1709288130123, None, false),
            r#"{"files":["nb-1-big-Data.db"],"created_at":"2024-03-01T10:15:30.123Z","expires_at":null}"#
        );
        let f = vec!["nb-1-big-Data.db".to_owned(), "nb-2-big-Data.db".to_owned()];
        assert_eq!(
            manifest_json(Version::V50, &f, 1727769600512, None, false),
            "{\n  \"files\" : [ \"nb-1-big-Data.db\", \"nb-2-big-Data.db\" ],\n  \"created_at\" : \"2024-10-01T08:00:00.512Z\",\n  \"expires_at\" : null,\n  \"ephemeral\" : false\n}"
        );
        assert!(manifest_json(Version::V50, &[], 0, Some(3_600_000), false).contains("\"files\" : [ ],"));
    }
}
