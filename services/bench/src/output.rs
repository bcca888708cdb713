//! Printing the figures: tables for people, JSON for scripts.

use std::fmt::Display;
use std::io::Write;

use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde::Serialize;

use crate::{Ctx, Report};

/// A table with the given header, laid out for the terminal.
fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// Prints one line to stdout. When stdout is gone (`... | head -1`), there is no one left
/// to tell: exit quietly, as a Unix tool does on SIGPIPE.
fn line(text: impl Display) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").is_err() {
        std::process::exit(0);
    }
}

/// One JSON document on one line.
fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => line(text),
        Err(e) => eprintln!("stockwire-bench: cannot print the report as JSON: {e}"),
    }
}

/// The whole report: one JSON document with `--json`, else tables and lines.
pub(crate) fn report(ctx: &Ctx, r: &Report) {
    if ctx.json {
        json_line(r);
        return;
    }
    let mut ingest = table(["figure", "events/s", "vs ceiling"]);
    ingest.add_row(vec![
        "raw JetStream: pipelined single publishes".to_string(),
        format!("{:.0}", r.raw_pipelined_per_s),
        String::new(),
    ]);
    ingest.add_row(vec![
        "raw JetStream: atomic batches of 1,000".to_string(),
        format!("{:.0}", r.raw_batch_per_s),
        String::new(),
    ]);
    ingest.add_row(vec![
        "stockwire publish --file".to_string(),
        format!("{:.0}", r.ingest_events_per_s),
        format!("{:.2}", r.ingest_ratio),
    ]);
    line(format!(
        "{} events over {} products; fsync {}; R{}; {} cores; nats-server {}; each figure the median of {} rounds",
        r.events,
        r.products,
        r.fsync,
        r.replicas,
        r.machine.cores,
        r.machine.nats_server_version,
        r.ingest_rounds.len()
    ));
    line(&ingest);
    let mut projection = table([
        "projection",
        "ceiling events/s",
        "stock-projector",
        "vs ceiling",
        "sequential get-put-ack",
        "projector speedup",
    ]);
    for row in &r.projection {
        projection.add_row(vec![
            format!("{} events over {} products", r.events, row.products),
            format!("{:.0}", row.ceiling_per_s),
            format!("{:.0}", row.projector_per_s),
            format!("{:.2}", row.ratio),
            format!("{:.0}", row.get_put_ack_per_s),
            format!("{:.1}x", row.get_put_ack_speedup),
        ]);
    }
    line(&projection);
    if let Some(c) = &r.catalogue {
        line(format!(
            "catalogue: {} products ({:.0} values/s to fill), {} events per traffic and setup; plain write loop: uniform {:.0}, Zipf {:.0} events/s",
            c.products, c.fill_per_s, c.events, c.ceiling_uniform_per_s, c.ceiling_zipf_per_s
        ));
        let mut catalogue = table([
            "traffic",
            "setup",
            "events/s",
            "vs ceiling",
            "peak RSS MiB",
            "warm-up s",
        ]);
        for row in &c.rows {
            let rss: Vec<String> = row.peak_rss_mb.iter().map(|m| format!("{m:.0}")).collect();
            catalogue.add_row(vec![
                format!(
                    "{} ({} products touched)",
                    row.traffic, row.products_touched
                ),
                row.setup.clone(),
                format!("{:.0}", row.events_per_s),
                format!("{:.2}", row.ratio),
                rss.join(" + "),
                format!("{:.1}", row.warm_up_s),
            ]);
        }
        line(&catalogue);
    }
    if let Some(b) = &r.rebuild {
        line(format!(
            "rebuild stock of {} events: {:.1} s ({:.0} events/s); verify: {:.1} s; stock-projector catching up: {:.0} events/s",
            b.events, b.rebuild_seconds, b.rebuild_events_per_s, b.verify_seconds, b.catch_up_events_per_s
        ));
    }
    let memory: Vec<String> = r
        .peak_rss_mb
        .iter()
        .map(|(name, mb)| {
            format!(
                "{name} {mb} MiB (stops in {} ms)",
                r.sigterm_stop_ms.get(name).copied().unwrap_or(0)
            )
        })
        .collect();
    line(format!(
        "peak memory of each service: {}",
        memory.join(", ")
    ));
    line(format!(
        "one event alone, waiting for its PubAck (p50): plain publish {} ms, atomic batch of one {} ms",
        r.round_trip_ms.single_publish_p50_ms, r.round_trip_ms.atomic_batch_of_one_p50_ms
    ));
    let c = &r.checked_sale;
    line(format!(
        "a checked sale (load, decide, append; p50 / p99): {} events of history {} / {} ms, \
         {} events {} / {} ms: {:.2}x ({} sales each; reading that long history whole: {} ms)",
        c.short_history_events,
        c.short_p50_ms,
        c.short_p99_ms,
        c.long_history_events,
        c.long_p50_ms,
        c.long_p99_ms,
        c.long_over_short,
        c.sales_each,
        c.long_full_read_ms
    ));
    if let Some(m) = &r.simulate {
        line(format!(
            "stockwire simulate, {} warehouses x {} products: {} days backfilled ({} events in \
             {:.1} s, {:.0} events/s); live, asked {}/s for {:.0} s: {:.0} attempts/s handled \
             ({:.0} events/s), the latest {} ms late, {} more than a second late, {:.0}% lost \
             sales; asked ten times that: {:.0} attempts/s, {:.2}x the sequential get -> put -> \
             ack loop ({:.0}/s)",
            m.warehouses,
            m.skus,
            m.backfill_days,
            m.backfill_events,
            m.backfill_seconds,
            m.backfill_events_per_s,
            m.live_rate_asked,
            m.live_seconds,
            m.live_attempts_per_s,
            m.live_events_per_s,
            m.live_late_max_ms,
            m.live_late_over_1s,
            m.live_lost_sales_share * 100.0,
            m.ceiling_attempts_per_s,
            m.ceiling_over_get_put_ack,
            m.get_put_ack_per_s
        ));
    }
    if let Some(d) = &r.dashboard {
        line(format!(
            "stockwire-dashboard: {} products held in {} MiB, a page's first snapshot in {:.0} ms; \
             PubAck -> row on the page with {} pages open at {} events/s: p50 {} ms, p99 {} ms, \
             max {} ms ({} samples)",
            d.products,
            d.rss_mb,
            d.first_snapshot_ms,
            d.pages,
            d.events_per_s,
            d.p50_ms,
            d.p99_ms,
            d.max_ms,
            d.samples
        ));
    }
    let l = &r.alert_latency_ms;
    line(format!(
        "alert latency, PubAck of the crossing event -> alert stored in ALERTS, at {} events/s offered: \
         p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} samples); \
         of which event -> view stored p50 {} ms, p99 {} ms; view -> alert stored p50 {} ms, p99 {} ms",
        l.offered_events_per_s, l.p50, l.p90, l.p99, l.max, l.samples,
        l.to_view.p50, l.to_view.p99, l.view_to_alert.p50, l.view_to_alert.p99
    ));
}

/// The edge site's figures (`scripts/bench --sites`).
pub(crate) fn sites(ctx: &Ctx, f: &crate::sites::SiteFigures, fsync: &str, version: &str) {
    if ctx.json {
        json_line(f);
        return;
    }
    line(format!(
        "edge site {}: {} events recorded during an outage; fsync {fsync}; nats-server {version}",
        f.site, f.outage_events
    ));
    let mut t = table(["figure", "result", "ceiling (same run)", "ratio"]);
    t.add_row(vec![
        "the hub catching up after the outage".to_string(),
        format!(
            "{} events/s (reconnect {} ms)",
            f.catch_up_events_per_s, f.reconnect_ms
        ),
        format!(
            "{} /s raw sourcing (reconnect {} ms)",
            f.raw_catch_up_events_per_s, f.raw_reconnect_ms
        ),
        format!("{:.2}", f.catch_up_ratio),
    ]);
    t.add_row(vec![
        "checked sales, one clerk".to_string(),
        format!("{} /s at the site", f.site_checked_sales_per_s),
        format!("{} /s at the hub", f.hub_checked_sales_per_s),
        format!("{:.2}", f.site_over_hub),
    ]);
    line(t);
}
