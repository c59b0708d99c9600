//! The ScyllaDB schema: the `.cql` files of `schema/cql/`, embedded so that a
//! node can create its keyspace without the source tree at hand.
//!
//! The files are the single source: tables are unqualified (the node runs
//! them inside the keyspace it created) and every statement is idempotent
//! (`IF NOT EXISTS`), so running them again on an existing keyspace changes
//! nothing.

/// Every schema file, by name, in the order they are run.
pub const FILES: &[(&str, &str)] = &[
    ("01_users.cql", include_str!("../cql/01_users.cql")),
    ("02_groups.cql", include_str!("../cql/02_groups.cql")),
    ("03_messages.cql", include_str!("../cql/03_messages.cql")),
    ("04_sessions.cql", include_str!("../cql/04_sessions.cql")),
    ("05_history.cql", include_str!("../cql/05_history.cql")),
];

/// The statements of a CQL script: split on `;`, with `--` comments and
/// blank statements dropped. A `;` or `--` inside a quoted string or name
/// (`'...'`, `"..."`) belongs to it. Each statement comes back trimmed and
/// without its `;`.
pub fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            current.push(c);
            if c == q {
                // A doubled quote is an escaped quote, not the end.
                if chars.peek() == Some(&q) {
                    current.push(q);
                    chars.next();
                } else {
                    quote = None;
                }
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                current.push(c);
            }
            '-' if chars.peek() == Some(&'-') => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            ';' => push_statement(&mut out, &mut current),
            _ => current.push(c),
        }
    }
    push_statement(&mut out, &mut current);
    out
}

fn push_statement(out: &mut Vec<String>, current: &mut String) {
    let statement = current.trim();
    if !statement.is_empty() {
        out.push(statement.to_owned());
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_and_drops_comments_and_blanks() {
        let text = "-- a comment; not a statement\n\
                    CREATE TABLE a (x int PRIMARY KEY); -- trailing\n\
                    ;\n  \n\
                    CREATE TABLE b (\n  y int PRIMARY KEY -- inline\n)";
        assert_eq!(
            statements(text),
            vec![
                "CREATE TABLE a (x int PRIMARY KEY)".to_owned(),
                "CREATE TABLE b (\n  y int PRIMARY KEY \n)".to_owned(),
            ]
        );
    }

    #[test]
    fn quoted_text_keeps_its_semicolons_and_dashes() {
        let text = "INSERT INTO t (a) VALUES ('x;y -- z'); SELECT \"odd;name\" FROM t; \
                    INSERT INTO t (a) VALUES ('it''s; fine')";
        assert_eq!(
            statements(text),
            vec![
                "INSERT INTO t (a) VALUES ('x;y -- z')".to_owned(),
                "SELECT \"odd;name\" FROM t".to_owned(),
                "INSERT INTO t (a) VALUES ('it''s; fine')".to_owned(),
            ]
        );
    }

    #[test]
    fn empty_scripts_have_no_statements() {
        assert!(statements("").is_empty());
        assert!(statements("-- only a comment\n;;  \n").is_empty());
    }

    #[test]
    fn every_embedded_file_creates_tables_idempotently() {
        assert!(!FILES.is_empty());
        for (name, text) in FILES {
            let list = statements(text);
            assert!(!list.is_empty(), "{name} has no statement");
            for s in list {
                assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS "),
                    "{name}: not an idempotent CREATE TABLE: {s}"
                );
            }
        }
    }
}
