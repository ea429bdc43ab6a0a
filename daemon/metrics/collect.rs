//! What the metrics endpoint reports, read at each scrape from the
//! daemon's state: every node's and every export's I/O counters and
//! latency histograms (the same counters as `query-blockstats`), the
//! clients of each export and of the NBD server, the jobs' progress, and
//! the process's memory and descriptors. Reading takes the registries'
//! locks briefly and never a lock of the request path.

use block::job::job_type_name_of;
use block::stats::{IoKind, IoStats, LATENCY_BOUNDS_NS};
use schema::create::JobInfo;

use super::exposition::{Exposition, Kind};
use crate::state::Daemon;

/// The whole exposition of the daemon's metrics.
pub fn render(daemon: &Daemon) -> String {
    let mut out = Exposition::default();
    nodes(&mut out, daemon);
    exports(&mut out, daemon);
    jobs(&mut out, daemon);
    process(&mut out);
    out.finish()
}

/// Families of I/O counters that nodes and exports share; `prefix` is
/// `storaged_node` or `storaged_export`.
fn io_families(
    out: &mut Exposition,
    prefix: &str,
    what: &str,
    rows: &[(Vec<(&str, &str)>, &IoStats)],
) {
    let per_kind =
        |out: &mut Exposition, suffix: &str, help: &str, get: fn(&IoStats, IoKind) -> u64| {
            let name = format!("{prefix}_{suffix}");
            out.family(&name, Kind::Counter, &format!("{help} {what}."));
            for (labels, stats) in rows {
                for kind in IoKind::ALL {
                    let mut labels = labels.clone();
                    labels.push(("op", kind.name()));
                    out.sample(&name, &labels, get(stats, kind));
                }
            }
        };
    per_kind(
        out,
        "requests_total",
        "Requests completed successfully by the",
        |s, k| s.totals(k).operations,
    );
    per_kind(
        out,
        "bytes_total",
        "Bytes of the requests completed successfully by the",
        |s, k| s.totals(k).bytes,
    );
    per_kind(
        out,
        "failed_requests_total",
        "Requests failed by the",
        |s, k| s.totals(k).failed,
    );
    per_kind(
        out,
        "invalid_requests_total",
        "Requests refused before they started (out of range, read-only) by the",
        |s, k| s.totals(k).invalid,
    );
    let name = format!("{prefix}_request_duration_seconds");
    out.family(
        &name,
        Kind::Histogram,
        &format!("Time of the requests completed successfully by the {what} (zero-copy reads are not timed)."),
    );
    for (labels, stats) in rows {
        for kind in IoKind::ALL {
            let totals = stats.totals(kind);
            let mut labels = labels.clone();
            labels.push(("op", kind.name()));
            out.histogram(
                &name,
                &labels,
                &LATENCY_BOUNDS_NS,
                &totals.latency,
                totals.total_ns,
            );
        }
    }
}

fn nodes(out: &mut Exposition, daemon: &Daemon) {
    let nodes = daemon.graph.nodes();
    let rows: Vec<_> = nodes
        .iter()
        .map(|n| (vec![("node", n.name())], n.stats()))
        .collect();
    io_families(out, "storaged_node", "node", &rows);
    out.family(
        "storaged_node_write_highest_offset_bytes",
        Kind::Gauge,
        "The end of the highest write the node got.",
    );
    for node in &nodes {
        let labels = [("node", node.name())];
        out.sample(
            "storaged_node_write_highest_offset_bytes",
            &labels,
            node.stats().wr_highest_offset(),
        );
    }
    out.family(
        "storaged_node_size_bytes",
        Kind::Gauge,
        "The node's virtual size.",
    );
    for node in &nodes {
        out.sample(
            "storaged_node_size_bytes",
            &[("node", node.name())],
            node.size(),
        );
    }
}

fn exports(out: &mut Exposition, daemon: &Daemon) {
    let exports = daemon.exports.metrics();
    let kinds: Vec<String> = exports.iter().map(|e| job_type_name_of(&e.kind)).collect();
    let labels = |i: usize| {
        let e = &exports[i];
        vec![
            ("export", e.id.as_str()),
            ("type", kinds[i].as_str()),
            ("node", e.node_name.as_str()),
        ]
    };
    let rows: Vec<_> = (0..exports.len())
        .filter_map(|i| Some((labels(i), exports[i].backend.as_ref()?.stats())))
        .collect();
    io_families(out, "storaged_export", "export", &rows);
    out.family(
        "storaged_export_clients",
        Kind::Gauge,
        "Clients using the export now (NBD connections in transmission, ...).",
    );
    for (i, export) in exports.iter().enumerate() {
        out.sample("storaged_export_clients", &labels(i), export.clients);
    }
    out.family(
        "storaged_nbd_server_connections",
        Kind::Gauge,
        "Connections to the NBD server now, in the handshake or in transmission.",
    );
    let connections = daemon
        .exports
        .nbd_server()
        .map_or(0, |server| server.connection_count());
    out.sample("storaged_nbd_server_connections", &[], connections);
}

fn jobs(out: &mut Exposition, daemon: &Daemon) {
    let jobs = daemon.jobs.query();
    job_gauge(
        out,
        &jobs,
        "storaged_job_progress_current",
        "The job's progress so far (query-jobs' current-progress).",
        |job| job.current_progress,
    );
    job_gauge(
        out,
        &jobs,
        "storaged_job_progress_total",
        "The job's estimated total work (query-jobs' total-progress).",
        |job| job.total_progress,
    );
}

/// A gauge of every job, labelled with its id, type and status.
fn job_gauge(
    out: &mut Exposition,
    jobs: &[JobInfo],
    name: &str,
    help: &str,
    value: fn(&JobInfo) -> i64,
) {
    out.family(name, Kind::Gauge, help);
    for job in jobs {
        let kind = job_type_name_of(&job.job_type);
        let status = job_type_name_of(&job.status);
        let labels = [
            ("job", job.id.as_str()),
            ("type", &kind),
            ("status", &status),
        ];
        out.sample(name, &labels, value(job));
    }
}

fn process(out: &mut Exposition) {
    let page_size = {
        // SAFETY: sysconf reads a constant of the system.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).unwrap_or(4096)
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut pages = statm
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    let (virtual_pages, resident_pages) = (pages.next().unwrap_or(0), pages.next().unwrap_or(0));
    out.family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
    );
    out.sample(
        "process_resident_memory_bytes",
        &[],
        resident_pages * page_size,
    );
    out.family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes.",
    );
    out.sample(
        "process_virtual_memory_bytes",
        &[],
        virtual_pages * page_size,
    );
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    out.family(
        "process_open_fds",
        Kind::Gauge,
        "Number of open file descriptors.",
    );
    out.sample("process_open_fds", &[], open_fds);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.family(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
        );
        out.sample("process_max_fds", &[], limit.rlim_cur);
    }
}
