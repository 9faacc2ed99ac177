//! The process's Prometheus metrics (`optlock_*`), their hot-path recording API and their
//! OpenMetrics text encoding.
//!
//! Everything a relay calls per message or per statement is one or two relaxed atomic
//! additions: counters are registered up front, per-table counters are found by the table's
//! process-wide id ([`TableId`], the same in every config generation, so a write analysed
//! before a reload is still counted under its own table) in a table filled by
//! [`Metrics::set_tables`] at start and on reload, and the latency histogram is a fixed array of
//! atomic buckets. Write locks are taken only at reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::events::{ClientError, Direction, Outcome, PoolEvent};
use crate::guard::TableId;

type TableLabels = [(&'static str, String); 2];

/// A latency histogram whose observation is two relaxed atomic additions.
///
/// Buckets are kept per bucket (not cumulative) in integer nanoseconds and made cumulative when
/// encoded.
#[derive(Debug)]
struct AtomicHistogram {
    bounds_ns: &'static [u64],
    /// One per bound, plus the `+Inf` bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// Upper bounds of `optlock_added_latency_seconds`: 1µs to 100ms, 1-2.5-5 per decade.
const LATENCY_BOUNDS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

impl AtomicHistogram {
    fn new(bounds_ns: &'static [u64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// (upper bound in seconds, observations in that bucket alone); the last bound is `f64::MAX`.
    fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds_ns
            .iter()
            .map(|&b| b as f64 / 1e9)
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect()
    }

    fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The upper bound (seconds) of the bucket holding quantile `q`; `None` with no data,
    /// `f64::INFINITY` when it lies beyond the last bound.
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        let buckets = self.buckets();
        let count: u64 = buckets.iter().map(|b| b.1).sum();
        if count == 0 {
            return None;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, n) in buckets {
            seen += n;
            if seen >= rank {
                return Some(if bound == f64::MAX {
                    f64::INFINITY
                } else {
                    bound
                });
            }
        }
        Some(f64::INFINITY)
    }
}

#[derive(Debug, Clone)]
struct SharedHistogram(Arc<AtomicHistogram>);

impl TypedMetric for SharedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SharedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.0.buckets();
        let count = buckets.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The guarded-write counters of every table guarded since start, by process-wide table id,
/// and the tables guarded now (what `SHOW STATS` lists). A table's counters keep their totals
/// across reloads, also while it is not guarded.
#[derive(Debug, Default)]
struct TableSlots {
    /// By `TableId`; `None` for an id the process gave a table it never guarded here.
    by_id: RwLock<Vec<Option<[Counter; Outcome::ALL.len()]>>>,
    /// The tables set last, in guard order, with their ids.
    current: RwLock<Vec<(TableId, String)>>,
}

impl TableSlots {
    #[inline]
    fn inc(&self, table: TableId, outcome: Outcome) {
        if let Some(Some(c)) = self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table.0)
        {
            c[outcome as usize].inc();
        }
    }

    fn get(&self, table: TableId, outcome: Outcome) -> u64 {
        match self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table.0)
        {
            Some(Some(c)) => c[outcome as usize].get(),
            _ => 0,
        }
    }
}

/// The process's metrics. Create one at start, share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: Counter,
    sessions_active: Gauge,
    statements: Counter,
    guarded_family: Family<TableLabels, Counter>,
    tables: TableSlots,
    upstream_connect_failures: Counter,
    bytes: [Counter; 2],
    client_errors: [Counter; 4],
    pool_events: [Counter; 6],
    added_latency: SharedHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("optlock");

        let sessions = Counter::default();
        registry.register(
            "sessions",
            "Client sessions accepted since start",
            sessions.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Client sessions open now",
            sessions_active.clone(),
        );
        let statements = Counter::default();
        registry.register(
            "statements",
            "Client statements relayed (simple Query and extended Execute messages)",
            statements.clone(),
        );
        let guarded_family = Family::<TableLabels, Counter>::default();
        registry.register(
            "guarded_writes",
            "Writes to guarded tables, by table and outcome (rewritten, refused, conflict; observed: observe mode, would have been a conflict or a refusal)",
            guarded_family.clone(),
        );
        let upstream_connect_failures = Counter::default();
        registry.register(
            "upstream_connect_failures",
            "Connections to the upstream server that could not be opened",
            upstream_connect_failures.clone(),
        );
        let bytes_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register("bytes", "Bytes relayed, by direction", bytes_family.clone());
        let bytes = Direction::ALL.map(|d| {
            bytes_family
                .get_or_create(&[("direction", d.as_str())])
                .clone()
        });
        let errors_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "client_errors",
            "Client connections ended by the proxy, by reason",
            errors_family.clone(),
        );
        let client_errors = ClientError::ALL.map(|r| {
            errors_family
                .get_or_create(&[("reason", r.as_str())])
                .clone()
        });
        let pool_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "pool_events",
            "Pooled server connections reused, opened and closed; pooled logins failed; clients refused after query_wait_timeout or at max_client_conn",
            pool_family.clone(),
        );
        let pool_events =
            PoolEvent::ALL.map(|e| pool_family.get_or_create(&[("event", e.as_str())]).clone());
        let added_latency = SharedHistogram(Arc::new(AtomicHistogram::new(&LATENCY_BOUNDS_NS)));
        registry.register_with_unit(
            "added_latency",
            "Time the proxy itself adds to a batch of messages (analysis, rewriting, relaying); one batch in 16 is timed",
            Unit::Seconds,
            added_latency.clone(),
        );

        Metrics {
            registry,
            sessions,
            sessions_active,
            statements,
            guarded_family,
            tables: TableSlots::default(),
            upstream_connect_failures,
            bytes,
            client_errors,
            pool_events,
            added_latency,
        }
    }

    /// Sets the guarded tables, in guard order, each with its process-wide id
    /// ([`crate::guard::GuardSet::table_ids`]); call it at start and on every reload.
    pub fn set_tables(&self, tables: Vec<(TableId, String)>) {
        {
            let mut by_id = self.tables.by_id.write().unwrap_or_else(|e| e.into_inner());
            for (id, name) in &tables {
                if by_id.len() <= id.0 {
                    by_id.resize(id.0 + 1, None);
                }
                by_id[id.0].get_or_insert_with(|| {
                    Outcome::ALL.map(|o| {
                        self.guarded_family
                            .get_or_create(&[
                                ("table", name.clone()),
                                ("outcome", o.as_str().into()),
                            ])
                            .clone()
                    })
                });
            }
        }
        *self
            .tables
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = tables;
    }

    /// Counts one write to a guarded table, by the table's process-wide id (an id never set
    /// is ignored).
    #[inline]
    pub fn guarded(&self, table: TableId, outcome: Outcome) {
        self.tables.inc(table, outcome);
    }

    /// Counts a new client session and keeps it in `sessions_active` until the result drops.
    pub fn open_session(self: &Arc<Self>) -> OpenSession {
        self.sessions.inc();
        self.sessions_active.inc();
        OpenSession(self.clone())
    }

    /// Counts one relayed client statement (a simple `Query` or an `Execute`).
    #[inline]
    pub fn statement(&self) {
        self.statements.inc();
    }

    /// Counts a connection to the upstream server that could not be opened.
    pub fn upstream_connect_failed(&self) {
        self.upstream_connect_failures.inc();
    }

    /// Counts relayed bytes.
    #[inline]
    pub fn bytes(&self, direction: Direction, n: u64) {
        self.bytes[direction as usize].inc_by(n);
    }

    /// Counts a client connection the proxy ended.
    pub fn client_error(&self, reason: ClientError) {
        self.client_errors[reason as usize].inc();
    }

    /// Counts something that happened to a pool.
    pub fn pool_event(&self, event: PoolEvent) {
        self.pool_events[event as usize].inc();
    }

    /// Records the time the proxy added to one batch of messages.
    #[inline]
    pub fn added_latency(&self, d: Duration) {
        self.added_latency.0.observe(d);
    }

    /// The metrics in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The metrics as (name, value) rows for the admin console, per-table counters for the
    /// tables set last.
    pub fn stats(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            (
                "sessions_total".to_string(),
                self.sessions.get().to_string(),
            ),
            (
                "sessions_active".to_string(),
                self.sessions_active.get().to_string(),
            ),
            (
                "statements_total".to_string(),
                self.statements.get().to_string(),
            ),
        ];
        let tables = self
            .tables
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, table) in &tables {
            for o in Outcome::ALL {
                rows.push((
                    format!(
                        "guarded_writes_total{{table=\"{}\",outcome=\"{}\"}}",
                        table.replace('\\', "\\\\").replace('"', "\\\""),
                        o.as_str()
                    ),
                    self.tables.get(*id, o).to_string(),
                ));
            }
        }
        rows.push((
            "upstream_connect_failures_total".to_string(),
            self.upstream_connect_failures.get().to_string(),
        ));
        for d in Direction::ALL {
            rows.push((
                format!("bytes_total{{direction=\"{}\"}}", d.as_str()),
                self.bytes[d as usize].get().to_string(),
            ));
        }
        for r in ClientError::ALL {
            rows.push((
                format!("client_errors_total{{reason=\"{}\"}}", r.as_str()),
                self.client_errors[r as usize].get().to_string(),
            ));
        }
        for e in PoolEvent::ALL {
            rows.push((
                format!("pool_events_total{{event=\"{}\"}}", e.as_str()),
                self.pool_events[e as usize].get().to_string(),
            ));
        }
        let h = &self.added_latency.0;
        let count: u64 = h.buckets().iter().map(|b| b.1).sum();
        rows.push(("added_latency_seconds_count".to_string(), count.to_string()));
        rows.push((
            "added_latency_seconds_sum".to_string(),
            format!("{:.6}", h.sum_seconds()),
        ));
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let value = match h.quantile_bound(q) {
                None => "no data".to_string(),
                Some(b) if b.is_infinite() => "> 0.1".to_string(),
                Some(b) => format!("<= {b}"),
            };
            rows.push((format!("added_latency_seconds_{name}"), value));
        }
        rows
    }
}

/// A session counted in `optlock_sessions_active`; dropping it ends the count.
#[derive(Debug)]
pub struct OpenSession(Arc<Metrics>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.sessions_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .map(|l| l[prefix.len() + 1..].to_string())
    }

    #[test]
    fn counters_show_in_the_encoding() {
        let m = Arc::new(Metrics::new());
        m.set_tables(vec![
            (TableId(0), "public.invoice".into()),
            (TableId(1), "public.item".into()),
        ]);
        let s1 = m.open_session();
        let _s2 = m.open_session();
        drop(s1);
        m.statement();
        m.statement();
        m.statement();
        m.guarded(TableId(0), Outcome::Rewritten);
        m.guarded(TableId(0), Outcome::Rewritten);
        m.guarded(TableId(1), Outcome::Conflict);
        m.guarded(TableId(7), Outcome::Refused); // never set: ignored
        m.upstream_connect_failed();
        m.bytes(Direction::ClientToServer, 100);
        m.bytes(Direction::ServerToClient, 5);
        m.client_error(ClientError::LoginTimeout);

        let text = m.encode();
        let v = |p: &str| line_value(&text, p);
        assert_eq!(v("optlock_sessions_total").as_deref(), Some("2"), "{text}");
        assert_eq!(v("optlock_sessions_active").as_deref(), Some("1"), "{text}");
        assert_eq!(v("optlock_statements_total").as_deref(), Some("3"));
        assert_eq!(
            v("optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"rewritten\"}")
                .as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            v("optlock_guarded_writes_total{table=\"public.item\",outcome=\"conflict\"}")
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            v("optlock_guarded_writes_total{table=\"public.invoice\",outcome=\"refused\"}")
                .as_deref(),
            Some("0")
        );
        assert_eq!(
            v("optlock_upstream_connect_failures_total").as_deref(),
            Some("1")
        );
        assert_eq!(
            v("optlock_bytes_total{direction=\"client_to_server\"}").as_deref(),
            Some("100")
        );
        assert_eq!(
            v("optlock_bytes_total{direction=\"server_to_client\"}").as_deref(),
            Some("5")
        );
        assert_eq!(
            v("optlock_client_errors_total{reason=\"login_timeout\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            v("optlock_client_errors_total{reason=\"protocol\"}").as_deref(),
            Some("0")
        );
        assert!(text.contains("# TYPE optlock_added_latency_seconds histogram"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let m = Metrics::new();
        m.added_latency(Duration::from_nanos(500)); // <= 1µs
        m.added_latency(Duration::from_micros(1)); // exactly on the 1µs bound
        m.added_latency(Duration::from_micros(30)); // <= 50µs
        m.added_latency(Duration::from_secs(1)); // beyond 100ms
        let text = m.encode();
        let v = |p: &str| line_value(&text, p);
        assert_eq!(
            v("optlock_added_latency_seconds_count").as_deref(),
            Some("4"),
            "{text}"
        );
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("optlock_added_latency_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), 17, "{text}");
        assert!(buckets[0].ends_with(" 2"), "{}", buckets[0]);
        assert!(buckets[4].ends_with(" 2"), "25µs: {}", buckets[4]);
        assert!(buckets[5].ends_with(" 3"), "50µs: {}", buckets[5]);
        assert!(buckets[15].ends_with(" 3"), "100ms: {}", buckets[15]);
        assert!(buckets[16].contains("+Inf") && buckets[16].ends_with(" 4"));
        let sum: f64 = v("optlock_added_latency_seconds_sum")
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 1.0000315).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn counts_follow_their_table_across_reloads() {
        let m = Metrics::new();
        let (a, b) = (TableId(3), TableId(5));
        m.set_tables(vec![(a, "a".into()), (b, "b".into())]);
        m.guarded(b, Outcome::Refused);
        // A reload that drops `a` and puts `b` first: `b` keeps its total, and a write
        // analysed before the reload still counts under `a`, not under the guard now first.
        m.set_tables(vec![(b, "b".into())]);
        m.guarded(b, Outcome::Refused);
        m.guarded(a, Outcome::Conflict);
        let stats = m.stats();
        assert!(stats.contains(&(
            "guarded_writes_total{table=\"b\",outcome=\"refused\"}".into(),
            "2".into()
        )));
        assert!(
            stats.contains(&(
                "guarded_writes_total{table=\"b\",outcome=\"conflict\"}".into(),
                "0".into()
            )),
            "{stats:?}"
        );
        assert!(
            !stats.iter().any(|(k, _)| k.contains("table=\"a\"")),
            "only the tables guarded now are listed: {stats:?}"
        );
        let text = m.encode();
        let a_conflicts = "optlock_guarded_writes_total{table=\"a\",outcome=\"conflict\"}";
        assert_eq!(
            line_value(&text, a_conflicts).as_deref(),
            Some("1"),
            "{text}"
        );
        // Back to both: nothing new is made, the totals stand.
        m.set_tables(vec![(a, "a".into()), (b, "b".into())]);
        assert_eq!(m.tables.get(a, Outcome::Conflict), 1);
        assert_eq!(m.tables.get(b, Outcome::Refused), 2);
    }

    #[test]
    fn quantiles_name_a_bucket_bound() {
        let m = Metrics::new();
        assert!(
            m.stats()
                .contains(&("added_latency_seconds_p50".into(), "no data".into()))
        );
        for _ in 0..99 {
            m.added_latency(Duration::from_micros(3));
        }
        m.added_latency(Duration::from_millis(20));
        let stats = m.stats();
        assert!(
            stats.contains(&("added_latency_seconds_p50".into(), "<= 0.000005".into())),
            "{stats:?}"
        );
        assert!(stats.contains(&("added_latency_seconds_p99".into(), "<= 0.000005".into())));
        m.added_latency(Duration::from_millis(20));
        let stats = m.stats();
        assert!(
            stats.contains(&("added_latency_seconds_p99".into(), "<= 0.025".into())),
            "{stats:?}"
        );
    }
}
