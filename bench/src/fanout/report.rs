//! The run's report: one JSON line for tooling (its keys are what BENCHMARKS.md and
//! the tests read) and a few lines for people, from the same typed value.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::hist::Histogram;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// 8 hex digits in every marker of this run.
    pub run: String,
    pub urls: Vec<String>,
    pub subscribers: usize,
    /// Subscribers that connected and joined.
    pub connected: u64,
    pub connect_join: ConnectJoin,
    pub target_rate: f64,
    pub target_duration_s: f64,
    /// Deliveries complete within `--max-loss`, and nothing failed.
    pub ok: bool,
    /// Absent when the run stopped before publishing (subscribers could not join).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long connecting and joining took, per subscriber.
#[derive(Debug, Serialize)]
pub struct ConnectJoin {
    pub total_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

/// What was published and what arrived.
#[derive(Debug, Serialize)]
pub struct Delivery {
    pub messages_published: u64,
    pub publish_s: f64,
    /// From the first send to the last: sent - 1 intervals.
    pub publish_rate: f64,
    pub publisher_max_lag_ms: f64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub loss: f64,
    /// Every expected delivery arrived before `--drain-timeout`.
    pub drained: bool,
    /// From the first send to the last delivery.
    pub elapsed_s: f64,
    pub delivered_per_s: f64,
    pub latency_ms: Latency,
    pub out_of_order: u64,
    /// Text frames that were neither deliveries nor errors.
    pub other_frames: u64,
    pub error_frames: u64,
    pub error_codes: BTreeMap<String, u64>,
    /// Connections closed during the run, by close code or error.
    pub closed: BTreeMap<String, u64>,
    /// Per URL (replica), when there were several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_url: Vec<UrlDeliveries>,
}

/// Publish-to-delivery latency, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram) -> Self {
        Self {
            p50: ms(h.quantile(0.50)),
            p90: ms(h.quantile(0.90)),
            p99: ms(h.quantile(0.99)),
            p999: ms(h.quantile(0.999)),
            max: ms(h.max()),
            mean: round(h.mean() / 1e3, 3),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UrlDeliveries {
    pub url: String,
    pub deliveries: u64,
    pub latency_ms: UrlLatency,
}

#[derive(Debug, Serialize)]
pub struct UrlLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl UrlLatency {
    pub fn of(h: &Histogram) -> Self {
        Self {
            p50: ms(h.quantile(0.50)),
            p99: ms(h.quantile(0.99)),
            max: ms(h.max()),
            mean: round(h.mean() / 1e3, 3),
        }
    }
}

pub fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Microseconds as milliseconds, to the microsecond.
pub fn ms(us: u64) -> f64 {
    round(us as f64 / 1e3, 3)
}

/// The report for people, several lines.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.connect_join;
        writeln!(
            f,
            "fanout run {}: {} of {} subscribers joined via {} in {} s (connect+join p50 {} ms, p99 {} ms, max {} ms)",
            self.run,
            self.connected,
            self.subscribers,
            self.urls.join(", "),
            c.total_s,
            c.p50_ms,
            c.p99_ms,
            c.max_ms,
        )?;
        if let Some(d) = &self.delivery {
            let l = &d.latency_ms;
            writeln!(
                f,
                "published {} messages in {} s ({}/s, target {}/s, publisher max lag {} ms)",
                d.messages_published,
                d.publish_s,
                d.publish_rate,
                self.target_rate,
                d.publisher_max_lag_ms
            )?;
            writeln!(
                f,
                "deliveries {} of {} expected (loss {}), {} delivered/s over {} s{}",
                d.deliveries_received,
                d.deliveries_expected,
                d.loss,
                d.delivered_per_s,
                d.elapsed_s,
                if d.drained { "" } else { " (drain timed out)" },
            )?;
            writeln!(
                f,
                "latency ms: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            )?;
            writeln!(
                f,
                "ERROR frames {} {:?}, closed {:?}, out of order {}, other frames {}",
                d.error_frames, d.error_codes, d.closed, d.out_of_order, d.other_frames
            )?;
            for u in &d.by_url {
                let l = &u.latency_ms;
                writeln!(
                    f,
                    "  via {}: {} deliveries, latency ms p50 {}  p99 {}  max {}  mean {}",
                    u.url, u.deliveries, l.p50, l.p99, l.max, l.mean
                )?;
            }
        }
        match &self.error {
            Some(e) => writeln!(f, "FAILED: {e}"),
            None => writeln!(f, "ok"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(delivery: Option<Delivery>) -> Report {
        Report {
            scenario: "fanout",
            run: "0badf00d".into(),
            urls: vec!["ws://127.0.0.1:1/ws".into()],
            subscribers: 2,
            connected: 2,
            connect_join: ConnectJoin {
                total_s: 0.1,
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
                errors: 0,
            },
            target_rate: 10.0,
            target_duration_s: 1.0,
            ok: delivery.is_some(),
            delivery,
            error: None,
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        v.as_object()
            .into_iter()
            .flat_map(|o| o.keys().map(String::as_str))
            .collect()
    }

    #[test]
    fn the_json_line_keeps_the_keys_tooling_reads() {
        let h = Histogram::default();
        let full = report(Some(Delivery {
            messages_published: 3,
            publish_s: 0.2,
            publish_rate: 10.0,
            publisher_max_lag_ms: 0.1,
            deliveries_expected: 6,
            deliveries_received: 6,
            loss: 0.0,
            drained: true,
            elapsed_s: 0.3,
            delivered_per_s: 20.0,
            latency_ms: Latency::of(&h),
            out_of_order: 0,
            other_frames: 0,
            error_frames: 0,
            error_codes: BTreeMap::new(),
            closed: BTreeMap::new(),
            by_url: Vec::new(),
        }));
        let v = serde_json::to_value(&full).unwrap();
        let mut k = keys(&v);
        k.sort_unstable();
        assert_eq!(
            k,
            [
                "closed",
                "connect_join",
                "connected",
                "delivered_per_s",
                "deliveries_expected",
                "deliveries_received",
                "drained",
                "elapsed_s",
                "error_codes",
                "error_frames",
                "latency_ms",
                "loss",
                "messages_published",
                "ok",
                "other_frames",
                "out_of_order",
                "publish_rate",
                "publish_s",
                "publisher_max_lag_ms",
                "run",
                "scenario",
                "subscribers",
                "target_duration_s",
                "target_rate",
                "urls",
            ]
        );
        let mut l = keys(&v["latency_ms"]);
        l.sort_unstable();
        assert_eq!(l, ["max", "mean", "p50", "p90", "p99", "p999"]);
        assert!(full.to_string().ends_with("ok\n"), "{full}");

        // Stopped before publishing: no delivery figures, and the error says why.
        let mut early = report(None);
        early.error = Some("1 of 2 subscribers could not connect and join".into());
        let v = serde_json::to_value(&early).unwrap();
        assert!(v.get("messages_published").is_none(), "{v}");
        assert_eq!(v["error"], "1 of 2 subscribers could not connect and join");
        assert!(early.to_string().contains("FAILED: 1 of 2"), "{early}");
    }
}
