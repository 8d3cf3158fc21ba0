//! Replication statistics in the Prometheus text exposition format
//! (version 0.0.4), served by each `filerep segment` on its optional
//! `metrics_listen` address as `GET /metrics`.
//!
//! Nothing is collected for this: a scrape renders the segment's status
//! (the same figures a control probe returns), which the primary keeps in
//! atomics its write path updates anyway. Every series carries the
//! segment's `content`, `dbid` and `role` labels.

use crate::cluster::segment::{Acting, SegmentStatus};
use std::fmt::Write as _;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn role(a: Acting) -> &'static str {
    match a {
        Acting::Idle => "idle",
        Acting::Starting => "starting",
        Acting::Mirror => "mirror",
        Acting::Primary => "primary",
        Acting::Stopped => "stopped",
    }
}

/// A label value, escaped as the format requires (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
    labels: String,
}

impl Out {
    /// A metric family with one sample (`extra`: more labels, `k="v",…`).
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help, &[("", value)]);
    }

    /// A metric family: HELP and TYPE once, then a sample per entry
    /// (`extra` labels, already formatted, and the value).
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (extra, v) in samples {
            let sep = if extra.is_empty() { "" } else { "," };
            let _ = writeln!(self.text, "{name}{{{}{sep}{extra}}} {v}", self.labels);
        }
    }
}

/// Every metric of one segment, in the text format.
pub fn render(s: &SegmentStatus) -> String {
    let mut o = Out {
        text: String::new(),
        labels: format!("content=\"{}\",dbid=\"{}\",role=\"{}\"", s.content, s.dbid, role(s.acting)),
    };
    let mode = escape(&s.mode.to_string());
    o.family(
        "filerep_segment_info",
        "gauge",
        "Always 1; the mode label is the primary's view (s, r, c, d, f; - for other roles).",
        &[(&format!("mode=\"{mode}\""), 1)],
    );
    o.one("filerep_generation", "gauge", "The generation this segment serves at.", s.generation);
    if let Some(c) = &s.changelog {
        o.one("filerep_changelog_blocks", "gauge", "Blocks the change-log names exactly.", c.distinct_blocks);
        o.one(
            "filerep_changelog_extents",
            "gauge",
            "Extents (32 blocks) the change-log names as may-differ.",
            c.extents,
        );
        o.one("filerep_changelog_paths", "gauge", "Paths the change-log names as touched.", c.touched_paths);
        o.one("filerep_changelog_bytes", "gauge", "Size of the change-log file on disk, in bytes.", c.bytes_on_disk);
    }
    if let Some(r) = &s.replication {
        o.one(
            "filerep_operations_sent_total",
            "counter",
            "Operations queued for the mirror (sequence numbers assigned).",
            r.ops_sent,
        );
        o.family(
            "filerep_operations_acked_total",
            "counter",
            "Operations the mirror acknowledged, by level.",
            &[
                ("level=\"applied\"", r.ops_applied),
                ("level=\"synced\"", r.ops_synced),
                ("level=\"durable\"", r.ops_durable),
            ],
        );
        o.one("filerep_bytes_queued_total", "counter", "Wire bytes queued for the mirror.", r.bytes_queued);
        o.one("filerep_bytes_sent_total", "counter", "Wire bytes written to the mirror's socket.", r.bytes_sent);
        o.family(
            "filerep_bytes_acked_total",
            "counter",
            "Wire bytes of the operations the mirror acknowledged, by level.",
            &[("level=\"applied\"", r.bytes_applied), ("level=\"durable\"", r.bytes_durable)],
        );
        o.one("filerep_frames_sent_total", "counter", "Frames written to the mirror's socket.", r.frames_sent);
        o.one("filerep_batches_sent_total", "counter", "Vectored socket writes to the mirror.", r.batches_sent);
        o.one(
            "filerep_in_flight_operations",
            "gauge",
            "Operations written to the socket and not yet acknowledged applied.",
            r.in_flight_ops,
        );
        o.family(
            "filerep_lag_operations",
            "gauge",
            "Operations queued and not yet applied (or durable) on the mirror.",
            &[("level=\"applied\"", r.lag_ops), ("level=\"durable\"", r.durable_lag_ops)],
        );
        o.family(
            "filerep_lag_bytes",
            "gauge",
            "Wire bytes queued and not yet applied (or durable) on the mirror.",
            &[("level=\"applied\"", r.lag_bytes), ("level=\"durable\"", r.durable_lag_bytes)],
        );
        o.one("filerep_queue_frames", "gauge", "Frames waiting to be written to the socket.", r.queue_frames);
        o.one("filerep_queue_bytes", "gauge", "Bytes waiting to be written to the socket.", r.queue_bytes);
        o.one(
            "filerep_window_changes",
            "gauge",
            "Changes shipped and not yet durable on the mirror (what losing it records).",
            r.window_changes,
        );
        o.one(
            "filerep_stream_sessions",
            "gauge",
            "Streaming sessions of this primary (1 + mirrors taken back).",
            r.sessions,
        );
        if let Some(ms) = r.since_ack_ms {
            let _ = writeln!(o.text, "# HELP filerep_seconds_since_ack Time since the mirror's last acknowledgement.");
            let _ = writeln!(o.text, "# TYPE filerep_seconds_since_ack gauge");
            let _ = writeln!(o.text, "filerep_seconds_since_ack{{{}}} {:.3}", o.labels, ms as f64 / 1000.0);
        }
    }
    if let Some(p) = &s.resync {
        o.one("filerep_resync_running", "gauge", "1 while a resync ships the change-log.", (s.mode == 'r') as u64);
        o.one("filerep_resync_blocks", "gauge", "Blocks the current (or last) resync has to ship.", p.blocks_total);
        o.one("filerep_resync_blocks_done", "gauge", "Blocks the current (or last) resync has shipped.", p.blocks_done);
        o.one("filerep_resync_bytes_done", "gauge", "Bytes the current (or last) resync has shipped.", p.bytes_done);
        o.one("filerep_resync_paths_done", "gauge", "Paths the current (or last) resync has reconciled.", p.paths_done);
        o.one(
            "filerep_resync_passes",
            "gauge",
            "Extra passes the current (or last) resync made over what renames moved.",
            p.passes,
        );
        o.one(
            "filerep_resync_renames_held",
            "gauge",
            "1 while renames outpace the resync and it holds new ones to finish.",
            p.renames_held as u64,
        );
    }
    if let Some(v) = &s.verify {
        o.one("filerep_verify_running", "gauge", "1 while a verification runs.", v.running as u64);
        o.one(
            "filerep_verify_bytes_done",
            "gauge",
            "Bytes the current (or last) verification compared.",
            v.progress.bytes_done,
        );
        o.one(
            "filerep_verify_mismatches",
            "gauge",
            "Mismatches the current (or last) verification found.",
            v.progress.mismatches,
        );
    }
    o.text
}

/// Serve `GET /metrics` on `listener` until `stop` is set; `status` is
/// called once per scrape. Anything else is answered 404.
#[cfg(feature = "metrics-http")]
pub fn serve(
    listener: std::net::TcpListener,
    stop: &std::sync::atomic::AtomicBool,
    status: impl Fn() -> SegmentStatus,
) {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let server = match tiny_http::Server::from_listener(listener, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "metrics endpoint failed to start");
            return;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                continue;
            }
        };
        let path = req.url().split('?').next().unwrap_or("");
        let response = if *req.method() == tiny_http::Method::Get && path == "/metrics" {
            let mut r = tiny_http::Response::from_string(render(&status()));
            if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE) {
                r = r.with_header(h);
            }
            r
        } else {
            tiny_http::Response::from_string("only GET /metrics is served here\n").with_status_code(404)
        };
        if let Err(e) = req.respond(response) {
            tracing::debug!(error = %e, "metrics endpoint: the scraper went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_labelled_samples() {
        let s = SegmentStatus {
            dbid: 2,
            content: 0,
            acting: Acting::Primary,
            generation: 3,
            mode: 's',
            detail: String::new(),
            changes_pending: false,
            faulted: false,
            unheard: false,
            lost_power_streaming: false,
            epoch: 1,
            resync: Some(Default::default()),
            resync_error: None,
            verify: Some(Default::default()),
            replication: Some(crate::runtime::primary::ReplicationStats {
                ops_sent: 7,
                since_ack_ms: Some(1500),
                ..Default::default()
            }),
            changelog: Some(Default::default()),
        };
        let text = render(&s);
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
                declared.insert(name.to_string());
            } else if !line.starts_with('#') {
                let name = &line[..line.find('{').unwrap()];
                assert!(declared.contains(name), "{name} sampled before its TYPE");
                assert!(line.contains("content=\"0\",dbid=\"2\",role=\"primary\""), "{line}");
                let v = line.rsplit_once(' ').unwrap().1;
                assert!(v.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(
            text.contains("filerep_operations_sent_total{content=\"0\",dbid=\"2\",role=\"primary\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("filerep_seconds_since_ack{content=\"0\",dbid=\"2\",role=\"primary\"} 1.500\n"),
            "{text}"
        );
        assert!(text.contains("level=\"durable\""));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
