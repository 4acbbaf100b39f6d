//! The columns of a `CREATE TABLE` statement, as Cassandra writes it into a snapshot's
//! `schema.cql` (research §2.4): enough to tell whether a backup's table and a live table have
//! the same primary key and column types before a restore touches anything.
//!
//! Not a CQL parser: it reads the column list between the first `(` after `CREATE TABLE` and its
//! matching `)`, splitting at top-level commas (types such as `map<text, int>` or
//! `frozen<tuple<int, text>>` keep their commas), and the `PRIMARY KEY (...)` clause or an inline
//! `PRIMARY KEY` after a column. Quoted identifiers keep their case; others are lowercased, as
//! Cassandra does.

use std::fmt;

/// What a column is in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// Part of the partition key.
    PartitionKey,
    /// A clustering column.
    Clustering,
    /// A regular column.
    Regular,
    /// A static column.
    Static,
}

impl ColumnKind {
    /// Parses `system_schema.columns.kind` (`partition_key`, `clustering`, `regular`, `static`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "partition_key" => Self::PartitionKey,
            "clustering" => Self::Clustering,
            "regular" => Self::Regular,
            "static" => Self::Static,
            _ => return None,
        })
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PartitionKey => "partition key",
            Self::Clustering => "clustering",
            Self::Regular => "regular",
            Self::Static => "static",
        })
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Column {
    /// Name (lowercased unless it was quoted).
    pub name: String,
    /// CQL type, normalized: lowercase, no spaces (`map<text,int>`).
    pub cql_type: String,
    /// Its role.
    pub kind: ColumnKind,
    /// Position within the partition key or clustering columns (0 for others).
    pub position: usize,
}

/// The columns of a table, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct TableColumns {
    /// Columns.
    pub columns: Vec<Column>,
}

/// Normalizes a CQL type for comparison: lowercase, without spaces, `"quoted"` UDT names kept.
pub fn normalize_type(t: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in t.trim().chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            c if c.is_whitespace() && !quoted => {}
            c if quoted => out.push(c),
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out
}

fn identifier(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => s.to_ascii_lowercase(),
    }
}

/// Splits at commas outside `()`, `<>` and double quotes.
fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quoted = false;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' | '<' if !quoted => depth += 1,
            ')' | '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        parts.push(cur);
    }
    parts.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect()
}

/// The text between the `(` at byte `open` and its matching `)`.
fn balanced(s: &str, open: usize) -> Option<&str> {
    let mut depth = 0i32;
    let mut quoted = false;
    for (i, c) in s[open..].char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[open + 1..open + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits `PRIMARY KEY ((a, b), c)` / `PRIMARY KEY (a, c)` into partition key and clustering columns.
fn primary_key(inner: &str) -> (Vec<String>, Vec<String>) {
    let parts = split_top_level(inner);
    let Some((first, rest)) = parts.split_first() else { return (vec![], vec![]) };
    let pk = match first.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        Some(group) => split_top_level(group).iter().map(|c| identifier(c)).collect(),
        None => vec![identifier(first)],
    };
    (pk, rest.iter().map(|c| identifier(c)).collect())
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Parses the columns of the first `CREATE TABLE` statement in `cql`; `None` if there is none or
/// it cannot be read.
pub fn parse_create_table(cql: &str) -> Option<TableColumns> {
    let lower = cql.to_ascii_lowercase();
    let at = lower.find("create table")?;
    let open = at + cql[at..].find('(')?;
    let body = balanced(cql, open)?;
    let mut defs = Vec::new();
    let mut pk = Vec::new();
    let mut ck = Vec::new();
    for part in split_top_level(body) {
        if starts_with_ci(&part, "primary key") {
            let open = part.find('(')?;
            let (p, c) = primary_key(balanced(&part, open)?);
            pk = p;
            ck = c;
            continue;
        }
        // `name type [static] [PRIMARY KEY]`; the name may be quoted and contain spaces.
        let (name, rest) = if let Some(q) = part.strip_prefix('"') {
            let end = q.find('"')?;
            (format!("\"{}\"", &q[..end]), q[end + 1..].trim().to_owned())
        } else {
            let (n, r) = part.split_once(char::is_whitespace)?;
            (n.to_owned(), r.trim().to_owned())
        };
        let mut ty = rest.clone();
        let mut is_static = false;
        let lower_rest = rest.to_ascii_lowercase();
        if let Some(i) = lower_rest.find(" primary key") {
            ty = rest[..i].to_owned();
            pk = vec![identifier(&name)];
        }
        let lower_ty = ty.to_ascii_lowercase();
        if let Some(stripped) = lower_ty.trim_end().strip_suffix(" static") {
            ty = ty[..stripped.len()].to_owned();
            is_static = true;
        }
        defs.push((identifier(&name), normalize_type(&ty), is_static));
    }
    if defs.is_empty() || pk.is_empty() {
        return None;
    }
    let columns = defs
        .into_iter()
        .map(|(name, cql_type, is_static)| {
            let (kind, position) = if let Some(p) = pk.iter().position(|k| *k == name) {
                (ColumnKind::PartitionKey, p)
            } else if let Some(p) = ck.iter().position(|k| *k == name) {
                (ColumnKind::Clustering, p)
            } else if is_static {
                (ColumnKind::Static, 0)
            } else {
                (ColumnKind::Regular, 0)
            };
            Column { name, cql_type, kind, position }
        })
        .collect();
    Some(TableColumns { columns })
}

/// How a live table differs from a backed-up one.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SchemaDiff {
    /// Differences that make the backup's SSTables unreadable or wrong for the live table: a
    /// different primary key, or a column whose type changed.
    pub incompatible: Vec<String>,
    /// Differences Cassandra handles on import: regular columns added (null in restored rows) or
    /// dropped (their values are ignored) since the backup.
    pub compatible: Vec<String>,
}

impl SchemaDiff {
    /// No difference at all.
    pub fn is_empty(&self) -> bool {
        self.incompatible.is_empty() && self.compatible.is_empty()
    }
}

/// Compares the backup's table (`backup`) with the live one (`live`).
pub fn diff(backup: &TableColumns, live: &TableColumns) -> SchemaDiff {
    let mut d = SchemaDiff::default();
    let key = |t: &TableColumns, kind: ColumnKind| {
        let mut k: Vec<&Column> = t.columns.iter().filter(|c| c.kind == kind).collect();
        k.sort_by_key(|c| c.position);
        k.iter().map(|c| format!("{} {}", c.name, c.cql_type)).collect::<Vec<_>>()
    };
    for (kind, what) in [(ColumnKind::PartitionKey, "partition key"), (ColumnKind::Clustering, "clustering columns")] {
        let (b, l) = (key(backup, kind), key(live, kind));
        if b != l {
            d.incompatible.push(format!("{what} differ: backup ({}), live table ({})", b.join(", "), l.join(", ")));
        }
    }
    for b in &backup.columns {
        match live.columns.iter().find(|l| l.name == b.name) {
            Some(l) if l.cql_type != b.cql_type => d.incompatible.push(format!(
                "column {} is {} in the backup but {} in the live table",
                b.name, b.cql_type, l.cql_type
            )),
            Some(l) if l.kind != b.kind && !matches!(b.kind, ColumnKind::PartitionKey | ColumnKind::Clustering) => d
                .incompatible
                .push(format!("column {} is {} in the backup but {} in the live table", b.name, b.kind, l.kind)),
            Some(_) => {}
            None if matches!(b.kind, ColumnKind::Regular | ColumnKind::Static) => d.compatible.push(format!(
                "column {} ({}) was dropped since the backup: its restored values will be ignored",
                b.name, b.cql_type
            )),
            None => {}
        }
    }
    for l in &live.columns {
        if !backup.columns.iter().any(|b| b.name == l.name)
            && matches!(l.kind, ColumnKind::Regular | ColumnKind::Static)
        {
            d.compatible.push(format!(
                "column {} ({}) was added since the backup: restored rows will have no value for it",
                l.name, l.cql_type
            ));
        }
    }
    d
}

/// What a statement of a backup's `schema.cql` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaObject {
    /// `CREATE TYPE IF NOT EXISTS ks.name (...)`.
    Type,
    /// `CREATE TABLE IF NOT EXISTS ks.name (...) WITH ID = ...`.
    Table,
    /// `CREATE [CUSTOM] INDEX IF NOT EXISTS name ON ks.table (...)`.
    Index,
}

/// One statement of a `schema.cql`, checked: it creates a type, the table or an index in one
/// keyspace, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatement {
    /// What it creates.
    pub object: SchemaObject,
    /// The keyspace it names.
    pub keyspace: String,
    /// The type or table it names (for an index: the indexed table).
    pub name: String,
    /// `WITH ID = <uuid>` of a table, if given.
    pub table_id: Option<String>,
    /// The statement, without its `;`.
    pub text: String,
}

/// Splits CQL text at `;` outside quotes, strings and comments; empty statements dropped.
pub fn split_statements(cql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = cql.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '-' if !single && !double && chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                cur.push('\n');
                continue;
            }
            ';' if !single && !double => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// Reads `schema.cql` text from a backup (untrusted) into statements that each create a type,
/// a table or an index, all in `keyspace` and all about `table` (its types aside). Anything else
/// (`DROP`, `ALTER`, `GRANT`, another keyspace, a second table) is refused with the reason.
pub fn parse_schema(cql: &str, keyspace: &str, table: &str) -> Result<Vec<SchemaStatement>, String> {
    let mut out = Vec::new();
    for text in split_statements(cql) {
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().take(8).map(|w| w.to_ascii_uppercase()).collect();
        let up = |i: usize| upper.get(i).map(String::as_str).unwrap_or("");
        let short: String = text.chars().take(80).collect();
        let (object, name_at) = match (up(0), up(1), up(2)) {
            ("CREATE", "TYPE", _) => (SchemaObject::Type, 2),
            ("CREATE", "TABLE", _) => (SchemaObject::Table, 2),
            ("CREATE", "INDEX", _) => (SchemaObject::Index, 2),
            ("CREATE", "CUSTOM", "INDEX") => (SchemaObject::Index, 3),
            _ => return Err(format!("{short:?} is not CREATE TYPE, CREATE TABLE or CREATE INDEX")),
        };
        if (up(name_at), up(name_at + 1), up(name_at + 2)) != ("IF", "NOT", "EXISTS") {
            return Err(format!("{short:?} lacks IF NOT EXISTS"));
        }
        let at = name_at + 3;
        let qualified = match object {
            SchemaObject::Index => {
                // name ON ks.table (col)
                if up(at + 1) != "ON" {
                    return Err(format!("{short:?}: expected `<name> ON <keyspace>.<table>`"));
                }
                words.get(at + 2).copied().unwrap_or("")
            }
            _ => words.get(at).copied().unwrap_or(""),
        };
        let qualified = qualified.split('(').next().unwrap_or("");
        let Some((ks, name)) = qualified.split_once('.') else {
            return Err(format!("{short:?} does not name its keyspace"));
        };
        let (ks, name) = (identifier(ks), identifier(name));
        if ks != keyspace {
            return Err(format!("{short:?} is about keyspace {ks}, not {keyspace}"));
        }
        if object != SchemaObject::Type && name != table {
            return Err(format!("{short:?} is about table {ks}.{name}, not {keyspace}.{table}"));
        }
        let table_id = (object == SchemaObject::Table).then(|| with_id(&text)).flatten();
        out.push(SchemaStatement { object, keyspace: ks, name, table_id, text });
    }
    if !out.iter().any(|s| s.object == SchemaObject::Table) {
        return Err(format!("no CREATE TABLE for {keyspace}.{table}"));
    }
    Ok(out)
}

/// The `WITH ID = <uuid>` of a `CREATE TABLE`, lowercased.
fn with_id(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find(" with id = ").map(|i| i + 11).or_else(|| lower.find(" with id=").map(|i| i + 9))?;
    let id: String = lower[at..].chars().take_while(|c| c.is_ascii_hexdigit() || *c == '-').collect();
    (id.len() == 36).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "CREATE TABLE IF NOT EXISTS shop.users (\n    id int,\n    bucket text,\n    email text,\n    tags map<text, frozen<list<int>>>,\n    s int static,\n    PRIMARY KEY ((id, bucket), email)\n) WITH ID = 6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69\n    AND CLUSTERING ORDER BY (email ASC)\n    AND comment = 'a, b (c)';\nCREATE INDEX users_email ON shop.users (email);\n";
    const V311: &str = "CREATE TABLE IF NOT EXISTS shop.orders (\n\tid int,\n\t\"Total\" decimal,\n\tPRIMARY KEY (id))\n\tWITH ID = 6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69\n\tAND comment = '';\n";

    #[test]
    fn reads_the_column_list_of_every_version() {
        let t = parse_create_table(V4).unwrap();
        let cols: Vec<(&str, &str, ColumnKind, usize)> =
            t.columns.iter().map(|c| (c.name.as_str(), c.cql_type.as_str(), c.kind, c.position)).collect();
        assert_eq!(
            cols,
            [
                ("id", "int", ColumnKind::PartitionKey, 0),
                ("bucket", "text", ColumnKind::PartitionKey, 1),
                ("email", "text", ColumnKind::Clustering, 0),
                ("tags", "map<text,frozen<list<int>>>", ColumnKind::Regular, 0),
                ("s", "int", ColumnKind::Static, 0),
            ]
        );
        let t = parse_create_table(V311).unwrap();
        assert_eq!(t.columns[1].name, "Total", "quoted identifiers keep their case");
        assert_eq!(t.columns[0].kind, ColumnKind::PartitionKey);
        let inline = parse_create_table("CREATE TABLE ks.t (k int PRIMARY KEY, v text)").unwrap();
        assert_eq!(inline.columns[0].kind, ColumnKind::PartitionKey);
        assert_eq!(inline.columns[1].kind, ColumnKind::Regular);
        assert!(parse_create_table("CREATE TYPE x (a int)").is_none());
        assert!(parse_create_table("CREATE TABLE broken (").is_none());
    }

    #[test]
    fn diffs_separate_what_import_handles_from_what_breaks() {
        let b = parse_create_table(V4).unwrap();
        assert!(diff(&b, &b).is_empty());
        let added =
            parse_create_table(&V4.replace("    s int static,\n", "    s int static,\n    extra blob,\n")).unwrap();
        let d = diff(&b, &added);
        assert!(d.incompatible.is_empty() && d.compatible.len() == 1, "{d:?}");
        assert!(d.compatible[0].contains("extra"));
        let retyped = parse_create_table(&V4.replace("email text", "email varchar")).unwrap();
        let d = diff(&b, &retyped);
        assert!(!d.incompatible.is_empty(), "{d:?}");
        let rekeyed =
            parse_create_table(&V4.replace("PRIMARY KEY ((id, bucket), email)", "PRIMARY KEY (id, bucket, email)"))
                .unwrap();
        let d = diff(&b, &rekeyed);
        assert!(d.incompatible.iter().any(|x| x.contains("partition key")), "{d:?}");
    }

    #[test]
    fn schema_statements_are_split_and_checked() {
        let cql = "CREATE TYPE IF NOT EXISTS shop.address (\n    street text\n);\n\
                   CREATE TABLE IF NOT EXISTS shop.users (\n    id int PRIMARY KEY,\n    home frozen<address>\n) WITH ID = 046B0CE0-f015-11f1-8da4-21d1fa6545e1\n    AND comment = 'a; b';\n\
                   CREATE CUSTOM INDEX IF NOT EXISTS users_by_email ON shop.users (email) USING 'sai';";
        let s = parse_schema(cql, "shop", "users").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].object, s[0].name.as_str()), (SchemaObject::Type, "address"));
        assert_eq!(s[1].object, SchemaObject::Table);
        assert_eq!(s[1].table_id.as_deref(), Some("046b0ce0-f015-11f1-8da4-21d1fa6545e1"));
        assert!(s[1].text.ends_with("comment = 'a; b'"), "a ; inside a string does not split: {}", s[1].text);
        assert_eq!((s[2].object, s[2].name.as_str()), (SchemaObject::Index, "users"));
    }

    #[test]
    fn schema_statements_that_do_anything_else_are_refused() {
        let ok = "CREATE TABLE IF NOT EXISTS shop.users (id int PRIMARY KEY);";
        for bad in [
            "DROP KEYSPACE shop;",
            "CREATE TABLE IF NOT EXISTS shop.users (id int PRIMARY KEY); ALTER ROLE cassandra WITH PASSWORD = 'x';",
            "CREATE TABLE IF NOT EXISTS other.users (id int PRIMARY KEY);",
            "CREATE TABLE IF NOT EXISTS shop.orders (id int PRIMARY KEY);",
            "CREATE TABLE shop.users (id int PRIMARY KEY);",
            "CREATE INDEX IF NOT EXISTS i ON shop.orders (x);",
            "CREATE TYPE IF NOT EXISTS shop.t (a int);",
        ] {
            assert!(parse_schema(bad, "shop", "users").is_err(), "{bad}");
        }
        assert!(parse_schema(ok, "shop", "users").is_ok());
    }
}
