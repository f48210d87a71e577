//! `/metrics`: a registry built per scrape around the mode's [`Report`] and
//! the process's metrics, encoded by `prometheus-client`. Nothing is kept
//! between scrapes: the values are the data path's own counters, read now.

use super::process::Process;
use super::report::Report;
use super::scrape::Scrape;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;

/// OpenMetrics text, which `prometheus-client` writes (Prometheus reads it).
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of the process: the mode's under `sockstun_`, the process's
/// under `process_` (the names every exporter uses).
pub fn render(report: &Arc<dyn Report>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Process));
    reg.sub_registry_with_prefix("sockstun")
        .register_collector(Box::new(Mode(report.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!("admin: encoding the metrics failed: {e}");
    }
    out
}

struct Mode(Arc<dyn Report>);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mode")
    }
}

impl Collector for Mode {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.metrics(&mut Scrape(encoder))
    }
}
