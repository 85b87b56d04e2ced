//! Markdown tables of outcomes, each figure beside the bare broadcaster's
//! as a ratio.

use crate::scenario::Outcome;

/// One row: a label and its outcome.
pub type Row = (String, Outcome);

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}×", x / base)
    } else {
        "–".to_owned()
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Throughput and latency rows; ratios are against the row labelled `base`.
pub fn throughput(rows: &[Row], base: &str) -> String {
    let b = rows.iter().find(|(l, _)| l == base).map(|(_, o)| o.clone());
    let mut t = String::from(
        "| target | sessions (failed) | deliveries/s | vs bare | lost | latency p50 / p99 / p99.9 ms | p99 vs bare | server CPU µs/delivery | vs bare | load generator CPU | server RSS idle / peak MiB |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (label, o) in rows {
        let (d, p99, cpu) = b.as_ref().map_or((0.0, 0.0, 0.0), |b| {
            (b.deliveries_per_s, b.p99_us as f64, b.cpu_per_delivery_us())
        });
        t.push_str(&format!(
            "| {label} | {} ({}) | {:.0} | {} | {} of {} | {} / {} / {} | {} | {:.2} | {} | {:.0}% | {:.0} / {:.0} |\n",
            o.opened,
            o.failures,
            o.deliveries_per_s,
            ratio(o.deliveries_per_s, d),
            o.lost(),
            o.expected,
            ms(o.p50_us),
            ms(o.p99_us),
            ms(o.p999_us),
            ratio(o.p99_us as f64, p99),
            o.cpu_per_delivery_us(),
            ratio(o.cpu_per_delivery_us(), cpu),
            100.0 * o.loadgen_cpu_s / o.window_s.max(1e-9),
            o.rss_idle_kib as f64 / 1024.0,
            o.rss_peak_kib as f64 / 1024.0,
        ));
    }
    t
}

/// Connection and idle-memory rows; each is compared with the bare
/// broadcaster's row of as many sessions (labels `<target>, <n> sessions`).
pub fn idle(rows: &[Row]) -> String {
    let mut t = String::from(
        "| target | sessions (failed) | time to open | sessions/s | vs bare | idle memory per session | vs bare |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (label, o) in rows {
        let size = label.split_once(", ").map_or("", |(_, n)| n);
        let b = rows
            .iter()
            .find(|(l, _)| *l == format!("bare, {size}"))
            .map(|(_, o)| o);
        let rate = o.opened as f64 / o.connect_s.max(1e-9);
        let (brate, bkib) = b.as_ref().map_or((0.0, 0.0), |b| {
            (b.opened as f64 / b.connect_s.max(1e-9), b.kib_per_session())
        });
        t.push_str(&format!(
            "| {label} | {} ({}) | {:.2} s | {:.0} | {} | {:.1} KiB | {} |\n",
            o.opened,
            o.failures,
            o.connect_s,
            rate,
            ratio(rate, brate),
            o.kib_per_session(),
            ratio(o.kib_per_session(), bkib),
        ));
    }
    t
}
