//! Writing metrics at scrape time, through `prometheus-client`'s encoder.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::fmt;

/// Writes metrics at scrape time. Counter names get `_total` appended by the
/// encoder.
pub struct Scrape<'a>(pub(super) DescriptorEncoder<'a>);

impl Scrape<'_> {
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    /// A counter of seconds (CPU time).
    pub fn counter_f64(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(m)
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }

    /// One counter per value of the label `key`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        key: &str,
        vs: &[(&str, u64)],
    ) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for &(label, v) in vs {
            let set = [(key, label)];
            ConstCounter::new(v).encode(m.encode_family(&set)?)?;
        }
        Ok(())
    }

    /// One counter per pair of values of the labels `keys`.
    pub fn counters2(
        &mut self,
        name: &str,
        help: &str,
        keys: (&str, &str),
        vs: &[(&str, &str, u64)],
    ) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for &(a, b, v) in vs {
            let set = [(keys.0, a), (keys.1, b)];
            ConstCounter::new(v).encode(m.encode_family(&set)?)?;
        }
        Ok(())
    }

    /// One gauge per value of the label `key`.
    pub fn gauges(&mut self, name: &str, help: &str, key: &str, vs: &[(&str, f64)]) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for &(label, v) in vs {
            let set = [(key, label)];
            ConstGauge::new(v).encode(m.encode_family(&set)?)?;
        }
        Ok(())
    }
}
