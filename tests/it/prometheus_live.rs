//! The Grafana dashboards in `dashboards/` against a real Prometheus.
//!
//! - [`dashboards_are_well_formed`] (fast, no server): every panel queries
//!   the `${datasource}` variable, every target has PromQL, every variable a
//!   query uses is defined, panel ids are unique, and every link to a
//!   dashboard (`/d/<uid>`) names one of ours.
//! - [`every_dashboard_query_has_data_in_a_real_prometheus`]: three real
//!   PostgreSQL clusters, an agent next to each and one collector (the
//!   helpers of `collector_e2e`), scraped every second by Debian's
//!   `prometheus` with the rule files of `deploy/prometheus/rules/`. Every
//!   panel's PromQL, with its template variables set to values Prometheus
//!   knows (and once more with "All" for the multi-value ones), must
//!   evaluate without error to at least one finite number; and the
//!   `QuerywatchHotPartition` alert must fire for node `n2`.
//!
//! The workload is `collector_e2e`'s schema and partition load (the same
//! partitioned table on every node, skewed on `n2`) and its slow unindexed
//! query on `n1`, sent with `psql -c` (its file-based helpers name their
//! temp files by process id, and both tests run in this one process), in
//! databases with `pg_stat_statements` created, as the README asks. It
//! keeps running at a trickle while the queries are checked, so that rates
//! over the last minute are what a live system shows, not an artefact of
//! the timing.
//! Rule files are loaded from a copy in which every `for:` and every group's
//! `interval:` is 1s: the test checks that the alert fires for the right
//! node, not how long it waits.
#![allow(clippy::unwrap_used)]

use crate::collector_e2e::{
    Proc, http_get, kind, partition_load, start_agents, start_collector, three_nodes, wait_for, workdir,
};
use crate::support::skip_pg;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Panels that may legitimately have no data in this test, with the
/// reason: (dashboard uid, panel title, why). Keep it tiny.
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[];

/// Grafana's own variables, and the values the test gives them.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "5m"),
    ("__range_s", "300"),
    ("__range_ms", "300000"),
];

/// Variables of links (`${__value.raw}`, `${__url_time_range}`, …) start
/// with these.
const LINK_BUILTINS: &[&str] = &["__value", "__data", "__field", "__series", "__url_time_range", "__from", "__to"];

const DATASOURCE_UID: &str = "${datasource}";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every dashboard: (file name, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = fs::read_dir(repo().join("dashboards"))
        .expect("reading dashboards/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards in dashboards/");
    out
}

/// All panels, including those inside collapsed rows.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn variables(dash: &Value) -> &[Value] {
    dash["templating"]["list"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A query variable's query string (Grafana stores a string, or an object
/// with `query`).
fn variable_query(v: &Value) -> Option<&str> {
    v["query"].as_str().or_else(|| v["query"]["query"].as_str())
}

/// The variables a string refers to, in Grafana's `$name`, `${name}` and
/// `${name:format}` forms (names only).
fn referenced(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    scan(s, |name, _| {
        out.push(name.to_owned());
        None
    });
    out
}

/// Walks `s`, calling `f(name, format)` at each variable reference and
/// replacing the reference with what `f` returns (unchanged on `None`).
fn scan(s: &str, mut f: impl FnMut(&str, Option<&str>) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (whole, name, format) = if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let inner = &body[..end];
                    let (name, format) = match inner.split_once(':') {
                        Some((n, fmt)) => (n, Some(fmt)),
                        None => (inner, None),
                    };
                    (&rest[i..i + 2 + end + 1], name, format)
                }
                None => (&rest[i..=i], "", None),
            }
        } else {
            let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&rest[i..=i + len], &after[..len], None)
        };
        // `$1` in a regex replacement or a bare `$` is not a variable.
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(whole);
        } else {
            match f(name, format) {
                Some(v) => out.push_str(&v),
                None => out.push_str(whole),
            }
        }
        rest = &rest[i + whole.len()..];
    }
    out.push_str(rest);
    out
}

/// Every string in a JSON value, with the key it is under.
fn strings<'a>(v: &'a Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::String(s) => out.push((key, s)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, key, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, k, out)),
        _ => {}
    }
}

/// Every `datasource` object in a JSON value.
fn datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| datasources(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if k == "datasource" {
                    out.push(x);
                } else {
                    datasources(x, out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards();
    let mut problems = Vec::new();
    let uids: BTreeSet<&str> = all.iter().filter_map(|(_, d)| d["uid"].as_str()).collect();
    if uids.len() != all.len() {
        problems.push("dashboards without a uid, or sharing one".to_owned());
    }
    for (file, dash) in &all {
        let mut bad = |what: String| problems.push(format!("{file}: {what}"));
        if dash["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            bad(format!("schemaVersion {} (want >= 39, Grafana 11)", dash["schemaVersion"]));
        }
        if !dash["id"].is_null() {
            bad("\"id\" must be null: it is the id of one Grafana install".to_owned());
        }
        if dash["title"].as_str().unwrap_or("").is_empty() {
            bad("no title".to_owned());
        }
        let vars = variables(dash);
        let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        if defined.len() != vars.len() {
            bad("variables without a name, or sharing one".to_owned());
        }
        if !vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus") {
            bad("no variable `datasource` of type datasource (prometheus)".to_owned());
        }
        let known = |name: &str| {
            defined.contains(name)
                || BUILTINS.iter().any(|(b, _)| *b == name)
                || LINK_BUILTINS.iter().any(|b| name == *b || name.starts_with(&format!("{b}.")))
        };
        // No datasource but ours (and Grafana's built-in annotations).
        let mut ds = Vec::new();
        datasources(dash, &mut ds);
        for d in ds {
            let uid = d["uid"].as_str().or_else(|| d.as_str()).unwrap_or("");
            if uid != DATASOURCE_UID && uid != "-- Grafana --" {
                bad(format!("a datasource other than {DATASOURCE_UID}: {d}"));
            }
        }
        for v in vars {
            let name = v["name"].as_str().unwrap_or("?");
            match v["type"].as_str() {
                Some("datasource") => {}
                Some("query") => {
                    if v["datasource"]["uid"] != DATASOURCE_UID {
                        bad(format!("variable {name}: datasource is not {DATASOURCE_UID}"));
                    }
                    match variable_query(v) {
                        Some(q) if parse_label_values(q).is_some() => {
                            for r in referenced(q) {
                                if !defined.contains(r.as_str()) {
                                    bad(format!("variable {name}: query uses undefined ${r}"));
                                }
                            }
                        }
                        q => bad(format!("variable {name}: query {q:?} is not label_values(...)")),
                    }
                    if v["includeAll"] == true && v["allValue"] != ".*" {
                        bad(format!("variable {name}: includeAll needs allValue \".*\" (what the live test runs)"));
                    }
                }
                other => bad(format!("variable {name}: type {other:?} is not handled by the live test")),
            }
        }
        let mut ids = BTreeSet::new();
        for p in panels(dash) {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"].as_u64();
            if !id.is_some_and(|id| ids.insert(id)) {
                bad(format!("panel {title:?}: missing or duplicate id {id:?}"));
            }
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64(), g["w"].as_u64());
            if !(x.is_some() && w.is_some() && g["y"].is_u64() && g["h"].is_u64()) || x.unwrap() + w.unwrap() > 24 {
                bad(format!("panel {title:?}: bad gridPos {g}"));
            }
            if is_row(p) {
                continue;
            }
            if p["datasource"]["uid"] != DATASOURCE_UID || p["datasource"]["type"] != "prometheus" {
                bad(format!("panel {title:?}: datasource is not prometheus {DATASOURCE_UID}"));
            }
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            if targets.is_empty() {
                bad(format!("panel {title:?}: no targets"));
            }
            let mut refs = BTreeSet::new();
            for t in targets {
                let r = t["refId"].as_str().unwrap_or("");
                if r.is_empty() || !refs.insert(r) {
                    bad(format!("panel {title:?}: target without refId, or a duplicate one: {r:?}"));
                }
                match t["expr"].as_str() {
                    Some(e) if !e.trim().is_empty() => {}
                    _ => bad(format!("panel {title:?} target {r}: no expr")),
                }
                if !t["datasource"].is_null() && t["datasource"]["uid"] != DATASOURCE_UID {
                    bad(format!("panel {title:?} target {r}: datasource is not {DATASOURCE_UID}"));
                }
            }
            // Every variable used anywhere in the panel (queries, legends,
            // links) is defined.
            let mut s = Vec::new();
            strings(p, "", &mut s);
            for (_, text) in s {
                if text.contains("[[") {
                    bad(format!("panel {title:?}: deprecated [[variable]] syntax in {text:?}"));
                }
                for r in referenced(text) {
                    if !known(&r) {
                        bad(format!("panel {title:?}: ${r} is not a variable of this dashboard"));
                    }
                }
            }
        }
        // Links to dashboards name existing uids.
        let mut s = Vec::new();
        strings(dash, "", &mut s);
        for (_, text) in s {
            for part in text.split("/d/").skip(1) {
                let uid: String = part.chars().take_while(|c| *c != '/' && *c != '?' && *c != '#').collect();
                if !uids.contains(uid.as_str()) {
                    bad(format!("a link to dashboard uid {uid:?}, which is not in dashboards/: {text}"));
                }
            }
        }
    }
    // The provisioning files exist and point where the JSON is mounted.
    let prov = repo().join("dashboards/provisioning");
    let dashboards_yaml = fs::read_to_string(prov.join("dashboards.yaml")).unwrap_or_default();
    if !dashboards_yaml.contains("path: /var/lib/grafana/dashboards") {
        problems.push("dashboards/provisioning/dashboards.yaml: no provider path /var/lib/grafana/dashboards".into());
    }
    let datasources_yaml = fs::read_to_string(prov.join("datasources.yaml")).unwrap_or_default();
    if !datasources_yaml.contains("type: prometheus") {
        problems.push("dashboards/provisioning/datasources.yaml: no prometheus datasource".into());
    }
    // Mounted as /etc/grafana/provisioning, Grafana reads the
    // subdirectories: there are the same files (symlinks).
    for (sub, text) in [("dashboards", &dashboards_yaml), ("datasources", &datasources_yaml)] {
        let linked = fs::read_to_string(prov.join(sub).join("querywatch.yaml")).unwrap_or_default();
        if linked != *text {
            problems.push(format!("dashboards/provisioning/{sub}/querywatch.yaml is not {sub}.yaml"));
        }
    }
    assert!(problems.is_empty(), "{} problem(s) in dashboards/:\n{}", problems.len(), problems.join("\n"));
}

/// `label_values(selector, label)` or `label_values(label)`.
fn parse_label_values(q: &str) -> Option<(Option<&str>, &str)> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    Some(match inner.rsplit_once(',') {
        Some((sel, label)) => (Some(sel.trim()), label.trim()),
        None => (None, inner.trim()),
    })
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A running Prometheus: its address and its process.
struct Prometheus {
    addr: String,
    _proc: Proc,
    log: PathBuf,
}

impl Prometheus {
    /// GET an API path; the `data` of a successful answer, or the error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(&self.addr, path);
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("{}: {}", v["errorType"].as_str().unwrap_or("?"), v["error"].as_str().unwrap_or(&body)))
        }
    }

    fn query(&self, expr: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", enc(expr)))
    }

    /// A `label_values` variable's values, as Grafana asks for them.
    fn label_values(&self, selector: Option<&str>, label: &str) -> Result<Vec<String>, String> {
        let path = match selector {
            Some(s) => format!("/api/v1/label/{label}/values?match[]={}", enc(s)),
            None => format!("/api/v1/label/{label}/values"),
        };
        let data = self.api(&path)?;
        Ok(data.as_array().unwrap_or(&Vec::new()).iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
    }
}

/// Where the prometheus binary is: `QUERYWATCH_PROMETHEUS`, else `PATH`,
/// else Debian's `/usr/bin/prometheus`.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUERYWATCH_PROMETHEUS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|p| p.is_file())
}

/// The rule files of `deploy/prometheus/rules/` copied into `dir` with
/// every `for:` and every group `interval:` set to 1s. Files without a `groups:` key (promtool unit
/// tests) are left out. Returns whether `alert` is defined.
fn copy_rules(dir: &Path, alert: &str) -> bool {
    fs::create_dir_all(dir).unwrap();
    let mut defined = false;
    let Ok(entries) = fs::read_dir(repo().join("deploy/prometheus/rules")) else { return false };
    for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if !p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            continue;
        }
        let text = fs::read_to_string(&p).unwrap();
        if !text.lines().any(|l| l.starts_with("groups:")) {
            continue;
        }
        let rewritten: Vec<String> = text
            .lines()
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                let key = l.trim_start().split(':').next().unwrap_or("");
                if key == "for" || key == "interval" { format!("{}{key}: 1s", &l[..indent]) } else { l.to_owned() }
            })
            .collect();
        defined |= text.lines().any(|l| l.trim_start().trim_start_matches("- ").trim() == format!("alert: {alert}"));
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        fs::write(dir.join(format!("{name}.yml")), rewritten.join("\n") + "\n").unwrap();
    }
    defined
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts Prometheus scraping the collector at `target` every second, with
/// the rule files in `rules`; waits until it is ready.
fn start_prometheus(bin: &Path, dir: &Path, target: &str, rules: &Path) -> Prometheus {
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: querywatch-collector\n    static_configs:\n      - targets: [{target:?}]\n",
            rules = rules.join("*.yml").display().to_string(),
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = dir.join("prometheus.stderr");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting prometheus");
    let mut p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!("prometheus exited ({status}):\n{}", fs::read_to_string(&log).unwrap_or_default());
        }
        if std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/-/ready").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus not ready within 30s:\n{}", fs::read_to_string(&log).unwrap());
        thread::sleep(Duration::from_millis(100));
    }
    Prometheus { addr, _proc: p, log }
}

/// The loaded rules that fail to evaluate: "group / rule: error".
fn rule_errors(prom: &Prometheus) -> Vec<String> {
    let rules = prom.api("/api/v1/rules").unwrap_or(Value::Null);
    let mut out = Vec::new();
    for g in rules["groups"].as_array().map(Vec::as_slice).unwrap_or_default() {
        for r in g["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if r["health"] == "err" {
                out.push(format!(
                    "{} / {}: {}\n    {}",
                    g["name"].as_str().unwrap_or("?"),
                    r["name"].as_str().unwrap_or("?"),
                    r["lastError"].as_str().unwrap_or("?"),
                    r["query"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    out
}

/// One panel target to run.
struct Query {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

fn queries(dash: &Value) -> Vec<Query> {
    let uid = dash["uid"].as_str().unwrap_or("?");
    let mut out = Vec::new();
    for p in panels(dash).into_iter().filter(|p| !is_row(p)) {
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push(Query {
                dashboard: uid.to_owned(),
                panel: p["title"].as_str().unwrap_or("?").to_owned(),
                ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                expr: t["expr"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    out
}

fn substitute(s: &str, values: &BTreeMap<String, String>) -> String {
    scan(s, |name, _| values.get(name).cloned())
}

/// Values for a dashboard's variables, in the order they are defined (a
/// variable's query may use the ones before it): a preferred value when
/// Prometheus knows it, else the first one. With `all`, multi-value
/// variables take their "All" value instead.
fn resolve(
    prom: &Prometheus,
    dash: &Value,
    preferred: &BTreeMap<&str, String>,
    all: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut values: BTreeMap<String, String> =
        BUILTINS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    for v in variables(dash) {
        let name = v["name"].as_str().unwrap_or("?");
        if v["type"] != "query" {
            continue;
        }
        let q = substitute(variable_query(v).unwrap_or(""), &values);
        let (selector, label) = parse_label_values(&q).ok_or_else(|| format!("variable {name}: {q}"))?;
        let found = prom.label_values(selector, label).map_err(|e| format!("variable {name} ({q}): {e}"))?;
        if found.is_empty() {
            return Err(format!("variable {name} ({q}) has no values"));
        }
        let chosen = if all && v["includeAll"] == true {
            v["allValue"].as_str().unwrap_or(".*").to_owned()
        } else {
            preferred.get(name).filter(|p| found.contains(p)).cloned().unwrap_or_else(|| found[0].clone())
        };
        values.insert(name.to_owned(), chosen);
    }
    Ok(values)
}

/// Why a query result is not data a panel can show, if it is not.
fn no_data(data: &Value) -> Option<String> {
    let finite = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok()).is_some_and(f64::is_finite);
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => {
            let r = result.as_array().map(Vec::as_slice).unwrap_or_default();
            if r.is_empty() {
                Some("no series".to_owned())
            } else if !r.iter().any(|s| finite(&s["value"])) {
                Some(format!("no finite value: {result}"))
            } else {
                None
            }
        }
        Some("scalar") => (!finite(result)).then(|| format!("scalar {result}")),
        other => Some(format!("unexpected result type {other:?}")),
    }
}

/// Runs every dashboard query; the offenders, one line each.
fn check_queries(
    prom: &Prometheus,
    all: &[(String, Value)],
    preferred: &BTreeMap<&str, String>,
    count: &mut usize,
) -> Vec<String> {
    let mut offenders = Vec::new();
    *count = 0;
    for (_, dash) in all {
        let uid = dash["uid"].as_str().unwrap_or("?");
        let multi = variables(dash).iter().any(|v| v["includeAll"] == true);
        for all_values in if multi { vec![false, true] } else { vec![false] } {
            let values = match resolve(prom, dash, preferred, all_values) {
                Ok(v) => v,
                Err(e) => {
                    offenders.push(format!("{uid}: {e}"));
                    continue;
                }
            };
            let shown: Vec<String> = variables(dash)
                .iter()
                .filter_map(|v| v["name"].as_str())
                .filter_map(|n| values.get(n).map(|x| format!("{n}={x}")))
                .collect();
            for q in queries(dash) {
                if MAY_BE_EMPTY.iter().any(|(d, p, _)| *d == q.dashboard && *p == q.panel) {
                    continue;
                }
                *count += 1;
                let expr = substitute(&q.expr, &values);
                let why = match prom.query(&expr) {
                    Err(e) => Some(format!("error: {e}")),
                    Ok(data) => no_data(&data),
                };
                if let Some(why) = why {
                    offenders.push(format!(
                        "{} / {:?} / {} [{}]: {why}\n    {expr}",
                        q.dashboard,
                        q.panel,
                        q.ref_id,
                        shown.join(" ")
                    ));
                }
            }
        }
    }
    offenders
}

/// Sets the flag when dropped, also when the test panics, so the workload
/// thread stops and the scope can end.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const SLOW: &str = "SELECT id, pad FROM big WHERE val = 4242";

#[test]
fn every_dashboard_query_has_data_in_a_real_prometheus() {
    let test = "every_dashboard_query_has_data_in_a_real_prometheus";
    if skip_pg(test) {
        return;
    }
    let Some(prometheus) = prometheus_bin() else {
        let fix = "install Debian's prometheus package (`scripts/deps.sh`, or as root `apt-get install -y \
                   prometheus`), or point QUERYWATCH_PROMETHEUS at the binary";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: prometheus not found: {fix}");
        eprintln!("\n{test}: SKIPPED — prometheus not found: {fix}\n");
        return;
    };
    let started = Instant::now();
    let all = dashboards();
    let dir = workdir();
    let nodes = three_nodes(&dir);
    let (_collector, grpc, api) = start_collector(&dir, "");
    let alert = "QuerywatchHotPartition";
    let alert_defined = copy_rules(&dir.join("rules"), alert);
    let prom = start_prometheus(&prometheus, &dir, &api, &dir.join("rules"));
    let _agents = start_agents(&dir, &nodes, &grpc, &api);

    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // The workload of collector_e2e (n2 skewed onto one partition, the
        // slow unindexed query on n1), then the same at a trickle until the
        // checks are done.
        s.spawn(|| {
            thread::scope(|s| {
                for (i, c) in nodes.iter().enumerate() {
                    s.spawn(move || partition_load(c, 3_000, if i == 1 { 90 } else { 0 }));
                }
                s.spawn(|| {
                    for _ in 0..40 {
                        nodes[0].psql_in("postgres", "shop", &["-c", SLOW]);
                    }
                });
            });
            while !stop.load(Ordering::Relaxed) {
                for (i, c) in nodes.iter().enumerate() {
                    partition_load(c, 300, if i == 1 { 90 } else { 0 });
                }
                nodes[0].psql_in("postgres", "shop", &["-c", SLOW]);
                thread::sleep(Duration::from_millis(200));
            }
        });

        // The statement the detail dashboard shows: the slow query, once it
        // is a top consumer (cluster-wide or on n1), so that its findings
        // panel has a row too.
        let mut fingerprint = String::new();
        wait_for(&api, "a hot partition, and the slow query as a top consumer", &dir, |l| {
            let (_, body) = http_get(&api, "/api/v1/queries?sort=time&limit=50");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let slow = v["queries"].as_array().and_then(|q| {
                q.iter().find(|q| q["text"].as_str().is_some_and(|t| t.contains("FROM big")))?["fingerprint"].as_str()
            });
            let Some(slow) = slow else { return false };
            fingerprint = slow.to_owned();
            !kind(l, "hot_partition").is_empty()
                && kind(l, "top_consumer").iter().any(|f| f["subject"] == format!("fingerprint:{slow}"))
        });
        eprintln!("{test}: the detail dashboard shows the slow query, fingerprint {fingerprint}");
        let preferred: BTreeMap<&str, String> =
            [("fingerprint", fingerprint), ("node", "n2".to_owned()), ("parent", "public.events".to_owned())].into();

        // Every query of every panel has data: polled until true, as the
        // scrapes, the detectors and the rates catch up.
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut count = 0;
        loop {
            let offenders = check_queries(&prom, &all, &preferred, &mut count);
            if offenders.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {count} dashboard queries failed or returned no data after 45s \
                     (Prometheus at {}, log {}):\n{}",
                    offenders.len(),
                    prom.addr,
                    prom.log.display(),
                    offenders.join("\n")
                );
            }
            thread::sleep(Duration::from_secs(1));
        }
        eprintln!("{test}: {count} dashboard queries have data ({:.0?} since start)", started.elapsed());

        // The hot-partition alert fires, for n2.
        if alert_defined {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let alerts = prom.api("/api/v1/alerts").unwrap();
                let ours: Vec<&Value> = alerts["alerts"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|a| a["labels"]["alertname"] == alert)
                    .collect();
                if ours.iter().any(|a| a["state"] == "firing" && a["labels"]["node"] == "n2") {
                    assert!(
                        ours.iter().all(|a| a["labels"]["node"] == "n2"),
                        "{alert} for a node other than n2: {alerts}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{alert} not firing for n2 within 30s: {alerts}\nrules that fail to evaluate:\n{}",
                    rule_errors(&prom).join("\n")
                );
                thread::sleep(Duration::from_millis(500));
            }
            eprintln!("{test}: {alert} firing for n2 ({:.0?} since start)", started.elapsed());
        } else {
            eprintln!(
                "\n{test}: NOT CHECKED — no rule file in deploy/prometheus/rules/ defines {alert}; \
                 the alert is asserted once one does\n"
            );
        }
        // Every rule of deploy/prometheus/rules/ evaluates on real series
        // (promtool's unit tests cannot show that for series they lack).
        let errors = rule_errors(&prom);
        assert!(errors.is_empty(), "rules that fail to evaluate in Prometheus:\n{}", errors.join("\n"));
    });
    drop(prom);
    let _ = fs::remove_dir_all(dir);
}
