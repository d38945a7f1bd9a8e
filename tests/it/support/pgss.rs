//! `pg_stat_statements` dumps (the CSV of `tests/fixtures/workload/pgss-dump.sql`)
//! and the statement key both sides are grouped by.

use std::collections::BTreeMap;

use super::report::Key;

/// One row of the dump.
#[derive(Clone, Debug)]
pub struct PgssRow {
    pub userid: String,
    pub datname: String,
    pub queryid: i64,
    pub toplevel: bool,
    pub calls: u64,
    pub total_exec_time: f64,
    pub total_plan_time: f64,
    pub query: String,
}

/// pg_stat_statements rows that collapse into one querywatch statement.
#[derive(Clone, Debug, Default)]
pub struct PgssGroup {
    pub calls: u64,
    /// total_exec_time + total_plan_time, ms.
    pub total_ms: f64,
    pub queryids: Vec<i64>,
    /// The texts, for messages.
    pub queries: Vec<String>,
}

/// The querywatch fingerprint of a statement text: the agent's masking, then
/// the collector's fingerprint, exactly as the report computes it.
pub fn fingerprint_of(sql: &str) -> String {
    let masked = querywatch_agent::mask::mask(sql);
    querywatch_collector::fingerprint::fingerprint(&masked).to_string()
}

pub fn parse_dump(csv_text: &str) -> Vec<PgssRow> {
    let mut records = parse_csv(csv_text).into_iter();
    let header = records.next().expect("pg_stat_statements dump is empty");
    assert_eq!(
        header,
        ["userid", "datname", "queryid", "toplevel", "calls", "total_exec_time", "total_plan_time", "rows", "query"],
        "unexpected pg_stat_statements dump header"
    );
    records
        .map(|r| {
            let num = |i: usize| -> f64 { r[i].parse().unwrap_or_else(|e| panic!("column {i} of {r:?}: {e}")) };
            PgssRow {
                // ::regrole quotes names that need it ("querywatch-pg").
                userid: r[0].trim_matches('"').to_owned(),
                datname: r[1].clone(),
                queryid: r[2].parse().unwrap_or_else(|e| panic!("queryid of {r:?}: {e}")),
                toplevel: r[3] == "t",
                calls: r[4].parse().unwrap_or_else(|e| panic!("calls of {r:?}: {e}")),
                total_exec_time: num(5),
                total_plan_time: num(6),
                // Column 7 (rows): logs carry no row counts to compare with.
                query: r[8].clone(),
            }
        })
        .collect()
}

/// Groups rows by (fingerprint of the masked text, database, user), summing
/// what collapses together (IN-lists and VALUES lists of different lengths,
/// utility statements pg_stat_statements keys by their literal text).
pub fn group(rows: &[PgssRow]) -> BTreeMap<Key, PgssGroup> {
    let mut groups: BTreeMap<Key, PgssGroup> = BTreeMap::new();
    for row in rows {
        assert!(row.toplevel, "pg_stat_statements.track = top, yet a nested row: {row:?}");
        let key =
            Key { fingerprint: fingerprint_of(&row.query), database: row.datname.clone(), user: row.userid.clone() };
        let g = groups.entry(key).or_default();
        g.calls += row.calls;
        g.total_ms += row.total_exec_time + row.total_plan_time;
        g.queryids.push(row.queryid);
        g.queries.push(row.query.clone());
    }
    groups
}

/// RFC 4180 CSV as PostgreSQL's COPY writes it: `"` quoting, `""` for a
/// quote, newlines inside quoted fields.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            '\r' => {}
            _ => field.push(c),
        }
    }
    assert!(!quoted, "CSV ends inside a quoted field");
    if any {
        record.push(field);
        records.push(record);
    }
    records
}

#[test]
fn csv_quotes_and_newlines() {
    let rows = parse_csv("a,b\n\"x, \"\"y\"\"\nz\",2\n,\n");
    assert_eq!(rows, vec![vec!["a", "b"], vec!["x, \"y\"\nz", "2"], vec!["", ""]]);
}
