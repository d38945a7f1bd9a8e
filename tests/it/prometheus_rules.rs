//! The Prometheus rules and configuration in `deploy/prometheus/`, checked
//! by the real `promtool` (Debian's `prometheus` package, which
//! `scripts/deps.sh` installs):
//! - `promtool check rules` and `promtool check config`;
//! - `promtool test rules` over `deploy/prometheus/tests/*.test.yml`: input
//!   series, expected alerts and recorded values;
//! - every alert has a test case where it fires and one where it must not,
//!   and `summary`, `description` and a `runbook_url` whose anchor is a
//!   heading of the README's runbook;
//! - every metric the rules read is one a running collector exposes.
//!
//! Without promtool the promtool tests fail under `CI=true` and are skipped,
//! loudly, elsewhere.

use crate::collector_e2e::{http_get, start_collector};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/rules/querywatch.rules.yml")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `promtool` on `PATH`, or `None` after saying the test is skipped; under
/// `CI=true` a missing promtool is a failure, never a skip.
pub(crate) fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("promtool")).find(|p| p.is_file()));
    if found.is_none() {
        let why = "promtool is not on PATH: run scripts/deps.sh (as root it installs Debian's \
                   `prometheus` package, which ships promtool)";
        crate::support::missing_tool(test, why);
    }
    found
}

/// Runs promtool with `args` in the repository; panics with its output
/// unless it succeeds. Returns stdout and stderr together.
fn promtool_ok(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", promtool.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    text
}

/// The `*.test.yml` files, relative to the repository, in name order.
fn rule_test_files() -> Vec<String> {
    let dir = repo().join("deploy/prometheus/tests");
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.yml"))
        .map(|n| format!("deploy/prometheus/tests/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.yml in {}", dir.display());
    files
}

/// One alerting rule as written in the rules file.
struct Alert {
    name: String,
    /// The rule's lines, up to the next rule.
    body: String,
}

/// The alerting rules, read line by line (`- alert: Name` starts one; the
/// next `- alert:` or `- record:` ends it).
fn alerts(rules: &str) -> Vec<Alert> {
    let mut out: Vec<Alert> = Vec::new();
    let mut current: Option<Alert> = None;
    for line in rules.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            out.extend(current.take());
            current = Some(Alert { name: name.trim().to_owned(), body: String::new() });
        } else if t.starts_with("- record:") {
            out.extend(current.take());
        } else if let Some(a) = current.as_mut() {
            a.body.push_str(line);
            a.body.push('\n');
        }
    }
    out.extend(current);
    out
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped,
/// spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn rules_pass_promtool_check() {
    let Some(promtool) = promtool("rules_pass_promtool_check") else { return };
    let out = promtool_ok(&promtool, &["check", "rules", "deploy/prometheus/rules/querywatch.rules.yml"]);
    assert!(out.contains("SUCCESS"), "promtool check rules said:\n{out}");
}

#[test]
fn rule_unit_tests_pass() {
    let Some(promtool) = promtool("rule_unit_tests_pass") else { return };
    let files = rule_test_files();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = promtool_ok(&promtool, &args);
    // One SUCCESS per file: a file promtool skipped would not say it.
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "promtool test rules said:\n{out}");
}

#[test]
fn prometheus_config_is_valid() {
    let Some(promtool) = promtool("prometheus_config_is_valid") else { return };
    let out = promtool_ok(&promtool, &["check", "config", "deploy/prometheus/prometheus.yml"]);
    // The config loads the rules file (paths relative to the config).
    assert!(out.contains("1 rule files found"), "promtool check config said:\n{out}");
}

/// Each alert is exercised both ways in the unit tests: a case that
/// expects it firing and a case that expects it silent (`exp_alerts: []`).
#[test]
fn every_alert_has_a_firing_and_a_silent_test_case() {
    let names: Vec<String> = alerts(&read(&rules_file())).into_iter().map(|a| a.name).collect();
    assert!(names.iter().any(|n| n == "QuerywatchHotPartition"), "QuerywatchHotPartition missing: {names:?}");
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for file in rule_test_files() {
        let text = read(&repo().join(&file));
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.trim_start().strip_prefix("alertname:") else { continue };
            let name = name.trim().to_owned();
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            match next {
                "exp_alerts: []" => silent.insert(name),
                "exp_alerts:" => firing.insert(name),
                other => panic!("{file}: after `alertname: {name}` expected exp_alerts, found {other:?}"),
            };
        }
    }
    let missing: Vec<String> = names
        .iter()
        .flat_map(|n| {
            let f = (!firing.contains(n)).then(|| format!("{n}: no firing case"));
            let s = (!silent.contains(n)).then(|| format!("{n}: no must-not-fire case"));
            f.into_iter().chain(s)
        })
        .collect();
    assert!(missing.is_empty(), "alert test coverage:\n{}", missing.join("\n"));
    let unknown: Vec<&String> = firing.union(&silent).filter(|n| !names.contains(n)).collect();
    assert!(unknown.is_empty(), "tests name alerts the rules do not have: {unknown:?}");
}

/// `summary`, `description`, a severity, and a runbook link into the
/// README whose anchor exists.
#[test]
fn every_alert_is_documented_in_the_runbook() {
    let readme = read(&repo().join("README.md"));
    let anchors: BTreeSet<String> =
        readme.lines().filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## "))).map(anchor).collect();
    for a in alerts(&read(&rules_file())) {
        for key in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(a.body.contains(key), "{}: no {key}", a.name);
        }
        let url = a.body.lines().find_map(|l| l.trim().strip_prefix("runbook_url:")).map(str::trim).unwrap_or_default();
        let (_, fragment) = url.split_once("README.md#").unwrap_or_else(|| panic!("{}: runbook_url {url:?}", a.name));
        assert_eq!(fragment, a.name.to_lowercase(), "{}: the anchor is the alert's name", a.name);
        assert!(anchors.contains(fragment), "{}: README.md has no heading with anchor #{fragment}", a.name);
    }
}

/// The metric names in the rules' expressions (`querywatch_*`), with the
/// alternatives of a `__name__=~"prefix_(a|b)_suffix"` matcher expanded.
fn metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let exprs: String = rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (start, _) in exprs.match_indices("querywatch_") {
        if start > 0 && exprs[..start].ends_with(|c: char| word(c) || c == ':') {
            continue;
        }
        let rest = &exprs[start..];
        let end = rest.find(|c: char| !word(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        if rest[end..].starts_with('(') {
            // prefix_(a|b|c)_suffix inside a regex matcher
            let close = rest.find(')').expect("a closing parenthesis");
            let suffix_end = rest[close + 1..].find(|c: char| !word(c)).map_or(rest.len(), |i| close + 1 + i);
            for alt in rest[end + 1..close].split('|') {
                names.insert(format!("{name}{alt}{}", &rest[close + 1..suffix_end]));
            }
        } else if !name.ends_with('_') {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Series the rules read that the collector does not expose yet, and why
/// (empty: every one is exposed; kept for the next rule written ahead).
const NOT_YET_EXPOSED: &[(&str, &str)] = &[];

/// Every metric a rule reads exists in a real collector's `/metrics` (its
/// `# TYPE` lines list every family, with or without samples), so a
/// renamed metric cannot leave an alert that never fires.
#[test]
fn rules_read_metrics_the_collector_exposes() {
    let used = metric_names(&read(&rules_file()));
    assert!(used.contains("querywatch_table_seq_tup_read_total"), "regex alternatives not expanded: {used:?}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_collector, _grpc, api) = start_collector(dir.path(), "");
    let (status, body) = http_get(&api, "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    let mut exposed = BTreeSet::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
        exposed.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["_sum", "_count"],
            _ => &[],
        };
        exposed.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    let mut missing = Vec::new();
    for name in &used {
        if exposed.contains(name) {
            continue;
        }
        match NOT_YET_EXPOSED.iter().find(|(n, _)| n == name) {
            Some((_, why)) => eprintln!("rules_read_metrics_the_collector_exposes: {name} not checked: {why}"),
            None => missing.push(name.as_str()),
        }
    }
    assert!(missing.is_empty(), "the rules read metrics /metrics does not have: {missing:?}");
}
