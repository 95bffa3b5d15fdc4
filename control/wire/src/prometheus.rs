//! Prometheus expositions, as the controller and the agent write them: both build a snapshot of
//! what they know at scrape time and encode it through `prometheus-client` (OpenMetrics text,
//! which Prometheus reads; `# EOF` last).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::DescriptorEncoder as Encoder;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One series' labels: (name, value) pairs, in order.
pub type Labels = Vec<(&'static str, String)>;

/// Escapes a label value (`prometheus-client` writes values as they are).
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The encoder of one series: the family's own without labels (no `{}`), else one with the
/// labels, their values escaped.
fn series<'a>(
    m: &'a mut MetricEncoder<'_>,
    labels: &'a [(&'static str, String)],
    f: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    if labels.is_empty() {
        return f(m);
    }
    let escaped: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, esc(v))).collect();
    f(&mut m.encode_family(&escaped)?)
}

/// A gauge family: one sample per (labels, value). A family without samples still has its
/// `# HELP` and `# TYPE` lines.
pub fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        series(&mut m, &labels, |s| s.encode_gauge(&v))?;
    }
    Ok(())
}

/// A counter family; `name` without `_total` (the encoder appends it to each sample).
pub fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        series(&mut m, &labels, |s| {
            s.encode_counter::<NoLabelSet, _, u64>(&v, None)
        })?;
    }
    Ok(())
}

/// A counter family of fractional values (seconds); `name` without `_total`.
pub fn counter_f64(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        series(&mut m, &labels, |s| {
            s.encode_counter::<NoLabelSet, _, f64>(&v, None)
        })?;
    }
    Ok(())
}

/// A histogram without labels: `buckets` are (upper bound, cumulative count), +Inf excluded.
pub fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    sum: f64,
    count: u64,
    buckets: &[(f64, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    // prometheus-client writes `le="+Inf"` for the bucket bounded by f64::MAX.
    let mut all = buckets.to_vec();
    all.push((f64::MAX, count));
    // Its encoder wants per-bucket (not cumulative) counts.
    let mut prev = 0;
    for b in &mut all {
        let c = b.1;
        b.1 = c.saturating_sub(prev);
        prev = c;
    }
    m.encode_histogram::<NoLabelSet>(sum, count, &all, None)
}

struct FnCollector<F>(F);

impl<F> fmt::Debug for FnCollector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}

/// The exposition `write` encodes, as text ([`CONTENT_TYPE`]).
pub fn render<F>(write: F) -> String
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FnCollector(write)));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a family above.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        log::error!("metrics exposition failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_with_and_without_labels_escape_and_end_with_eof() {
        let t = render(|e| {
            counter(e, "a", "As.", [(Labels::new(), 3)])?;
            gauge(e, "b", "Bs.", [(vec![("x", "q\"\\\n".to_string())], 1.5)])?;
            gauge(e, "c", "None yet.", Vec::<(Labels, i64)>::new())?;
            histogram(e, "d_seconds", "Ds.", 0.5, 3, &[(0.001, 1), (0.01, 2)])
        });
        for want in [
            "# HELP a As.\n# TYPE a counter\na_total 3\n",
            "# TYPE b gauge\nb{x=\"q\\\"\\\\\\n\"} 1.5\n",
            "# HELP c None yet.\n# TYPE c gauge\n# HELP d_seconds",
            "d_seconds_bucket{le=\"0.001\"} 1\nd_seconds_bucket{le=\"0.01\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\n",
            "d_seconds_sum 0.5\nd_seconds_count 3\n",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}
