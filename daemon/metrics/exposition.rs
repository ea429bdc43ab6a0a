//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! a `# HELP` and `# TYPE` line per family, then one line per sample with
//! its labels, label values escaped as the format requires. Knows nothing
//! about what is measured.

use std::fmt::{Display, Write};

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts family `name`; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_into(&mut self.text, text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// The samples of a histogram: cumulative `_bucket`s for each bound
    /// (in seconds) and `+Inf`, `_sum` (seconds) and `_count`. `counts`
    /// has one more entry than `bounds_ns`, for what is past them all.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds_ns: &[u64],
        counts: &[u64],
        sum_ns: u64,
    ) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, count) in counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*count);
            let le = bounds_ns
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |ns| seconds(*ns).to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, seconds(sum_ns));
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.text
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// A label value as the format quotes it: `\`, `"` and newline escaped.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_escaped_labels_and_cumulative_buckets() {
        let mut out = Exposition::default();
        out.family("x_total", Kind::Counter, "Things.");
        out.sample("x_total", &[("node", "a\"b\\c\nd"), ("op", "read")], 3);
        out.family("lat_seconds", Kind::Histogram, "Latency.");
        out.histogram(
            "lat_seconds",
            &[("op", "w")],
            &[1_000, 2_000_000],
            &[1, 2, 3],
            4_000,
        );
        assert_eq!(
            out.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{node=\"a\\\"b\\\\c\\nd\",op=\"read\"} 3\n\
             # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
             lat_seconds_bucket{op=\"w\",le=\"0.000001\"} 1\n\
             lat_seconds_bucket{op=\"w\",le=\"0.002\"} 3\n\
             lat_seconds_bucket{op=\"w\",le=\"+Inf\"} 6\n\
             lat_seconds_sum{op=\"w\"} 0.000004\n\
             lat_seconds_count{op=\"w\"} 6\n"
        );
    }
}
