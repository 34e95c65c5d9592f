//! Turns measurements into rows: medians over runs, ratios to the baseline (the
//! hand-written client of the mode, or redis-rs), an aligned table and JSON lines.

use std::fmt::{self, Write as _};

use crate::load::Outcome;
use crate::runtime::Flavor;
use crate::variant::Variant;

/// What the requests of a cell carry: the `payload` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub enum Payload {
    /// An echo frame with this many payload bytes.
    Bytes(usize),
    /// Redis `PING`.
    Ping,
    /// Redis `SET key value`, with a value of this many bytes.
    Set(usize),
}

impl Payload {
    /// Payload or value bytes per request (0 for `PING`).
    pub fn bytes(self) -> usize {
        match self {
            Payload::Bytes(n) | Payload::Set(n) => n,
            Payload::Ping => 0,
        }
    }

    /// The Redis command, for a Redis cell.
    pub fn command(self) -> Option<&'static str> {
        match self {
            Payload::Bytes(_) => None,
            Payload::Ping => Some("PING"),
            Payload::Set(_) => Some("SET"),
        }
    }
}

impl fmt::Display for Payload {
    /// `16`, `PING`, `SET 16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Payload::Bytes(n) => n.to_string(),
            Payload::Ping => "PING".to_string(),
            Payload::Set(n) => format!("SET {n}"),
        };
        f.pad(&text)
    }
}

/// The figures of one variant in one cell of one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The client.
    pub variant: Variant,
    /// The runtime it ran on.
    pub runtime: Flavor,
    /// Caller tasks.
    pub concurrency: usize,
    /// What each request carries.
    pub payload: Payload,
    /// Replies counted in the measured window.
    pub requests: f64,
    /// Replies per second of the window.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Client CPU seconds (user + system) per million requests.
    pub cpu_s_per_million: f64,
    /// Heap allocations per request.
    pub allocs_per_request: f64,
    /// Socket writes per request, when the client's meter counts them.
    pub writes_per_request: Option<f64>,
    /// Socket reads per request, when the client's meter counts them.
    pub reads_per_request: Option<f64>,
    /// Reads the server processed per request (Redis rows).
    pub server_reads_per_request: Option<f64>,
    /// Writes the server processed per request (Redis rows).
    pub server_writes_per_request: Option<f64>,
    /// Heap bytes per in-flight request (same for every cell of a variant), if measured.
    pub inflight_bytes: Option<f64>,
    /// Times a worker of the multi-thread runtime parked, per request (0 on the
    /// current-thread runtime): in the JSON only.
    pub parks_per_request: f64,
}

impl Sample {
    /// The figures of `outcome`, a run of `variant` on `runtime` with `concurrency`
    /// callers sending `payload`.
    pub fn new(
        variant: Variant,
        runtime: Flavor,
        concurrency: usize,
        payload: Payload,
        outcome: &Outcome,
        inflight: Option<f64>,
    ) -> Self {
        let requests = outcome.requests.max(1) as f64;
        let delta = &outcome.delta;
        let per_request = |n: Option<u64>| n.map(|n| n as f64 / requests);
        Sample {
            variant,
            runtime,
            concurrency,
            payload,
            requests: outcome.requests as f64,
            rps: outcome.requests as f64 / delta.elapsed.as_secs_f64(),
            p50_us: outcome.latency.quantile(0.50).as_secs_f64() * 1e6,
            p99_us: outcome.latency.quantile(0.99).as_secs_f64() * 1e6,
            cpu_s_per_million: delta.cpu.as_secs_f64() / requests * 1e6,
            allocs_per_request: delta.allocations as f64 / requests,
            writes_per_request: per_request(delta.io.writes),
            reads_per_request: per_request(delta.io.reads),
            server_reads_per_request: per_request(delta.io.server_reads),
            server_writes_per_request: per_request(delta.io.server_writes),
            inflight_bytes: inflight,
            parks_per_request: delta.parks as f64 / requests,
        }
    }

    /// What the progress line on stderr says of the finished cell.
    pub fn progress(&self) -> String {
        format!(
            "{rps:>9.0} req/s  p50 {p50:>8.1} us  p99 {p99:>8.1} us  {cpu:>6.2} cpu s/M",
            rps = self.rps,
            p50 = self.p50_us,
            p99 = self.p99_us,
            cpu = self.cpu_s_per_million,
        )
    }

    fn key(&self) -> (Variant, Flavor, usize, Payload) {
        (self.variant, self.runtime, self.concurrency, self.payload)
    }

    /// The key of the baseline's sample in the same runtime and cell.
    fn baseline_key(&self) -> (Variant, Flavor, usize, Payload) {
        (
            self.variant.baseline(),
            self.runtime,
            self.concurrency,
            self.payload,
        )
    }
}

/// One line of the report: the median of each figure over the runs, and ratios.
#[derive(Debug, Clone)]
pub struct Row {
    /// Medians (each figure on its own) of this cell's samples.
    pub median: Sample,
    /// How many runs the medians are over.
    pub runs: usize,
    /// Requests/s relative to the baseline ([`Variant::baseline`]) in the same cell.
    pub rps_vs_hand: Option<f64>,
    /// CPU per request relative to the baseline in the same cell.
    pub cpu_vs_hand: Option<f64>,
    /// Requests/s relative to the baseline run by run: run k's sample over the
    /// baseline's sample of run k in the same cell, taken moments apart. Empty without a
    /// baseline row.
    pub rps_vs_hand_by_run: Vec<f64>,
}

/// Groups samples by (variant, concurrency, payload), takes medians and computes the
/// ratios to the baseline (the hand-written client of the mode, or redis-rs; absent if it
/// was filtered out). Rows come out grouped by mode, then cell, then variant.
pub fn summarize(samples: &[Sample]) -> Vec<Row> {
    let mut groups: Vec<Vec<&Sample>> = Vec::new();
    for sample in samples {
        match groups.iter_mut().find(|g| g[0].key() == sample.key()) {
            Some(group) => group.push(sample),
            None => groups.push(vec![sample]),
        }
    }

    let mut rows: Vec<Row> = groups
        .iter()
        .map(|group| {
            let m = |f: fn(&Sample) -> f64| median(group.iter().map(|s| f(s)).collect());
            // A figure some run did not measure is not measured.
            let o = |f: fn(&Sample) -> Option<f64>| {
                let values: Option<Vec<f64>> = group.iter().map(|s| f(s)).collect();
                values.map(median)
            };
            let inflight: Vec<f64> = group.iter().filter_map(|s| s.inflight_bytes).collect();
            Row {
                median: Sample {
                    requests: m(|s| s.requests).round(),
                    rps: m(|s| s.rps),
                    p50_us: m(|s| s.p50_us),
                    p99_us: m(|s| s.p99_us),
                    cpu_s_per_million: m(|s| s.cpu_s_per_million),
                    allocs_per_request: m(|s| s.allocs_per_request),
                    writes_per_request: o(|s| s.writes_per_request),
                    reads_per_request: o(|s| s.reads_per_request),
                    server_reads_per_request: o(|s| s.server_reads_per_request),
                    server_writes_per_request: o(|s| s.server_writes_per_request),
                    inflight_bytes: (!inflight.is_empty()).then(|| median(inflight)),
                    parks_per_request: m(|s| s.parks_per_request),
                    ..group[0].clone()
                },
                runs: group.len(),
                rps_vs_hand: None,
                cpu_vs_hand: None,
                rps_vs_hand_by_run: Vec::new(),
            }
        })
        .collect();

    for i in 0..rows.len() {
        let row = &rows[i].median;
        let baseline = row.baseline_key();
        if let Some(hand) = rows.iter().find(|r| r.median.key() == baseline) {
            let (rps, cpu) = (
                row.rps / hand.median.rps,
                row.cpu_s_per_million / hand.median.cpu_s_per_million,
            );
            rows[i].rps_vs_hand = Some(rps);
            rows[i].cpu_vs_hand = Some(cpu);
        }
    }
    // Samples of one key come in run order, so the k-th of a variant and the k-th of its
    // baseline are from the same run.
    let of = |key| samples.iter().filter(move |s| s.key() == key);
    for row in &mut rows {
        let s = &row.median;
        if s.variant.baseline() == s.variant {
            continue;
        }
        let baseline = s.baseline_key();
        row.rps_vs_hand_by_run = of(s.key())
            .zip(of(baseline))
            .map(|(x, base)| x.rps / base.rps)
            .collect();
    }

    let position = |v: Variant| Variant::ALL.iter().position(|&x| x == v);
    rows.sort_by_key(|r| {
        let s = &r.median;
        (
            s.variant.mode(),
            s.concurrency,
            s.payload,
            s.runtime,
            position(s.variant),
        )
    });
    rows
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The rows as an aligned table, one blank line between cells. The ratio columns are
/// headed `rps/BASELINE` and `cpu/BASELINE`; the server-side columns appear when some
/// row has them (the Redis rows).
pub fn table(rows: &[Row], baseline: &str) -> String {
    let (rps_vs, cpu_vs) = (format!("rps/{baseline}"), format!("cpu/{baseline}"));
    let server = rows.iter().any(|r| {
        r.median.server_reads_per_request.is_some() || r.median.server_writes_per_request.is_some()
    });
    let mut header: Vec<&str> = vec![
        "variant",
        "mode",
        "runtime",
        "conc",
        "payload",
        "requests",
        "req/s",
        "p50 us",
        "p99 us",
        "cpu s/M",
        "allocs/req",
        "writes/req",
        "reads/req",
    ];
    if server {
        header.extend(["srv reads/req", "srv writes/req"]);
    }
    header.extend(["B/inflight", &rps_vs, &cpu_vs]);
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    let per_request = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.3}"));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let s = &row.median;
            let mut line = vec![
                s.variant.name().to_string(),
                s.variant.mode().to_string(),
                s.runtime.to_string(),
                s.concurrency.to_string(),
                s.payload.to_string(),
                format!("{:.0}", s.requests),
                format!("{:.0}", s.rps),
                format!("{:.1}", s.p50_us),
                format!("{:.1}", s.p99_us),
                format!("{:.2}", s.cpu_s_per_million),
                format!("{:.2}", s.allocs_per_request),
                per_request(s.writes_per_request),
                per_request(s.reads_per_request),
            ];
            if server {
                line.push(per_request(s.server_reads_per_request));
                line.push(per_request(s.server_writes_per_request));
            }
            line.extend([
                s.inflight_bytes
                    .map_or("-".to_string(), |b| format!("{b:.0}")),
                ratio(row.rps_vs_hand),
                ratio(row.cpu_vs_hand),
            ]);
            line
        })
        .collect();

    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in &cells {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut push_line = |line: &[&str]| {
        for (i, (cell, &w)) in line.iter().zip(&widths).enumerate() {
            // Names left-aligned, figures right-aligned.
            let _ = match i {
                0..=2 => write!(out, "{cell:<w$}  "),
                _ => write!(out, "{cell:>w$}  "),
            };
        }
        out.truncate(out.trim_end_matches(' ').len());
        out.push('\n');
    };
    push_line(&header);
    let mut previous = None;
    for (row, line) in rows.iter().zip(&cells) {
        let cell = (
            row.median.variant.mode(),
            row.median.runtime,
            row.median.concurrency,
            row.median.payload,
        );
        if previous.is_some_and(|p| p != cell) {
            push_line(&[]);
        }
        previous = Some(cell);
        let line: Vec<&str> = line.iter().map(String::as_str).collect();
        push_line(&line);
    }
    out.push_str(&by_run(rows, baseline));
    out
}

/// With three runs or more: each row's `rps/BASELINE` run by run, as median [min, max].
/// On a noisy machine this is steadier than the ratio of the medians, which may pair
/// the two variants' medians from different runs.
fn by_run(rows: &[Row], baseline: &str) -> String {
    let mut out = String::new();
    for row in rows.iter().filter(|r| r.rps_vs_hand_by_run.len() >= 3) {
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\nrps/{baseline} run by run (each run's sample over the {baseline} sample \
                 of the same run and cell): median [min, max]"
            );
        }
        let ratios = &row.rps_vs_hand_by_run;
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        let s = &row.median;
        let _ = writeln!(
            out,
            "  {:<21} {:<7} c={:<4} {:<8} {:.2} [{lo:.2}, {hi:.2}] over {} runs",
            s.variant.name(),
            s.runtime,
            s.concurrency,
            s.payload.to_string(),
            median(ratios.clone()),
            ratios.len(),
        );
    }
    out
}

/// One row as a JSON object on one line. `payload` is in bytes (0 for `PING`); Redis
/// rows add `command`. The ratios are to `baseline`.
pub fn json(row: &Row) -> String {
    let s = &row.median;
    let num = |x: f64, decimals: usize| {
        if x.is_finite() {
            format!("{x:.decimals$}")
        } else {
            "null".to_string()
        }
    };
    let opt = |x: Option<f64>, decimals: usize| x.map_or("null".to_string(), |x| num(x, decimals));
    let command = s
        .payload
        .command()
        .map_or(String::new(), |c| format!("\"command\":\"{c}\","));
    format!(
        concat!(
            "{{\"variant\":\"{}\",\"mode\":\"{}\",\"runtime\":\"{}\",\"concurrency\":{},",
            "\"payload\":{},{}",
            "\"requests\":{},\"rps\":{},\"p50_us\":{},\"p99_us\":{},",
            "\"cpu_s_per_million\":{},\"allocs_per_request\":{},\"writes_per_request\":{},",
            "\"reads_per_request\":{},\"server_reads_per_request\":{},",
            "\"server_writes_per_request\":{},\"inflight_bytes_per_request\":{},",
            "\"parks_per_request\":{},",
            "\"baseline\":\"{}\",\"rps_vs_hand\":{},\"cpu_vs_hand\":{},",
            "\"rps_vs_hand_by_run\":[{}],\"runs\":{}}}"
        ),
        s.variant.name(),
        s.variant.mode(),
        s.runtime,
        s.concurrency,
        s.payload.bytes(),
        command,
        num(s.requests, 0),
        num(s.rps, 1),
        num(s.p50_us, 2),
        num(s.p99_us, 2),
        num(s.cpu_s_per_million, 4),
        num(s.allocs_per_request, 4),
        opt(s.writes_per_request, 4),
        opt(s.reads_per_request, 4),
        opt(s.server_reads_per_request, 4),
        opt(s.server_writes_per_request, 4),
        opt(s.inflight_bytes, 1),
        num(s.parks_per_request, 4),
        s.variant.baseline().name(),
        opt(row.rps_vs_hand, 4),
        opt(row.cpu_vs_hand, 4),
        row.rps_vs_hand_by_run
            .iter()
            .map(|&r| num(r, 4))
            .collect::<Vec<_>>()
            .join(","),
        row.runs,
    )
}
