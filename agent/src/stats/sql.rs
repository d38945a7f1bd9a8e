//! Every SQL statement the poller sends, in one place, chosen by server
//! version (`server_version_num`) and installed `pg_stat_statements`
//! version.
//!
//! Each carries [`MARKER`] right after its first keyword (a leading comment
//! could be cut off by a statement-location change in a future parser; one
//! inside the statement is always part of the text pg_stat_statements and
//! pg_stat_activity show), and [`is_own`] recognizes them, so the agent never
//! reports its own work.
//!
//! | needs | pg_stat_statements / server version |
//! |---|---|
//! | `total_exec_time`, `total_plan_time` (else `total_time`) | 1.8 (PG 13) |
//! | `toplevel`, `pg_stat_statements_info` | 1.9 (PG 14) |
//! | `stats_since` | 1.11 (PG 17) |
//! | `pg_stat_activity.query_id` | PG 14 |
//! | `pg_partition_root()` | PG 12 |
//! | `pg_monitor`, `backend_type`, `relispartition` | PG 10 (the minimum) |

/// The marker comment in every statement of the agent.
pub const MARKER: &str = "/* querywatch */";

/// True for a statement text the agent itself sent.
pub fn is_own(query: &str) -> bool {
    query.contains(MARKER)
}

/// The oldest server the poller supports (`pg_monitor`, `backend_type`).
pub const MIN_SERVER_VERSION: i32 = 100_000;

/// Asked once per connection: `server_version_num`, database, role, and
/// whether the role may see other roles' statements and sessions.
pub const SERVER_INFO: &str = "SELECT /* querywatch */ current_setting('server_version_num')::int4, \
     current_database()::text, current_user::text, \
     pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')";

/// The installed pg_stat_statements: version and (quoted) schema; no row
/// when the extension is not created in this database.
pub const EXTENSION: &str = "SELECT /* querywatch */ e.extversion::text, quote_ident(n.nspname)::text \
     FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
     WHERE e.extname = 'pg_stat_statements'";

/// Databases to poll tables in when configured for all of them.
pub const DATABASES: &str = "SELECT /* querywatch */ datname::text FROM pg_database \
     WHERE datallowconn AND NOT datistemplate AND has_database_privilege(datname, 'CONNECT') \
     ORDER BY datname";

/// now(), postmaster start and checkpointer start: the server epoch.
const EPOCH_COLUMNS: &str = "now(), pg_postmaster_start_time(), \
     (SELECT backend_start FROM pg_stat_activity WHERE backend_type = 'checkpointer' LIMIT 1)";

/// A `major.minor` extension version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExtVersion(pub u32, pub u32);

impl ExtVersion {
    /// `"1.10"` → `ExtVersion(1, 10)`; `None` for anything else.
    pub fn parse(s: &str) -> Option<ExtVersion> {
        let (major, minor) = s.trim().split_once('.')?;
        Some(ExtVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

/// The pg_stat_statements installed in the database the agent polls it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pgss {
    pub version: ExtVersion,
    /// `quote_ident(schema)`, as the server quoted it.
    pub schema: String,
}

/// The statements of a pg_stat_statements poll for one extension version,
/// built once per version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementSql {
    pub pgss: Pgss,
    /// Epoch + `dealloc`, `stats_reset` (NULL before 1.9). Read before and
    /// after the counters to detect a reset *during* the read.
    pub header: String,
    /// Counters of every entry, without texts (`pg_stat_statements(false)`
    /// does not read the query text file: cheap every interval).
    pub counters: String,
    /// Texts of the entries whose `queryid = ANY($1)`, for keys not seen
    /// before.
    pub texts: String,
}

impl StatementSql {
    pub fn new(pgss: &Pgss) -> StatementSql {
        let v = pgss.version;
        let s = &pgss.schema;
        let header = if v >= ExtVersion(1, 9) {
            format!(
                "SELECT /* querywatch */ {EPOCH_COLUMNS}, i.dealloc, i.stats_reset FROM {s}.pg_stat_statements_info i"
            )
        } else {
            format!("SELECT /* querywatch */ {EPOCH_COLUMNS}, NULL::int8, NULL::timestamptz")
        };
        let toplevel = if v >= ExtVersion(1, 9) { "s.toplevel" } else { "true" };
        let (exec, plan) = if v >= ExtVersion(1, 8) {
            ("s.total_exec_time", "s.total_plan_time")
        } else {
            ("s.total_time", "0::float8")
        };
        let since = if v >= ExtVersion(1, 11) { "s.stats_since" } else { "NULL::timestamptz" };
        let counters = format!(
            "SELECT /* querywatch */ s.userid, s.dbid, s.queryid, {toplevel}, \
             coalesce(d.datname::text, s.dbid::text), coalesce(r.rolname::text, s.userid::text), \
             s.calls, {exec}, {plan}, s.rows, s.shared_blks_hit, s.shared_blks_read, s.temp_blks_written, {since} \
             FROM {s}.pg_stat_statements(false) s \
             LEFT JOIN pg_database d ON d.oid = s.dbid LEFT JOIN pg_roles r ON r.oid = s.userid"
        );
        let texts = format!(
            "SELECT /* querywatch */ s.userid, s.dbid, s.queryid, {toplevel}, s.query \
             FROM {s}.pg_stat_statements(true) s WHERE s.queryid = ANY($1::int8[])"
        );
        StatementSql { pgss: pgss.clone(), header, counters, texts }
    }
}

/// Epoch and the database's `stats_reset`, for one database's tables (the
/// same columns as [`StatementSql::header`], no `dealloc`).
pub fn tables_header() -> String {
    format!(
        "SELECT /* querywatch */ {EPOCH_COLUMNS}, NULL::int8, \
         (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database())"
    )
}

/// Per-relation counters with schema, name, partition parent and root.
/// No relation locks are taken (statistics views and catalogs only), so a
/// pending `ACCESS EXCLUSIVE` lock never stalls it.
pub fn tables(server_version: i32) -> String {
    let root = if server_version >= 120_000 {
        "LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) \
         LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace"
    } else {
        // Before 12 there is no pg_partition_root: the parent stands in.
        "LEFT JOIN pg_class r ON r.oid = p.oid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace"
    };
    format!(
        "SELECT /* querywatch */ s.relid, s.schemaname::text, s.relname::text, \
         coalesce(s.seq_scan, 0), coalesce(s.seq_tup_read, 0), coalesce(s.idx_scan, 0), \
         coalesce(s.idx_tup_fetch, 0), coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0), \
         coalesce(s.n_tup_del, 0), coalesce(io.heap_blks_read, 0), coalesce(io.heap_blks_hit, 0), \
         pn.nspname::text, p.relname::text, rn.nspname::text, r.relname::text \
         FROM pg_stat_user_tables s \
         LEFT JOIN pg_statio_user_tables io ON io.relid = s.relid \
         JOIN pg_class c ON c.oid = s.relid \
         LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid \
         LEFT JOIN pg_class p ON p.oid = i.inhparent \
         LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace \
         {root}"
    )
}

/// Relation sizes, separately: `pg_relation_size` takes an `ACCESS SHARE`
/// lock, which can wait behind DDL until `lock_timeout`; the counters above
/// must not wait with it.
pub const TABLE_SIZES: &str = "SELECT /* querywatch */ relid, pg_relation_size(relid) FROM pg_stat_user_tables";

/// Backends that are not idle, except this one.
pub fn activity(server_version: i32) -> String {
    let query_id = if server_version >= 140_000 { "a.query_id" } else { "NULL::int8" };
    format!(
        "SELECT /* querywatch */ a.pid, a.datname::text, a.usename::text, coalesce(a.backend_type, ''), \
         a.state, a.wait_event_type, a.wait_event, {query_id}, coalesce(a.query, '') \
         FROM pg_stat_activity a \
         WHERE a.pid <> pg_backend_pid() AND a.state IS NOT NULL AND a.state <> 'idle'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_sql() -> Vec<String> {
        let mut out = vec![SERVER_INFO.to_owned(), EXTENSION.to_owned(), DATABASES.to_owned(), TABLE_SIZES.to_owned()];
        out.push(tables_header());
        for server in [100_000, 120_000, 150_000, 170_000] {
            out.push(tables(server));
            out.push(activity(server));
        }
        for (major, minor) in [(1, 4), (1, 8), (1, 9), (1, 10), (1, 11), (1, 12)] {
            let s = StatementSql::new(&Pgss { version: ExtVersion(major, minor), schema: "public".into() });
            out.extend([s.header, s.counters, s.texts]);
        }
        out
    }

    #[test]
    fn every_statement_carries_the_marker_after_its_first_keyword() {
        for sql in all_sql() {
            assert!(sql.starts_with("SELECT /* querywatch */ "), "{sql}");
            assert!(is_own(&sql));
            assert!(!sql.contains("  "), "a line continuation lost a space: {sql}");
        }
        assert!(!is_own("SELECT 1 /* querywatch2 */"));
    }

    #[test]
    fn columns_follow_the_extension_version() {
        let sql = |major, minor| StatementSql::new(&Pgss { version: ExtVersion(major, minor), schema: "ext".into() });
        let old = sql(1, 7);
        assert!(old.counters.contains("s.total_time") && !old.counters.contains("s.toplevel"));
        assert!(!old.header.contains("pg_stat_statements_info"));
        let pg13 = sql(1, 8);
        assert!(pg13.counters.contains("s.total_exec_time") && pg13.counters.contains("s.total_plan_time"));
        let pg14 = sql(1, 9);
        assert!(pg14.counters.contains("s.toplevel") && pg14.header.contains("ext.pg_stat_statements_info"));
        assert!(!pg14.counters.contains("stats_since"));
        assert!(sql(1, 11).counters.contains("s.stats_since"));
        assert!(activity(140_000).contains("a.query_id") && !activity(130_000).contains("a.query_id"));
        assert!(tables(120_000).contains("pg_partition_root") && !tables(110_000).contains("pg_partition_root"));
        assert_eq!(ExtVersion::parse("1.10"), Some(ExtVersion(1, 10)));
        assert!(ExtVersion(1, 10) > ExtVersion(1, 9));
        assert_eq!(ExtVersion::parse("1.10beta"), None);
    }
}
