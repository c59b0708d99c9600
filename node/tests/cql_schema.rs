//! Checks, without a server, that every statement the ScyllaDB backend
//! prepares fits the schema in `schema/cql/`: the table exists, every column
//! it names exists, every partition-key column is bound (`= ?` or `IN ?`),
//! only primary-key columns are restricted, an UPDATE names its whole
//! primary key, an INSERT names every primary-key column, and nothing asks
//! for `ALLOW FILTERING`. Also checks that the copy of the schema embedded in
//! `chat_schema::cql` is the one on disk.
//!
//! The CQL understood here is the subset the backend uses; anything else is
//! reported as an error rather than skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chat_node::store::scylla::STATEMENTS;

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/cql")
}

/// The `.cql` files on disk, by name.
fn files_on_disk() -> BTreeMap<String, String> {
    let dir = schema_dir();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "cql") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    files
}

// ---- tokens ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword, lower-cased (CQL folds unquoted names).
    Word(String),
    /// A quoted name, as written.
    Quoted(String),
    /// A string literal.
    Str(String),
    Number(String),
    /// `?`
    Bind,
    /// Punctuation and operators: `( ) , ; = < > <= >= != . * { } [ ] :`.
    Punct(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    const PUNCT: &[&str] = &[
        "<=", ">=", "!=", "(", ")", ",", ";", "=", "<", ">", ".", "*", "{", "}", "[", "]", ":",
        "+", "-",
    ];
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(Token::Word(word.to_ascii_lowercase()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
        } else if c == '\'' || c == '"' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated {c}...{c} in {text}")),
                    Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            tokens.push(if c == '\'' {
                Token::Str(value)
            } else {
                Token::Quoted(value)
            });
        } else if c == '?' {
            tokens.push(Token::Bind);
            i += 1;
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(p) = PUNCT.iter().find(|p| rest.starts_with(**p)) else {
                return Err(format!("unexpected {c:?} in {text}"));
            };
            tokens.push(Token::Punct(p));
            i += p.len();
        }
    }
    Ok(tokens)
}

/// A cursor over tokens.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, String> {
        Ok(Parser {
            tokens: tokenize(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == word)
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Token::Punct(q)) if *q == p)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let yes = self.is_word(word);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        let yes = self.is_punct(p);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect_word(&mut self, word: &str) -> Result<(), String> {
        if self.eat_word(word) {
            Ok(())
        } else {
            Err(format!("expected {word}, found {:?}", self.peek()))
        }
    }

    fn expect_punct(&mut self, p: &str) -> Result<(), String> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(format!("expected {p}, found {:?}", self.peek()))
        }
    }

    /// A table or column name.
    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            Some(Token::Quoted(q)) => Ok(q),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    /// `name` or `name, name, ...` inside parentheses.
    fn name_list(&mut self) -> Result<Vec<String>, String> {
        self.expect_punct("(")?;
        let mut names = vec![self.name()?];
        while self.eat_punct(",") {
            names.push(self.name()?);
        }
        self.expect_punct(")")?;
        Ok(names)
    }

    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }
}

// ---- the schema ----

#[derive(Debug, Clone)]
struct Table {
    columns: BTreeSet<String>,
    partition: Vec<String>,
    clustering: Vec<String>,
    /// Clustering columns stored in descending order (`WITH CLUSTERING
    /// ORDER BY (... DESC)`).
    descending: BTreeSet<String>,
}

impl Table {
    fn primary_key(&self) -> impl Iterator<Item = &String> {
        self.partition.iter().chain(&self.clustering)
    }
}

/// Parses `CREATE TABLE [IF NOT EXISTS] name (columns..., PRIMARY KEY (...))
/// [WITH ...]`.
fn parse_create_table(text: &str) -> Result<(String, Table), String> {
    let mut p = Parser::new(text)?;
    p.expect_word("create")?;
    p.expect_word("table")?;
    if p.eat_word("if") {
        p.expect_word("not")?;
        p.expect_word("exists")?;
    }
    let name = p.name()?;
    if p.eat_punct(".") {
        return Err(format!(
            "{name}.{}: tables must not name a keyspace",
            p.name()?
        ));
    }
    p.expect_punct("(")?;
    let mut columns = BTreeSet::new();
    let mut key: Option<(Vec<String>, Vec<String>)> = None;
    loop {
        if p.eat_word("primary") {
            p.expect_word("key")?;
            p.expect_punct("(")?;
            let partition = if p.is_punct("(") {
                p.name_list()?
            } else {
                vec![p.name()?]
            };
            let mut clustering = Vec::new();
            while p.eat_punct(",") {
                clustering.push(p.name()?);
            }
            p.expect_punct(")")?;
            if key.replace((partition, clustering)).is_some() {
                return Err(format!("{name}: two primary keys"));
            }
        } else {
            let column = p.name()?;
            // The type, up to the `,` or `)` that ends the column (types
            // such as map<text, int> hold commas inside angle brackets).
            let mut depth = 0;
            let mut type_tokens = 0;
            loop {
                match p.peek() {
                    None => return Err(format!("{name}: unterminated column {column}")),
                    Some(Token::Punct("<")) => depth += 1,
                    Some(Token::Punct(">")) => depth -= 1,
                    Some(Token::Punct("," | ")")) if depth == 0 => break,
                    Some(Token::Word(w)) if w == "primary" && depth == 0 => {
                        p.next();
                        p.expect_word("key")?;
                        if key.replace((vec![column.clone()], Vec::new())).is_some() {
                            return Err(format!("{name}: two primary keys"));
                        }
                        continue;
                    }
                    _ => {}
                }
                p.next();
                type_tokens += 1;
            }
            if type_tokens == 0 {
                return Err(format!("{name}: column {column} has no type"));
            }
            if !columns.insert(column.clone()) {
                return Err(format!("{name}: column {column} twice"));
            }
        }
        if p.eat_punct(")") {
            break;
        }
        p.expect_punct(",")?;
    }
    if !(p.done() || p.is_word("with")) {
        return Err(format!(
            "{name}: unexpected {:?} after the columns",
            p.peek()
        ));
    }
    let (partition, clustering) = key.ok_or_else(|| format!("{name}: no primary key"))?;
    for k in partition.iter().chain(&clustering) {
        if !columns.contains(k) {
            return Err(format!("{name}: key column {k} is not a column"));
        }
    }
    let descending = clustering_order(&mut p, &clustering).map_err(|e| format!("{name}: {e}"))?;
    Ok((
        name,
        Table {
            columns,
            partition,
            clustering,
            descending,
        },
    ))
}

/// The descending columns of `WITH ... CLUSTERING ORDER BY (c ASC|DESC,
/// ...) ...`, which must name the clustering columns in order; other
/// options are skipped.
fn clustering_order(p: &mut Parser, clustering: &[String]) -> Result<BTreeSet<String>, String> {
    let mut descending = BTreeSet::new();
    while !p.done() {
        if !p.eat_word("clustering") {
            p.next();
            continue;
        }
        p.expect_word("order")?;
        p.expect_word("by")?;
        p.expect_punct("(")?;
        let mut named = Vec::new();
        loop {
            let column = p.name()?;
            if p.eat_word("desc") {
                descending.insert(column.clone());
            } else {
                p.expect_word("asc")?;
            }
            named.push(column);
            if !p.eat_punct(",") {
                break;
            }
        }
        p.expect_punct(")")?;
        if !clustering.starts_with(&named) {
            return Err(format!(
                "CLUSTERING ORDER BY {named:?} does not follow the clustering columns {clustering:?}"
            ));
        }
    }
    Ok(descending)
}

/// Every table of the schema files, by name.
fn parse_schema(files: &BTreeMap<String, String>) -> Result<BTreeMap<String, Table>, String> {
    let mut tables = BTreeMap::new();
    for (file, text) in files {
        for statement in chat_schema::cql::statements(text) {
            let (name, table) =
                parse_create_table(&statement).map_err(|e| format!("{file}: {e}"))?;
            if tables.insert(name.clone(), table).is_some() {
                return Err(format!("{file}: table {name} defined twice"));
            }
        }
    }
    Ok(tables)
}

fn schema() -> BTreeMap<String, Table> {
    parse_schema(&files_on_disk()).unwrap_or_else(|e| panic!("schema/cql: {e}"))
}

// ---- statements ----

/// A restriction `column op value` of a WHERE or IF clause.
#[derive(Debug)]
struct Condition {
    column: String,
    op: String,
    bound: bool,
}

/// What a data statement touches.
#[derive(Debug, Default)]
struct Usage {
    kind: String,
    table: String,
    /// Columns read, inserted or set.
    columns: Vec<String>,
    conditions: Vec<Condition>,
    /// Column conditions of an IF clause (lightweight transaction).
    if_columns: Vec<String>,
    allow_filtering: bool,
    /// A SELECT with `LIMIT`.
    limit: bool,
}

/// A value: `?`, a literal, or a parenthesised list of them.
fn skip_value(p: &mut Parser) -> Result<bool, String> {
    match p.next() {
        Some(Token::Bind) => Ok(true),
        Some(Token::Str(_) | Token::Number(_)) => Ok(false),
        Some(Token::Word(w)) if matches!(w.as_str(), "true" | "false" | "null") => Ok(false),
        Some(Token::Punct("(")) => {
            skip_value(p)?;
            while p.eat_punct(",") {
                skip_value(p)?;
            }
            p.expect_punct(")")?;
            Ok(false)
        }
        other => Err(format!("expected a value, found {other:?}")),
    }
}

/// `column op value [AND ...]`.
fn conditions(p: &mut Parser) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    loop {
        let column = p.name()?;
        let op = match p.next() {
            Some(Token::Punct(op)) if ["=", "<", ">", "<=", ">=", "!="].contains(&op) => {
                op.to_owned()
            }
            Some(Token::Word(w)) if w == "in" || w == "contains" => w,
            other => {
                return Err(format!(
                    "expected an operator after {column}, found {other:?}"
                ));
            }
        };
        let bound = skip_value(p)?;
        out.push(Condition { column, op, bound });
        if !p.eat_word("and") {
            return Ok(out);
        }
    }
}

/// `USING TTL ? [AND TIMESTAMP ?]`.
fn using(p: &mut Parser) -> Result<(), String> {
    if p.eat_word("using") {
        loop {
            if !(p.eat_word("ttl") || p.eat_word("timestamp")) {
                return Err(format!("expected TTL or TIMESTAMP, found {:?}", p.peek()));
            }
            skip_value(p)?;
            if !p.eat_word("and") {
                break;
            }
        }
    }
    Ok(())
}

/// `IF EXISTS`, `IF NOT EXISTS` or `IF conditions`.
fn if_clause(p: &mut Parser, usage: &mut Usage) -> Result<(), String> {
    if p.eat_word("if") {
        if p.eat_word("exists") {
            return Ok(());
        }
        if p.eat_word("not") {
            return p.expect_word("exists");
        }
        usage
            .if_columns
            .extend(conditions(p)?.into_iter().map(|c| c.column));
    }
    Ok(())
}

fn parse_statement(text: &str) -> Result<Usage, String> {
    let mut p = Parser::new(text)?;
    let mut u = Usage::default();
    let kind = p.name()?;
    match kind.as_str() {
        "select" => {
            // The selection: columns, and functions such as WRITETIME(col).
            loop {
                if p.eat_punct("*") {
                    return Err("SELECT * depends on the table's column order".into());
                }
                let name = p.name()?;
                if p.eat_punct("(") {
                    u.columns.push(p.name()?);
                    p.expect_punct(")")?;
                } else {
                    u.columns.push(name);
                }
                if !p.eat_punct(",") {
                    break;
                }
            }
            p.expect_word("from")?;
            u.table = p.name()?;
            if p.eat_word("where") {
                u.conditions = conditions(&mut p)?;
            }
            if p.eat_word("limit") {
                skip_value(&mut p)?;
                u.limit = true;
            }
            if p.eat_word("allow") {
                p.expect_word("filtering")?;
                u.allow_filtering = true;
            }
        }
        "insert" => {
            p.expect_word("into")?;
            u.table = p.name()?;
            u.columns = p.name_list()?;
            p.expect_word("values")?;
            p.expect_punct("(")?;
            let mut values = 1;
            skip_value(&mut p)?;
            while p.eat_punct(",") {
                skip_value(&mut p)?;
                values += 1;
            }
            p.expect_punct(")")?;
            if values != u.columns.len() {
                return Err(format!("{} columns but {values} values", u.columns.len()));
            }
            if_clause(&mut p, &mut u)?;
            using(&mut p)?;
        }
        "update" => {
            u.table = p.name()?;
            using(&mut p)?;
            p.expect_word("set")?;
            loop {
                u.columns.push(p.name()?);
                p.expect_punct("=")?;
                skip_value(&mut p)?;
                if !p.eat_punct(",") {
                    break;
                }
            }
            p.expect_word("where")?;
            u.conditions = conditions(&mut p)?;
            if_clause(&mut p, &mut u)?;
        }
        "delete" => {
            while !p.is_word("from") {
                u.columns.push(p.name()?);
                if !p.eat_punct(",") {
                    break;
                }
            }
            p.expect_word("from")?;
            u.table = p.name()?;
            using(&mut p)?;
            p.expect_word("where")?;
            u.conditions = conditions(&mut p)?;
            if_clause(&mut p, &mut u)?;
        }
        other => return Err(format!("not a data statement: {other}")),
    }
    if !p.done() {
        return Err(format!("unexpected {:?}", p.peek()));
    }
    u.kind = kind;
    Ok(u)
}

/// Checks one statement against the schema.
fn check(statement: &str, tables: &BTreeMap<String, Table>) -> Result<(), String> {
    let u = parse_statement(statement)?;
    let table = tables
        .get(&u.table)
        .ok_or_else(|| format!("no table {}", u.table))?;
    if u.allow_filtering {
        return Err("ALLOW FILTERING".into());
    }
    let named = u
        .columns
        .iter()
        .chain(u.conditions.iter().map(|c| &c.column))
        .chain(&u.if_columns);
    for column in named {
        if !table.columns.contains(column) {
            return Err(format!("{} has no column {column}", u.table));
        }
    }
    let key: BTreeSet<&String> = table.primary_key().collect();
    for c in &u.conditions {
        if !key.contains(&c.column) {
            return Err(format!(
                "WHERE restricts {}, not a primary-key column of {}",
                c.column, u.table
            ));
        }
    }
    let bound_eq = |column: &String| {
        u.conditions
            .iter()
            .any(|c| &c.column == column && c.bound && (c.op == "=" || c.op == "in"))
    };
    match u.kind.as_str() {
        "insert" => {
            for k in table.primary_key() {
                if !u.columns.contains(k) {
                    return Err(format!("INSERT into {} misses key column {k}", u.table));
                }
            }
        }
        kind => {
            for k in &table.partition {
                if !bound_eq(k) {
                    return Err(format!(
                        "partition key column {k} of {} is not bound with = ? or IN ?",
                        u.table
                    ));
                }
            }
            // The restricted clustering columns are a prefix of the
            // clustering key, each restricted by = or IN except the last,
            // which may be a range: a contiguous slice of the partition.
            let mut skipped: Option<&String> = None;
            let mut range: Option<&String> = None;
            for k in &table.clustering {
                let mut ops = u.conditions.iter().filter(|c| &c.column == k).peekable();
                if ops.peek().is_none() {
                    skipped.get_or_insert(k);
                    continue;
                }
                if let Some(missing) = skipped {
                    return Err(format!(
                        "{} restricts clustering column {k} but not {missing}, which comes before it",
                        u.table
                    ));
                }
                if let Some(r) = range {
                    return Err(format!(
                        "{} restricts clustering column {k} after a range on {r}",
                        u.table
                    ));
                }
                if ops.any(|c| c.op != "=" && c.op != "in") {
                    range = Some(k);
                }
            }
            if kind == "update" {
                for k in &table.clustering {
                    if !bound_eq(k) {
                        return Err(format!(
                            "UPDATE of {} does not bind clustering column {k}",
                            u.table
                        ));
                    }
                }
                if let Some(k) = u.columns.iter().find(|c| key.contains(c)) {
                    return Err(format!("UPDATE sets key column {k}"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn schema_files_define_keyed_unqualified_tables() {
    let tables = schema();
    assert!(!tables.is_empty());
    for (name, table) in &tables {
        assert!(!table.partition.is_empty(), "{name} has no partition key");
    }
}

#[test]
fn embedded_schema_is_the_one_on_disk() {
    let disk = files_on_disk();
    let embedded: BTreeMap<String, String> = chat_schema::cql::FILES
        .iter()
        .map(|(name, text)| (name.to_string(), text.to_string()))
        .collect();
    assert_eq!(
        embedded.keys().collect::<Vec<_>>(),
        disk.keys().collect::<Vec<_>>(),
        "chat_schema::cql::FILES must list exactly the files of schema/cql"
    );
    for (name, text) in &disk {
        assert_eq!(&embedded[name], text, "embedded {name} differs from disk");
    }
    let order: Vec<&str> = chat_schema::cql::FILES.iter().map(|(n, _)| *n).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "files run in name order");
}

#[test]
fn every_backend_statement_fits_the_schema() {
    let tables = schema();
    let errors: Vec<String> = STATEMENTS
        .iter()
        .filter_map(|s| check(s, &tables).err().map(|e| format!("{s}\n    {e}")))
        .collect();
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

#[test]
fn every_table_is_used_by_the_backend() {
    let used: BTreeSet<String> = STATEMENTS
        .iter()
        .map(|s| parse_statement(s).unwrap().table)
        .collect();
    let unused: Vec<String> = schema().into_keys().filter(|t| !used.contains(t)).collect();
    assert!(unused.is_empty(), "tables no statement uses: {unused:?}");
}

/// The tables a page of history or an unread count reads, newest first.
const HISTORY_TABLES: [&str; 3] = ["direct_history", "direct_received", "group_history"];

#[test]
fn history_reads_are_bounded_ranges_of_one_partition_newest_first() {
    let tables = schema();
    let mut reads = 0;
    for table_name in HISTORY_TABLES {
        let table = &tables[table_name];
        assert_eq!(table.clustering, ["id"], "{table_name}");
        assert!(
            table.descending.contains("id"),
            "{table_name} must keep the newest message first"
        );
        for statement in STATEMENTS {
            let u = parse_statement(statement).unwrap();
            if u.table != table_name || u.kind != "select" {
                continue;
            }
            reads += 1;
            // One partition: every partition-key column is = ?, none IN.
            for k in &table.partition {
                assert!(
                    u.conditions
                        .iter()
                        .any(|c| &c.column == k && c.op == "=" && c.bound),
                    "{statement}: {k} must be bound with = ?"
                );
            }
            assert!(
                u.conditions.iter().all(|c| c.op != "in"),
                "{statement}: IN reads several partitions or slices"
            );
            assert!(u.limit, "{statement}: an unbounded read of a history");
        }
    }
    assert!(reads >= 5, "the history reads are missing from STATEMENTS");
}

#[test]
fn checker_refuses_clustering_restrictions_that_are_no_slice() {
    let tables = schema();
    let e = check(
        "SELECT up_to FROM read_marks WHERE user_id = ? AND target = ?",
        &tables,
    )
    .unwrap_err();
    assert!(e.contains("kind"), "{e}");
    let e = check(
        "SELECT user_id FROM group_members WHERE group_id = ? AND joined_after > ? AND user_id = ?",
        &tables,
    )
    .unwrap_err();
    assert!(e.contains("after a range"), "{e}");
    check(
        "SELECT id FROM group_history WHERE group_id = ? AND id > ? AND id < ? LIMIT ?",
        &tables,
    )
    .unwrap();
}

#[test]
fn checker_refuses_a_statement_missing_a_partition_key_column() {
    let tables = schema();
    let e = check(
        "SELECT id, body FROM group_log WHERE group_id = ? AND id > ?",
        &tables,
    )
    .unwrap_err();
    assert!(e.contains("bucket"), "{e}");
    let e = check("DELETE FROM friends WHERE friend_id = ?", &tables).unwrap_err();
    assert!(e.contains("user_id"), "{e}");
    // Bound to a literal is not bound: the partition must come from the
    // caller's values.
    let e = check("SELECT node FROM cluster_nodes WHERE bucket = 0", &tables).unwrap_err();
    assert!(e.contains("bucket"), "{e}");
}

#[test]
fn checker_refuses_unknown_columns_and_tables() {
    let tables = schema();
    let e = check("SELECT nickname FROM users WHERE id = ?", &tables).unwrap_err();
    assert!(e.contains("nickname"), "{e}");
    let e = check("UPDATE users SET nickname = ? WHERE id = ?", &tables).unwrap_err();
    assert!(e.contains("nickname"), "{e}");
    let e = check(
        "INSERT INTO users (id, name, shoe_size) VALUES (?, ?, ?)",
        &tables,
    )
    .unwrap_err();
    assert!(e.contains("shoe_size"), "{e}");
    let e = check("SELECT id FROM people WHERE id = ?", &tables).unwrap_err();
    assert!(e.contains("people"), "{e}");
}

#[test]
fn checker_refuses_filtering_and_partial_keys() {
    let tables = schema();
    for (statement, expected) in [
        (
            "SELECT name FROM users WHERE id = ? ALLOW FILTERING",
            "ALLOW FILTERING",
        ),
        ("SELECT id FROM users WHERE name = ?", "not a primary-key"),
        (
            "INSERT INTO inbox (user_id, body) VALUES (?, ?)",
            "misses key column id",
        ),
        (
            "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?",
            "joined_after",
        ),
        ("SELECT * FROM users WHERE id = ?", "SELECT *"),
    ] {
        let e = check(statement, &tables).unwrap_err();
        assert!(e.contains(expected), "{statement}: {e}");
    }
}

#[test]
fn create_table_parser_reads_keys() {
    let (name, t) = parse_create_table(
        "CREATE TABLE IF NOT EXISTS t (a bigint, b int, c map<text, int>, d text, \
         PRIMARY KEY ((a, b), d)) WITH CLUSTERING ORDER BY (d DESC)",
    )
    .unwrap();
    assert_eq!(name, "t");
    assert_eq!(t.partition, vec!["a", "b"]);
    assert_eq!(t.clustering, vec!["d"]);
    assert!(t.descending.contains("d"));
    assert_eq!(t.columns.len(), 4);
    let (_, t) = parse_create_table("CREATE TABLE u (id bigint PRIMARY KEY, x text)").unwrap();
    assert_eq!(t.partition, vec!["id"]);
    assert!(t.clustering.is_empty());
    assert!(t.descending.is_empty());
    assert!(
        parse_create_table(
            "CREATE TABLE v (a bigint, b bigint, PRIMARY KEY (a, b)) WITH CLUSTERING ORDER BY (a DESC)"
        )
        .is_err()
    );
    assert!(parse_create_table("CREATE TABLE ks.u (id bigint PRIMARY KEY)").is_err());
    assert!(parse_create_table("CREATE TABLE u (id bigint)").is_err());
}
