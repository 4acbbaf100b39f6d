//! The emulated `cqlsh -e`: `system_views.settings` (4.0+), `system.local`, `system_schema.tables`
//! and `system_schema.columns`, `TRUNCATE`, with
//! cqlsh's table format, error lines and connection errors.

use super::Outcome;
use super::ops;
use super::state::{Cluster, StateDir, Version};

/// Rows per page when cqlsh pages its output (its default with `PAGING ON`, also with `-e`).
pub const PAGE_ROWS: usize = 100;

/// Renders rows the way cqlsh prints them: a leading blank line, headers left-aligned, values
/// right-aligned, ` | ` between cells, a `---+---` rule, a blank line and `(N rows)`.
pub fn render(columns: &[&str], rows: &[Vec<String>]) -> String {
    render_paged(columns, rows, None)
}

/// [`render`] as cqlsh does with paging on (`Some(rows per page)`): every page of rows gets its
/// own column widths (the header's and that page's values), the header is printed once, above
/// the first page. Real cqlsh 6.2 with `-e` pages by 100 rows (seen on Cassandra 5.0.9), so a
/// long result is not one table with one set of column boundaries; `PAGING OFF;` turns it off.
pub fn render_paged(columns: &[&str], rows: &[Vec<String>], page: Option<usize>) -> String {
    let page = page.unwrap_or(usize::MAX).max(1);
    let mut s = String::from("\n");
    let mut chunks: Vec<&[Vec<String>]> = rows.chunks(page).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for (n, chunk) in chunks.into_iter().enumerate() {
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for r in chunk {
            for (i, v) in r.iter().enumerate() {
                widths[i] = widths[i].max(v.chars().count());
            }
        }
        if n == 0 {
            let head: Vec<String> = columns.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
            s.push_str(head.join("|").trim_end());
            s.push('\n');
            let sep: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
            s.push_str(&sep.join("+"));
            s.push('\n');
        }
        for r in chunk {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!(" {v:>w$} ")).collect();
            s.push_str(cells.join("|").trim_end());
            s.push('\n');
        }
    }
    s.push_str(&format!("\n({} rows)\n", rows.len()));
    s
}

fn error(kind: &str, code: u32, label: &str, message: &str) -> Outcome {
    Outcome {
        stdout: String::new(),
        stderr: format!("<stdin>:1:{kind}: Error from server: code={code} [{label}] message=\"{message}\"\n"),
        code: 2,
    }
}

/// Runs `cqlsh [options] [host [port]] -e <statement>`.
pub fn run(state: &StateDir, args: &[String]) -> Outcome {
    let mut positional = Vec::new();
    let mut statement = None;
    let mut user = None;
    let mut password = None;
    let mut cqlshrc = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let mut value = |name: &str| -> Option<String> {
            if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                return Some(v.to_owned());
            }
            if a == name {
                i += 1;
                return args.get(i - 1).cloned();
            }
            None
        };
        if let Some(v) = value("-e").or_else(|| value("--execute")) {
            statement = Some(v);
        } else if let Some(v) = value("-u").or_else(|| value("--username")) {
            user = Some(v);
        } else if let Some(v) = value("-p").or_else(|| value("--password")) {
            password = Some(v);
        } else if let Some(v) = value("--cqlshrc") {
            cqlshrc = Some(v);
        } else if value("--request-timeout").is_some()
            || value("--connect-timeout").is_some()
            || a == "--ssl"
            || a == "--no-color"
        {
        } else if a.starts_with('-') {
            return Outcome {
                stdout: String::new(),
                stderr: format!("Usage: cqlsh [options] [host [port]]\n\ncqlsh: error: no such option: {a}\n"),
                code: 2,
            };
        } else {
            positional.push(a.clone());
        }
    }
    let host = positional.first().cloned().unwrap_or_else(|| "127.0.0.1".into());
    let port = positional.get(1).cloned().unwrap_or_else(|| "9042".into());
    if let Some(rc) = &cqlshrc
        && let Ok(text) = std::fs::read_to_string(rc)
    {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                match k.trim() {
                    "username" => user = user.or(Some(v.trim().to_owned())),
                    "password" => password = password.or(Some(v.trim().to_owned())),
                    _ => {}
                }
            }
        }
    }
    let _lock = match state.lock() {
        Ok(l) => l,
        Err(e) => return Outcome { stdout: String::new(), stderr: format!("emulator: {e:#}\n"), code: 3 },
    };
    let mut c = match state.load() {
        Ok(c) => c,
        Err(e) => return Outcome { stdout: String::new(), stderr: format!("emulator: {e:#}\n"), code: 3 },
    };
    let node = c.node_index(&host).filter(|n| c.nodes[*n].up);
    let Some(node) = node else {
        return Outcome {
            stdout: String::new(),
            stderr: format!(
                "Connection error: ('Unable to connect to any servers', {{'{host}:{port}': ConnectionRefusedError(111, \"Tried connecting to [('{host}', {port})]. Last error: Connection refused\")}})\n"
            ),
            code: 1,
        };
    };
    if let Some((u, p)) = &c.nodes[node].cql_credentials
        && (user.as_deref() != Some(u) || password.as_deref() != Some(p))
    {
        let who = user.clone().unwrap_or_default();
        return Outcome {
            stdout: String::new(),
            stderr: format!(
                "Connection error: ('Unable to connect to any servers', {{'{host}:{port}': AuthenticationFailed('Failed to authenticate to {host}:{port}: Error from server: code=0100 [Bad credentials] message=\"Provided username {who} and/or password are incorrect\"')}})\n"
            ),
            code: 1,
        };
    }
    let Some(stmt) = statement else {
        return Outcome { stdout: String::new(), stderr: "emulator: cqlsh needs -e <statement>\n".into(), code: 2 };
    };
    let out = execute(&mut c, node, &stmt);
    if let Err(e) = state.save(&c) {
        return Outcome { stdout: String::new(), stderr: format!("emulator: {e:#}\n"), code: 3 };
    }
    out
}

/// `ks.name` after the words of `lower` that precede it (`create table if not exists`).
fn object_name(s: &str, lower: &str, after: &str) -> Option<(String, String)> {
    let at = lower.find(after)? + after.len();
    let rest = s[at..].trim_start();
    let rest = if rest.len() >= 14 && rest[..14].eq_ignore_ascii_case("if not exists ") { &rest[14..] } else { rest };
    let word = rest.split(|c: char| c.is_whitespace() || c == '(').next()?;
    let (k, t) = word.split_once('.')?;
    Some((unquote(k).to_ascii_lowercase(), unquote(t).to_ascii_lowercase()))
}

/// CREATE TYPE (accepted, not modelled), CREATE TABLE (columns, keys and `WITH ID` from the
/// statement), CREATE [CUSTOM] INDEX (native, or SAI with `USING 'sai'`), DROP TABLE (its live
/// files removed, a `dropped-<ms>-<table>` snapshot first when auto_snapshot is on, as Cassandra does).
fn schema_change(c: &mut Cluster, s: &str, lower: &str) -> Result<(), (&'static str, String)> {
    let invalid = |m: String| ("InvalidRequest", m);
    let if_not_exists = lower.contains(" if not exists ");
    if lower.starts_with("create type") {
        return Ok(());
    }
    if lower.starts_with("create keyspace") {
        let rest = s[15..].trim_start();
        let rest =
            if rest.len() >= 14 && rest[..14].eq_ignore_ascii_case("if not exists ") { &rest[14..] } else { rest };
        let name = unquote(rest.split_whitespace().next().unwrap_or_default()).to_ascii_lowercase();
        if c.keyspaces.contains_key(&name) {
            return if if_not_exists {
                Ok(())
            } else {
                Err(("AlreadyExists", format!("Keyspace {name} already exists")))
            };
        }
        // The replication factor: the last number of the replication map.
        let rf = lower
            .rsplit(|ch: char| !ch.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse().ok())
            .unwrap_or(1);
        return super::create_keyspace(c, &name, rf).map_err(|e| invalid(format!("{e:#}")));
    }
    if lower.starts_with("create table") {
        let (ks, t) = object_name(s, lower, "create table").ok_or_else(|| invalid(format!("cannot read {s}")))?;
        if c.table(&ks, &t).is_some() {
            return if if_not_exists {
                Ok(())
            } else {
                Err(("AlreadyExists", format!("Table {ks}.{t} already exists")))
            };
        }
        let cols = cassette_common::cql::parse_create_table(s).ok_or_else(|| invalid(format!("cannot read {s}")))?;
        let keyed = |k: cassette_common::cql::ColumnKind| {
            let mut v: Vec<_> = cols.columns.iter().filter(|col| col.kind == k).collect();
            v.sort_by_key(|col| col.position);
            v.into_iter().map(|col| col.name.clone()).collect::<Vec<_>>()
        };
        let pk = keyed(cassette_common::cql::ColumnKind::PartitionKey);
        let ck = keyed(cassette_common::cql::ColumnKind::Clustering);
        let columns = cols.columns.iter().map(|col| (col.name.clone(), col.cql_type.clone())).collect();
        let id = lower
            .find(" with id = ")
            .map(|i| s[i + 11..].chars().take_while(|ch| ch.is_ascii_hexdigit() || *ch == '-').collect::<String>())
            .map(|u| u.parse().map_err(|e| invalid(format!("bad table id {u}: {e}"))))
            .transpose()?;
        return super::create_table(c, &ks, &t, columns, pk, ck, id).map(|_| ()).map_err(|e| invalid(format!("{e:#}")));
    }
    if lower.starts_with("create index") || lower.starts_with("create custom index") {
        let (ks, t) = object_name(s, lower, " on ").ok_or_else(|| invalid(format!("cannot read {s}")))?;
        let head = &lower[..lower.find(" on ").unwrap_or(0)];
        let name = head.split_whitespace().last().unwrap_or_default().to_owned();
        let column =
            s[s.find('(').unwrap_or(0)..].trim_start_matches('(').split(')').next().map(unquote).unwrap_or_default();
        let kind = if lower.contains("using 'sai'") || lower.contains("storageattachedindex") {
            super::state::IndexKind::Sai
        } else {
            super::state::IndexKind::Native
        };
        if c.table(&ks, &t).is_some_and(|x| x.indexes.iter().any(|i| i.name == name)) && if_not_exists {
            return Ok(());
        }
        return super::create_index(c, &ks, &t, super::state::Index { name, column, kind })
            .map_err(|e| invalid(format!("{e:#}")));
    }
    if lower.starts_with("drop table") {
        let (ks, t) = object_name(s, lower, "drop table").ok_or_else(|| invalid(format!("cannot read {s}")))?;
        if c.table(&ks, &t).is_none() {
            return if lower.contains(" if exists ") {
                Ok(())
            } else {
                Err(invalid(format!("Table '{ks}.{t}' doesn't exist")))
            };
        }
        return ops::drop_table(c, &ks, &t).map_err(|e| ("ServerError", format!("{e:#}")));
    }
    Err(("SyntaxException", format!("the emulator does not support this statement: {s}")))
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_owned()
}

fn execute(c: &mut Cluster, node: usize, stmt: &str) -> Outcome {
    let s = stmt.trim_start();
    // `PAGING OFF;` before the statement: one page, and cqlsh says so first.
    let (s, page) = match s.get(..11) {
        Some(p) if p.eq_ignore_ascii_case("paging off;") => (s[11..].trim_start(), None),
        _ => (s, Some(PAGE_ROWS)),
    };
    let statements = cassette_common::cql::split_statements(s);
    let mut out = Outcome::default();
    for st in &statements {
        let one = execute_one(c, node, st, page);
        out.stdout.push_str(&one.stdout);
        out.stderr.push_str(&one.stderr);
        out.code = one.code;
        if one.code != 0 {
            break;
        }
    }
    if statements.is_empty() {
        out = execute_one(c, node, s, page);
    }
    // Real cqlsh 6.2 runs whitespace after the last `;` as one more statement, which fails.
    if out.code == 0 && s.rsplit_once(';').is_some_and(|(_, tail)| !tail.is_empty() && tail.trim().is_empty()) {
        out.stderr.push_str("<stdin>:1:SyntaxException: line 1:0 no viable alternative at input ';' ([;])\n");
        out.code = 2;
    }
    if page.is_none() {
        out.stdout = format!("PAGING set to OFF\n{}", out.stdout);
    }
    out
}

fn execute_one(c: &mut Cluster, node: usize, stmt: &str, page: Option<usize>) -> Outcome {
    let s = stmt.trim().trim_end_matches(';').trim();
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("truncate") {
        let target = s[s.len() - rest.len()..].trim();
        let target = target.strip_prefix("TABLE ").or_else(|| target.strip_prefix("table ")).unwrap_or(target).trim();
        let Some((ks, t)) = target.split_once('.') else {
            return error(
                "InvalidRequest",
                2200,
                "Invalid query",
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename",
            );
        };
        let (ks, t) = (unquote(ks), unquote(t));
        if c.table(&ks, &t).is_none() {
            // 3.11 says "unconfigured table"; 4.0+ (seen on 4.0.19, 4.1.10, 5.0.9) says this.
            let msg = if c.version >= Version::V40 {
                format!("table {t} does not exist")
            } else {
                format!("unconfigured table {t}")
            };
            return error("InvalidRequest", 2200, "Invalid query", &msg);
        }
        let alive = c.nodes.iter().filter(|n| n.up).count();
        if alive < c.nodes.len() {
            return Outcome {
                stdout: String::new(),
                stderr: format!(
                    "<stdin>:1:Unavailable: Error from server: code=1000 [Unavailable exception] message=\"Cannot achieve consistency level ALL\" info={{'consistency': 'ALL', 'required_replicas': {}, 'alive_replicas': {alive}}}\n",
                    c.nodes.len()
                ),
                code: 2,
            };
        }
        if let Err(e) = ops::truncate(c, &ks, &t) {
            return error("ServerError", 0, "Server error", &format!("{e:#}"));
        }
        return Outcome::default();
    }
    if lower.starts_with("insert into") {
        let Some((ks, t)) = object_name(s, &lower, "insert into") else {
            return error("SyntaxException", 2000, "Syntax error in CQL query", &format!("cannot read {s}"));
        };
        if c.table(&ks, &t).is_none() {
            return error("InvalidRequest", 2200, "Invalid query", &format!("table {t} does not exist"));
        }
        // One row in the memtable of every node (the emulator holds no row values).
        for n in 0..c.nodes.len() {
            if let Err(e) = ops::insert(c, n, &ks, &t, 1) {
                return error("ServerError", 0, "Server error", &format!("{e:#}"));
            }
        }
        return Outcome::default();
    }
    if lower.starts_with("create ") || lower.starts_with("drop table") {
        return match schema_change(c, s, &lower) {
            Ok(()) => Outcome::default(),
            Err((kind, msg)) => error(kind, 2200, "Invalid query", &msg),
        };
    }
    if lower.starts_with("select") && lower.contains("from system_views.settings") {
        if c.version == Version::V311 {
            return error("InvalidRequest", 2200, "Invalid query", "keyspace system_views does not exist");
        }
        let n = &c.nodes[node];
        let list = |v: &[std::path::PathBuf]| {
            format!("[{}]", v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        };
        let mut rows = vec![
            ("auto_snapshot", n.auto_snapshot.to_string()),
            ("cluster_name", c.cluster_name.clone()),
            ("commitlog_directory", n.commitlog_dir.display().to_string()),
            ("data_file_directories", list(&n.data_dirs)),
            ("incremental_backups", n.incremental_backups.to_string()),
            (
                "local_system_data_file_directory",
                n.local_system_data_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "null".into()),
            ),
            ("num_tokens", n.tokens.len().to_string()),
            ("partitioner", c.partitioner.clone()),
        ];
        if c.version >= Version::V41 {
            rows.push(("uuid_sstable_identifiers_enabled", n.uuid_sstable_ids.to_string()));
        }
        rows.sort();
        let wanted: Option<String> =
            lower.split_once("where name =").map(|(_, v)| v.trim().trim_matches('\'').to_owned());
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .filter(|(k, _)| wanted.as_deref().is_none_or(|w| w == *k))
            .map(|(k, v)| vec![k.to_owned(), v])
            .collect();
        return Outcome { stdout: render_paged(&["name", "value"], &rows, page), stderr: String::new(), code: 0 };
    }
    if lower.starts_with("select") && lower.contains("from system_schema.tables") {
        let mut rows = Vec::new();
        for (ks, k) in &c.keyspaces {
            for (name, t) in &k.tables {
                rows.push(vec![ks.clone(), name.clone(), t.id.clone()]);
            }
        }
        return Outcome {
            stdout: render_paged(&["keyspace_name", "table_name", "id"], &rows, page),
            stderr: String::new(),
            code: 0,
        };
    }
    if lower.starts_with("select") && lower.contains("from system_schema.columns") {
        let mut rows = Vec::new();
        for (ks, k) in &c.keyspaces {
            for (name, t) in &k.tables {
                for (col, ty) in &t.columns {
                    let (kind, position) = if let Some(p) = t.partition_key.iter().position(|x| x == col) {
                        ("partition_key", p as i64)
                    } else if let Some(p) = t.clustering.iter().position(|x| x == col) {
                        ("clustering", p as i64)
                    } else {
                        ("regular", -1)
                    };
                    rows.push(vec![
                        ks.clone(),
                        name.clone(),
                        col.clone(),
                        kind.to_owned(),
                        position.to_string(),
                        ty.clone(),
                    ]);
                }
            }
        }
        return Outcome {
            stdout: render_paged(
                &["keyspace_name", "table_name", "column_name", "kind", "position", "type"],
                &rows,
                page,
            ),
            stderr: String::new(),
            code: 0,
        };
    }
    if lower.starts_with("select") && lower.contains("from system.local") {
        let n = &c.nodes[node];
        let row = vec![
            n.host_id.clone(),
            c.cluster_name.clone(),
            n.datacenter.clone(),
            n.rack.clone(),
            c.version.release().to_owned(),
            c.schema_version.clone(),
        ];
        return Outcome {
            stdout: render_paged(
                &["host_id", "cluster_name", "data_center", "rack", "release_version", "schema_version"],
                &[row],
                page,
            ),
            stderr: String::new(),
            code: 0,
        };
    }
    Outcome {
        stdout: String::new(),
        stderr: format!("<stdin>:1:SyntaxException: line 1:0 the emulator does not support this statement: {s}\n"),
        code: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_get_their_own_widths() {
        let rows: Vec<Vec<String>> = ["a", "bbbbbbbb", "c"].iter().map(|v| vec![(*v).to_owned()]).collect();
        let s = render_paged(&["name"], &rows, Some(2));
        assert_eq!(s, "\n name\n----------\n        a\n bbbbbbbb\n    c\n\n(3 rows)\n");
    }

    #[test]
    fn renders_like_cqlsh() {
        let s = render(&["name", "value"], &[vec!["data_file_directories".into(), "[/a, /b]".into()]]);
        assert_eq!(
            s,
            "\n name                  | value\n-----------------------+----------\n data_file_directories | [/a, /b]\n\n(1 rows)\n"
        );
    }
}
