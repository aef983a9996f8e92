//! What `bench fleet` found: one record, printed as tables or as JSON.

use super::scrape::WriterLag;
use crate::stats::percentile;
use serde::Serialize;
use std::time::Duration;

/// P50/P95/P99 in milliseconds (`None`: no samples).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Percentiles {
        let ms = |p| percentile(samples, p).map(|d| d.as_secs_f64() * 1000.0);
        Percentiles {
            samples: samples.len(),
            p50_ms: ms(50.0),
            p95_ms: ms(95.0),
            p99_ms: ms(99.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    pub agents: usize,
    pub max_runners: u32,
    /// HTTP/2 connections the simulated agents use.
    pub agent_connections: usize,
    pub database: &'static str,
    pub database_detail: String,
    pub server_bin: String,
    pub boot_delay_ms: u64,
    pub delete_delay_ms: u64,
    /// What the server asked the agents for at registration.
    pub snapshot_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Startup {
    pub server_ready_ms: f64,
    /// From the agents' start to all of them online (each enrolls, then syncs).
    pub agents_online_ms: f64,
    pub server_rss_idle_kib: u64,
    pub server_rss_online_kib: u64,
    /// The server's CPU with every agent online and no load (heartbeats, snapshots).
    pub server_idle_cpu_ms_per_s: f64,
}

impl Startup {
    /// Server memory per connected agent, in KiB.
    pub fn rss_per_agent_kib(&self, agents: usize) -> f64 {
        self.server_rss_online_kib
            .saturating_sub(self.server_rss_idle_kib) as f64
            / agents.max(1) as f64
    }
}

/// One concurrency level of add+delete pairs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub pairs: usize,
    pub add_errors: usize,
    pub delete_errors: usize,
    pub first_error: Option<String>,
    pub wall_s: f64,
    pub pairs_per_s: f64,
    /// AddInstance latency minus the boot delay.
    pub add_overhead: Percentiles,
    pub delete: Percentiles,
    /// CPU per 1000 adds, each with its delete.
    pub server_cpu_ms_per_1000_adds: f64,
    /// The same less the idle fleet's cost over the level's time (an estimate).
    pub server_cpu_ms_per_1000_adds_net_of_idle: f64,
    pub bench_cpu_ms_per_1000_adds: f64,
    pub server_rss_kib: u64,
    pub server_hwm_kib: u64,
    pub writer_lag: WriterLag,
}

/// Every slot filled, held, then emptied.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Live {
    pub slots: usize,
    pub filled: usize,
    pub fill_errors: usize,
    pub first_error: Option<String>,
    pub fill_concurrency: usize,
    pub fill_s: f64,
    pub add_overhead: Percentiles,
    pub server_cpu_ms_per_add: f64,
    pub server_cpu_ms_per_add_net_of_idle: f64,
    pub bench_cpu_ms_per_add: f64,
    /// The writer's lag while the slots filled.
    pub fill_writer_lag: WriterLag,
    pub held_s: f64,
    pub server_rss_kib: u64,
    pub server_hwm_kib: u64,
    pub writer_lag: WriterLag,
    pub emptied_s: f64,
    pub delete: Percentiles,
    pub delete_errors: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Restart {
    /// SIGTERM to exit (the server flushes its store).
    pub stop_ms: f64,
    /// The new process's start to /metrics answering.
    pub listening_ms: f64,
    /// The new process's start to the first agent online, and to all of them.
    pub first_agent_ms: Option<f64>,
    pub all_agents_ms: Option<f64>,
    /// Agents online when the wait ended.
    pub agents_online: usize,
    pub server_rss_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub server_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub wall_s: f64,
    /// Sync streams the simulated agents opened, and link failures they saw (a restart ends
    /// every stream and refuses connections until the new server listens).
    pub agent_sessions: u64,
    pub agent_link_failures: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    pub setup: Setup,
    pub startup: Startup,
    pub levels: Vec<Level>,
    pub live: Live,
    pub restart: Restart,
    pub totals: Totals,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The report as JSON (`--output json`): the same record, field for field.
pub fn to_json(report: &FleetReport) -> serde_json::Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let Some(startup) = value.get_mut("startup").and_then(|s| s.as_object_mut()) {
        startup.insert(
            "server_rss_per_agent_kib".into(),
            serde_json::json!(report.startup.rss_per_agent_kib(report.setup.agents)),
        );
    }
    value
}

/// The report as tables.
pub fn render_table(report: &FleetReport) -> String {
    let mut out = String::new();
    let s = &report.setup;
    let line = |out: &mut String, text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(&mut out, format!(
        "bench fleet: {} simulated agents x {} slots on {} connection(s), {}, boot delay {} ms, delete delay {} ms",
        s.agents, s.max_runners, s.agent_connections, s.database_detail, s.boot_delay_ms, s.delete_delay_ms
    ));
    line(
        &mut out,
        format!(
            "server: {} (agents asked for a snapshot every {} ms, a heartbeat every {} ms)",
            s.server_bin, s.snapshot_interval_ms, s.heartbeat_interval_ms
        ),
    );
    let st = &report.startup;
    line(&mut out, format!(
        "start: listening after {:.2} s; {} agents online {:.2} s after they started; server RSS {:.1} MiB idle, {:.1} MiB with the agents ({:.1} KiB per agent)",
        st.server_ready_ms / 1000.0,
        s.agents,
        st.agents_online_ms / 1000.0,
        mib(st.server_rss_idle_kib),
        mib(st.server_rss_online_kib),
        st.rss_per_agent_kib(s.agents)
    ));
    line(
        &mut out,
        format!(
            "idle with {} agents online: server CPU {:.1} ms per second",
            s.agents, st.server_idle_cpu_ms_per_s
        ),
    );
    out.push('\n');
    line(&mut out, "add+delete pairs (add = AddInstance latency - boot delay, ms; CPU ms per 1000 adds, each with its delete; srv net = less the idle fleet's CPU)".into());
    line(
        &mut out,
        format!(
            "{:>5} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11}",
            "conc",
            "pairs",
            "errors",
            "pairs/s",
            "add p50",
            "add p95",
            "add p99",
            "del p50",
            "del p99",
            "srv CPU",
            "srv net",
            "bench CPU",
            "RSS MiB",
            "lag max ms"
        ),
    );
    for l in &report.levels {
        line(&mut out, format!(
            "{:>5} {:>6} {:>6} {:>8.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.0} {:>8.0} {:>9.0} {:>8.1} {:>11}",
            l.concurrency,
            l.pairs,
            l.add_errors + l.delete_errors,
            l.pairs_per_s,
            ms(l.add_overhead.p50_ms),
            ms(l.add_overhead.p95_ms),
            ms(l.add_overhead.p99_ms),
            ms(l.delete.p50_ms),
            ms(l.delete.p99_ms),
            l.server_cpu_ms_per_1000_adds,
            l.server_cpu_ms_per_1000_adds_net_of_idle,
            l.bench_cpu_ms_per_1000_adds,
            mib(l.server_rss_kib),
            l.writer_lag.short()
        ));
    }
    for l in report.levels.iter().filter(|l| l.first_error.is_some()) {
        line(
            &mut out,
            format!(
                "  concurrency {}: first error: {}",
                l.concurrency,
                l.first_error.as_deref().unwrap_or_default()
            ),
        );
    }
    out.push('\n');
    let lv = &report.live;
    let per_s = if lv.fill_s > 0.0 {
        lv.filled as f64 / lv.fill_s
    } else {
        0.0
    };
    line(&mut out, format!(
        "all slots live: {} of {} filled in {:.2} s ({:.1} adds/s, {} at a time); add p50 {} / p95 {} / p99 {} ms; server CPU {:.2} ms per add ({:.2} net of idle), bench {:.2} ms per add",
        lv.filled, lv.slots, lv.fill_s, per_s, lv.fill_concurrency,
        ms(lv.add_overhead.p50_ms), ms(lv.add_overhead.p95_ms), ms(lv.add_overhead.p99_ms),
        lv.server_cpu_ms_per_add, lv.server_cpu_ms_per_add_net_of_idle, lv.bench_cpu_ms_per_add
    ));
    line(
        &mut out,
        format!(
            "  writer lag while filling: {}",
            lv.fill_writer_lag.describe()
        ),
    );
    if let Some(error) = &lv.first_error {
        line(
            &mut out,
            format!("  {} fill error(s); first: {error}", lv.fill_errors),
        );
    }
    line(
        &mut out,
        format!(
            "  held {:.1} s: server RSS {:.1} MiB (peak {:.1}); writer lag {}",
            lv.held_s,
            mib(lv.server_rss_kib),
            mib(lv.server_hwm_kib),
            lv.writer_lag.describe()
        ),
    );
    line(
        &mut out,
        format!(
            "  emptied in {:.2} s: delete p50 {} / p99 {} ms, {} error(s)",
            lv.emptied_s,
            ms(lv.delete.p50_ms),
            ms(lv.delete.p99_ms),
            lv.delete_errors
        ),
    );
    let r = &report.restart;
    let secs =
        |v: Option<f64>| v.map_or_else(|| "never".to_string(), |v| format!("{:.2} s", v / 1000.0));
    line(&mut out, format!(
        "restart: SIGTERM to exit {:.2} s; the new server listened after {:.2} s, had its first agent online after {}, all {} after {} ({} online at the end); server RSS {:.1} MiB",
        r.stop_ms / 1000.0, r.listening_ms / 1000.0, secs(r.first_agent_ms), s.agents, secs(r.all_agents_ms), r.agents_online, mib(r.server_rss_kib)
    ));
    let t = &report.totals;
    line(&mut out, format!(
        "CPU over the whole run ({:.1} s): server {:.1} s, bench process (agents + load) {:.1} s; agents opened {} Sync streams, saw {} link failures",
        t.wall_s, t.server_cpu_s, t.bench_cpu_s, t.agent_sessions, t.agent_link_failures
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FleetReport {
        let lag = WriterLag {
            samples: 10,
            lag_max_ms: Some(42.0),
            lag_p50_ms: Some(3.0),
            queue_max: Some(17.0),
        };
        FleetReport {
            setup: Setup {
                agents: 3,
                max_runners: 2,
                agent_connections: 3,
                database: "sqlite",
                database_detail: "SQLite".into(),
                server_bin: "/x/shoes-vz-server".into(),
                snapshot_interval_ms: 10_000,
                heartbeat_interval_ms: 3_000,
                ..Setup::default()
            },
            startup: Startup {
                server_ready_ms: 210.0,
                agents_online_ms: 300.0,
                server_rss_idle_kib: 20 * 1024,
                server_rss_online_kib: 20 * 1024 + 3 * 40,
                server_idle_cpu_ms_per_s: 4.5,
            },
            levels: vec![Level {
                concurrency: 16,
                pairs: 2000,
                pairs_per_s: 210.5,
                add_overhead: Percentiles::of(&[Duration::from_millis(5)]),
                delete: Percentiles::of(&[Duration::from_millis(2)]),
                server_cpu_ms_per_1000_adds: 1234.0,
                add_errors: 1,
                first_error: Some("Unavailable: boom".into()),
                writer_lag: lag.clone(),
                ..Level::default()
            }],
            live: Live {
                slots: 6,
                filled: 6,
                fill_s: 0.5,
                writer_lag: WriterLag::default(),
                ..Live::default()
            },
            restart: Restart {
                all_agents_ms: Some(1500.0),
                agents_online: 3,
                ..Restart::default()
            },
            totals: Totals::default(),
        }
    }

    #[test]
    fn the_table_has_every_section() {
        let text = render_table(&sample());
        for expected in [
            "bench fleet: 3 simulated agents x 2 slots",
            "40.0 KiB per agent",
            "server CPU 4.5 ms per second",
            "pairs/s",
            "  210.5",
            "  42.0",
            "concurrency 16: first error: Unavailable: boom",
            "all slots live: 6 of 6 filled",
            "writer lag n/a (server has no writer-lag gauge)",
            "all 3 after 1.50 s",
            "bench process (agents + load)",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
    }

    #[test]
    fn json_has_the_same_record() {
        let json = to_json(&sample());
        assert_eq!(json["levels"][0]["pairs_per_s"], 210.5);
        assert_eq!(json["levels"][0]["add_overhead"]["p99_ms"], 5.0);
        assert_eq!(json["levels"][0]["writer_lag"]["lag_max_ms"], 42.0);
        assert!(json["live"]["writer_lag"]["lag_max_ms"].is_null());
        assert_eq!(json["restart"]["agents_online"], 3);
        assert_eq!(json["startup"]["server_rss_per_agent_kib"], 40.0);
    }
}
