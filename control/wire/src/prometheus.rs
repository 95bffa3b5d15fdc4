//! The Prometheus text exposition format, as the controller and the agent write it.

use std::fmt::{Display, Write as _};

/// Escapes a label value.
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An exposition being written, family by family.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// A family's `# HELP` and `# TYPE` lines.
    pub fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample: `name{labels} value`, or `name value` without labels.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{labels}}} {value}")
        };
    }

    /// A family: its head, then one sample per (labels, value).
    pub fn family<L: AsRef<str>, V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.head(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels.as_ref(), value);
        }
    }

    /// The text written.
    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels_and_escapes() {
        let mut t = Text::default();
        t.family("a_total", "counter", "As.", [("", 3)]);
        t.family(
            "b",
            "gauge",
            "Bs.",
            [(format!("x=\"{}\"", esc("q\"\\\n")), 1.5)],
        );
        t.family("c", "gauge", "None yet.", Vec::<(String, u8)>::new());
        assert_eq!(
            t.into_string(),
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Bs.\n# TYPE b gauge\nb{x=\"q\\\"\\\\\\n\"} 1.5\n\
             # HELP c None yet.\n# TYPE c gauge\n"
        );
    }
}
