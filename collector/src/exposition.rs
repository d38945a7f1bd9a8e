//! The collector's metrics as data: families of labelled samples, built
//! once per scrape or push. `/metrics` renders them as Prometheus text
//! ([`Exposition::text`]); [`crate::forward`] sends the same families as
//! OTLP, so both always carry the same series with the same bounds on
//! their labels.

use std::fmt::Write;

/// A metric family's type, as Prometheus' `# TYPE` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// One sample line: its name (a histogram's or summary's carries the
/// `_bucket`, `_sum` or `_count` suffix), labels in order, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// When a cumulative series began counting (ms), if not when the
    /// collector started. Not part of the text format; OTLP sends it.
    pub start: Option<i64>,
}

/// A family: `# HELP`, `# TYPE` and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// Families in the order they were started.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    /// Starts a family; the samples added next belong to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.families.push(Family { name: name.into(), kind, help: help.into(), samples: Vec::new() });
    }

    /// A sample of the family started last (none started: dropped, a bug
    /// the tests would show as a missing series).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, labels, value, None);
    }

    /// A sample of a cumulative series that began counting at `start` (ms).
    pub fn sample_since(&mut self, name: &str, labels: &[(&str, &str)], value: f64, start: i64) {
        self.push(name, labels, value, Some(start));
    }

    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64, start: Option<i64>) {
        if let Some(f) = self.families.last_mut() {
            let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            f.samples.push(Sample { name: name.into(), labels, value, start });
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", f.name, f.help, f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(&s.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", esc(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", s.value);
            }
        }
        out
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_help_type_and_escaped_labels() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut e = Exposition::default();
        e.family("m", Kind::Gauge, "A gauge.");
        e.sample("m", &[("k", "v\"")], 1.5);
        e.sample("m", &[], 2.0);
        assert_eq!(e.text(), "# HELP m A gauge.\n# TYPE m gauge\nm{k=\"v\\\"\"} 1.5\nm 2\n");
    }
}
