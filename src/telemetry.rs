//! Logs (tracing) and metrics (Prometheus), set up once per process.
//!
//! [`METRICS`] is the one list of every metric the API and the workers
//! export, with its type, unit and help text; both describe every entry at
//! start, so each series on `/metrics` has its `# HELP` line. A test reads
//! the sources and fails on a metric name missing from the list.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// A warning that could fire on every request or connection, logged at
/// most once a period: `Rarely::every(Duration::from_secs(60))` in a static
/// is process-wide.
pub struct Rarely {
    /// When it last said yes, in ms of the monotonic clock since the first
    /// use of any `Rarely`; 0: never.
    last_ms: std::sync::atomic::AtomicU64,
    period_ms: u64,
}

impl Rarely {
    pub const fn every(period: std::time::Duration) -> Self {
        Self {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            period_ms: period.as_secs() * 1000 + period.subsec_millis() as u64,
        }
    }

    /// True when the last yes is a period ago (or there was none); then
    /// not again for a period, however many ask at once.
    pub fn now(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        static BASE: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        let now = (BASE.elapsed().as_millis() as u64).max(1);
        let before = self.last_ms.load(Relaxed);
        (before == 0 || now.saturating_sub(before) >= self.period_ms)
            && self
                .last_ms
                .compare_exchange(before, now, Relaxed, Relaxed)
                .is_ok()
    }
}

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`),
/// `LOG_FORMAT=json` writes one JSON object a line.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
}

/// Latency buckets in seconds: fine below 25 ms, where the service should
/// live, coarse above.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Time in the queue, join to admission: seconds to hours.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric of flashsale: name, type, unit, help. The labels are named
/// in the help text.
pub const METRICS: &[(&str, Kind, Option<Unit>, &str)] = {
    use Kind::*;
    &[
        // --- the process ---------------------------------------------------
        ("flashsale_build_info", Gauge, None,
         "Always 1; labels version and git_sha name the build running."),
        // --- HTTP ----------------------------------------------------------
        ("flashsale_http_requests_total", Counter, Some(Unit::Count),
         "API requests answered, by route template, method and status."),
        ("flashsale_http_request_duration_seconds", Histogram, Some(Unit::Seconds),
         "Time to answer an API request, by route template and method."),
        ("flashsale_connections_open", Gauge, Some(Unit::Count),
         "HTTP connections open."),
        ("flashsale_connections_refused_total", Counter, Some(Unit::Count),
         "Connections closed at once because MAX_CONNECTIONS were open."),
        ("flashsale_connections_timed_out_total", Counter, Some(Unit::Count),
         "Connections closed by a timeout, by phase (header: the request head was not complete in time; idle: keep-alive idle too long)."),
        ("flashsale_untrusted_forwarded_for_total", Counter, Some(Unit::Count),
         "Requests carrying X-Forwarded-For from a peer not in TRUSTED_PROXIES (the header is ignored)."),
        ("flashsale_queue_event_streams", Gauge, Some(Unit::Count),
         "Queue event streams (server-sent events) open."),
        ("flashsale_queue_event_watchers", Gauge, Some(Unit::Count),
         "Sales watched for their event streams (one Redis call each per PUSH_WATCH_INTERVAL_MS)."),
        ("flashsale_queue_events_total", Counter, Some(Unit::Count),
         "Status events sent on the queue event streams."),
        ("flashsale_shed_total", Counter, Some(Unit::Count),
         "API requests shed with 503 because MAX_IN_FLIGHT were being served."),
        ("flashsale_rate_limited_total", Counter, Some(Unit::Count),
         "Requests refused with 429, by limit (address, join, poll, hold, login...)."),
        ("flashsale_rate_limit_keys", Gauge, Some(Unit::Count),
         "Keys the in-memory rate limiters of this process remember."),
        ("flashsale_shared_rate_limit_errors_total", Counter, Some(Unit::Count),
         "Shared (Redis) rate-limit checks that failed or timed out; the request went on (fails open)."),
        ("flashsale_pass_refusals_total", Counter, Some(Unit::Count),
         "Holds refused for the queue pass, by reason."),
        ("flashsale_lost_sale_lookups_total", Counter, Some(Unit::Count),
         "Postgres lookups of a sale that Redis did not know."),
        // --- stores --------------------------------------------------------
        ("flashsale_store_up", Gauge, None,
         "1 when the store answered the last readiness check, else 0; by store (redis, postgres)."),
        ("flashsale_store_errors_total", Counter, Some(Unit::Count),
         "Requests answered 503 because a store was unavailable, by store."),
        ("flashsale_script_reloads_total", Counter, Some(Unit::Count),
         "Lua scripts loaded again after Redis answered NOSCRIPT, by script."),
        ("flashsale_confirm_replication_wait_seconds", Histogram, Some(Unit::Seconds),
         "Time a confirmation or cancellation waited for its Redis replicas, by change."),
        ("flashsale_confirm_replication_timeouts_total", Counter, Some(Unit::Count),
         "Confirmations or cancellations answered 503 because replicas did not acknowledge in time, by change."),
        // --- the queue -----------------------------------------------------
        ("flashsale_queue_joins_total", Counter, Some(Unit::Count),
         "Buyers' joins of a sale's queue."),
        ("flashsale_queue_waiting", Gauge, Some(Unit::Count),
         "Buyers waiting in the queue, by sale."),
        ("flashsale_queue_active", Gauge, Some(Unit::Count),
         "Buyers admitted and still shopping, by sale."),
        ("flashsale_queue_admitted_total", Counter, Some(Unit::Count),
         "Buyers admitted from the queue, by sale."),
        ("flashsale_queue_abandoned_total", Counter, Some(Unit::Count),
         "Waiting buyers dropped for not polling, by sale."),
        ("flashsale_queue_passes_lapsed_total", Counter, Some(Unit::Count),
         "Admissions whose pass lapsed unused, by sale."),
        ("flashsale_queue_wait_seconds", Histogram, Some(Unit::Seconds),
         "Time from joining the queue to admission, by sale."),
        // --- stock ---------------------------------------------------------
        ("flashsale_holds_total", Counter, Some(Unit::Count),
         "Holds placed."),
        ("flashsale_held_tickets_total", Counter, Some(Unit::Count),
         "Tickets held by the holds placed."),
        ("flashsale_sold_out_refusals_total", Counter, Some(Unit::Count),
         "Holds refused because the zone had too few tickets left."),
        ("flashsale_confirms_total", Counter, Some(Unit::Count),
         "Holds confirmed."),
        ("flashsale_cancels_total", Counter, Some(Unit::Count),
         "Reservations cancelled."),
        ("flashsale_expiries_total", Counter, Some(Unit::Count),
         "Holds expired, their tickets returned."),
        ("flashsale_stock_available", Gauge, Some(Unit::Count),
         "Tickets on sale, by sale and zone (live sales only; series leave when a sale is archived)."),
        ("flashsale_stock_held", Gauge, Some(Unit::Count),
         "Tickets held and not yet confirmed, by sale and zone (live sales only)."),
        ("flashsale_stock_confirmed", Gauge, Some(Unit::Count),
         "Tickets confirmed, by sale and zone (live sales only)."),
        // --- workers -------------------------------------------------------
        ("flashsale_worker_errors_total", Counter, Some(Unit::Count),
         "Worker steps that failed or were abandoned, by worker."),
        ("flashsale_worker_step_timeouts_total", Counter, Some(Unit::Count),
         "Worker steps abandoned after WORKER_STEP_TIMEOUT_SECONDS, by worker."),
        ("flashsale_sink_rows_total", Counter, Some(Unit::Count),
         "Stream entries written to Postgres by the sink, by kind (confirmed, cancelled)."),
        ("flashsale_sink_retries_total", Counter, Some(Unit::Count),
         "Stream entries the sink failed to write and will retry."),
        ("flashsale_sink_dead_letters_total", Counter, Some(Unit::Count),
         "Stream entries set aside after too many failed deliveries, by sale."),
        ("flashsale_sink_batch_size", Histogram, Some(Unit::Count),
         "Stream entries per sink batch."),
        ("flashsale_sink_batch_seconds", Histogram, Some(Unit::Seconds),
         "Time to write one sink batch to Postgres."),
        ("flashsale_stream_lag_entries", Gauge, Some(Unit::Count),
         "Stream entries the sink has not acknowledged yet, by sale."),
        ("flashsale_reconcile_drift", Gauge, Some(Unit::Count),
         "Tickets confirmed in Redis less those in flight less those in Postgres, by sale and zone: 0 when they agree."),
        ("flashsale_oversold", Gauge, Some(Unit::Count),
         "Tickets confirmed beyond capacity, by sale and zone: must be 0."),
        ("flashsale_conservation_gap", Gauge, Some(Unit::Count),
         "Capacity less available, held and confirmed in Redis, by sale and zone: must be 0."),
        ("flashsale_seat_gap", Gauge, Some(Unit::Count),
         "A seated zone's seats that disagree with its tickets (seat map against counters in Redis, sold seats against recorded tickets in Postgres), by sale and zone: must be 0."),
        ("flashsale_sale_frozen", Gauge, None,
         "1 while a sale is frozen and needs `flashsale restore`, by sale."),
        ("flashsale_sales_live", Gauge, Some(Unit::Count),
         "Sales not archived."),
        ("flashsale_sales_archived_total", Counter, Some(Unit::Count),
         "Sales moved out of Redis by the archiver."),
    ]
};

/// The help text of `name` in [`METRICS`] (empty when it is not there).
pub fn help(name: &str) -> &'static str {
    METRICS.iter().find(|m| m.0 == name).map_or("", |m| m.3)
}

fn describe_all() {
    for &(name, kind, unit, help) in METRICS {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
    metrics::gauge!(
        "flashsale_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "git_sha" => option_env!("FLASHSALE_GIT_SHA").unwrap_or("unknown"),
    )
    .set(1.0);
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls
/// return the same handle, which lets tests start many servers).
pub fn metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("flashsale_queue_wait_seconds".into()),
                    WAIT_BUCKETS,
                )
                .expect("bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe_all();
            let upkeep = handle.clone();
            // Histograms are drained into the exporter by upkeep; without it
            // they grow without bound.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_rare_warning_is_said_once_a_period() {
        let rarely = Rarely::every(std::time::Duration::from_secs(60));
        assert!(rarely.now());
        assert!(!rarely.now());
        let often = Rarely::every(std::time::Duration::ZERO);
        assert!(often.now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(often.now());
    }
    use super::*;

    /// Names in string literals that are not metrics.
    const NOT_METRICS: &[&str] = &["flashsale_session"];

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                out.push((path.display().to_string(), text));
            }
        }
    }

    /// Every `"flashsale_..."` literal in the API's and the workers' sources
    /// is a metric of the table, of the type its macro says: a metric added
    /// without a description fails here.
    #[test]
    fn every_metric_in_the_sources_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        sources(&root.join("workers/src"), &mut files);
        let mut seen = 0;
        for (path, text) in &files {
            for (at, _) in text.match_indices("\"flashsale_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if NOT_METRICS.contains(&name.as_str()) || path.ends_with("telemetry.rs") {
                    continue;
                }
                seen += 1;
                let Some(&(_, kind, _, help)) = METRICS.iter().find(|m| m.0 == name) else {
                    panic!("{path}: metric {name} is not in telemetry::METRICS");
                };
                assert!(!help.is_empty(), "{name} has no help text");
                let before = text[..at].trim_end();
                let before = before.strip_suffix('(').unwrap_or(before).trim_end();
                for (mac, k) in [
                    ("counter!", Kind::Counter),
                    ("gauge!", Kind::Gauge),
                    ("histogram!", Kind::Histogram),
                ] {
                    if before.ends_with(mac) {
                        assert_eq!(kind, k, "{path}: {name} is a {k:?} there");
                    }
                }
            }
        }
        assert!(seen > 30, "the scan found the metrics ({seen})");
        let mut names: Vec<_> = METRICS.iter().map(|m| m.0).collect();
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(len, names.len(), "a metric is listed twice");
    }

    /// The exposition carries each metric's `# HELP` line, and
    /// `flashsale_build_info`.
    #[test]
    fn the_exposition_has_help_lines_and_the_build_info() {
        let handle = metrics();
        metrics::counter!("flashsale_shed_total").increment(0);
        let text = handle.render();
        assert!(
            text.contains("# HELP flashsale_shed_total API requests shed"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "flashsale_build_info{{version=\"{}\",git_sha=\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("# HELP flashsale_build_info"), "{text}");
    }
}
