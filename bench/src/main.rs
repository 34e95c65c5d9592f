//! Benchmark of `socketchannel` against a hand-written minimal client and tokio-tower,
//! side by side in one run, over loopback, with the same codec and the same echo server;
//! then the same `Channel` against redis-rs on a real `redis-server`.
//!
//! ```text
//! cargo run --release -p socketchannel-bench -- [--quick] [--json] [--runs N] [--filter SUBSTR]
//!     [--callers N] [--payload BYTES] [--duration SECS] [--runtime current|multi|both] [--svg PATH] [--no-redis]
//! ```
//!
//! See `bench/README.md` for what each column means.
//!
//! # Layout
//!
//! - `codec`: the wire format (`u32` length, `u64` id, payload) and its tokio-util codec.
//! - `server`: the echo server, run as a child process of this same binary.
//! - `hand`: the hand-written baselines, one per mode.
//! - `window`: the window loop, one task with N frames outstanding: the limit of one
//!   connection.
//! - `tokio_tower`: the peer, tokio-tower's clients behind tower's `Buffer`.
//! - `engine`: this crate's engine and channel, also behind `Timeout` (feature `engine`),
//!   and recording metrics to a Prometheus recorder (feature `metrics`).
//! - `redis`: the Redis section, `channel-redis` and `channel-redis-frame` against
//!   redis-rs (feature `redis`).
//! - `variant`: the list of clients and how each is built.
//! - `load`: the experiments: closed-loop load, and heap per in-flight request.
//! - `runtime`: a fresh runtime per experiment, current-thread or multi-thread, with a
//!   scoped tracing subscriber for the `+tracing` and `+tracing-debug` rows.
//! - `progress`: the progress lines on stderr.
//! - `measure`: counting allocator, counting socket and meters (the socket or the
//!   channel's own counters), CPU time, latency histogram.
//! - `report`: medians, ratios, table and JSON.
//! - `svg`: the `--svg` chart.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod codec;
#[cfg(feature = "engine")]
mod engine;
mod hand;
mod load;
mod measure;
mod progress;
#[cfg(feature = "redis")]
mod redis;
mod report;
mod runtime;
mod server;
mod svg;
mod tokio_tower;
mod variant;
mod window;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use tower::BoxError;

use crate::load::{Load, Window};
use crate::progress::Progress;
use crate::report::{Payload, Sample};
use crate::runtime::{CellRuntime, Flavor};
use crate::server::{ServerMode, ServerProcess};
use crate::variant::{Group, InFlight, Variant};

/// Caller tasks per cell.
const CONCURRENCY: [usize; 3] = [1, 16, 256];
/// Payload bytes per cell.
const PAYLOADS: [usize; 3] = [16, 1024, 16 * 1024];
/// Requests held in flight to measure bookkeeping bytes.
const IN_FLIGHT: usize = 256;
/// The one cell (concurrency, payload bytes) of the "cost of safety" rows, which run
/// right after the matrix variants of that cell.
const SAFETY_CELL: (usize, usize) = (256, 16);

const USAGE: &str = "\
usage: bench [--quick] [--json] [--runs N] [--filter SUBSTR] [--callers N] [--payload BYTES]
             [--duration SECS]
             [--runtime current|multi|both] [--svg PATH] [--no-redis]

  --quick          short cells (0.3 s each), under a minute in all
  --json           one JSON object per row on stdout instead of the table
  --runs N         repeat the whole matrix N times, report medians (default 1)
  --filter SUBSTR  only variants whose name contains SUBSTR; several, comma-separated,
                   for any of them; =NAME for that variant alone
                   (e.g. --filter =channel-order,=channel-order+metrics)
  --callers N      only the cells with N callers (1, 16 or 256), e.g. to profile one
  --payload BYTES  only the echo cells with BYTES-byte payloads (16, 1024 or 16384)
  --duration SECS  measured time per cell (default 2, or 0.3 with --quick)
  --runtime WHICH  run every cell on a current-thread runtime, a 2-worker multi-thread
                   one, or both (default both)
  --svg PATH       also write a chart of req/s and CPU per request (SVG) to PATH
  --no-redis       skip the Redis section (skipped anyway without redis-server)";

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Bench(Options),
    /// Hidden: run an echo server (the benchmark starts these itself).
    Server {
        mode: ServerMode,
        port: u16,
    },
    Help,
}

/// Options of a benchmark run.
#[derive(Debug)]
struct Options {
    json: bool,
    runs: usize,
    filter: Option<String>,
    /// The concurrencies to run: all of [`CONCURRENCY`], or the one `--callers` names.
    callers: Vec<usize>,
    /// The payload sizes of the echo cells: all of [`PAYLOADS`], or the one `--payload`
    /// names.
    payloads: Vec<usize>,
    /// Warm-up and measured time of every cell.
    window: Window,
    /// Skip the Redis section.
    no_redis: bool,
    /// The runtimes every cell runs on.
    runtimes: Vec<Flavor>,
    /// Where to write the SVG chart, if anywhere.
    svg: Option<std::path::PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut quick = false;
    let mut json = false;
    let mut runs = 1;
    let mut filter = None;
    let mut callers = CONCURRENCY.to_vec();
    let mut payloads = PAYLOADS.to_vec();
    let mut duration = None;
    let mut no_redis = false;
    let mut runtimes = Flavor::BOTH.to_vec();
    let mut svg = None;
    let mut server = None;
    let mut port = 0;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--runs" => runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--filter" => filter = Some(value()?),
            "--svg" => svg = Some(value()?.into()),
            "--no-redis" => no_redis = true,
            "--runtime" => {
                let which = value()?;
                runtimes = Flavor::parse_list(&which).ok_or(format!(
                    "--runtime must be current, multi or both, not {which}"
                ))?;
            }
            "--payload" => {
                let n = value()?.parse().map_err(|e| format!("--payload: {e}"))?;
                if !PAYLOADS.contains(&n) {
                    return Err(format!("--payload must be one of {PAYLOADS:?}"));
                }
                payloads = vec![n];
            }
            "--callers" => {
                let n = value()?.parse().map_err(|e| format!("--callers: {e}"))?;
                if !CONCURRENCY.contains(&n) {
                    return Err(format!("--callers must be one of {CONCURRENCY:?}"));
                }
                callers = vec![n];
            }
            "--duration" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--duration: {e}"))?;
                duration = Some(Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?);
            }
            "--server" => {
                let mode = value()?;
                server = Some(ServerMode::parse(&mode).ok_or(format!("unknown server {mode}"))?);
            }
            "--port" => port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "-h" | "--help" => return Ok(Command::Help),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if let Some(mode) = server {
        return Ok(Command::Server { mode, port });
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let (warmup, measure) = if quick {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(500), Duration::from_secs(2))
    };
    Ok(Command::Bench(Options {
        json,
        runs,
        filter,
        callers,
        payloads,
        window: Window {
            warmup,
            measure: duration.unwrap_or(measure),
        },
        no_redis,
        runtimes,
        svg,
    }))
}

fn main() -> ExitCode {
    runtime::without_log_bridge();
    let result = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Bench(options)) => bench(&options),
        Ok(Command::Server { mode, port }) => server::serve(mode, port).map_err(Into::into),
        Ok(Command::Help) => {
            println!("{USAGE}");
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The echo servers, one per mode; killed when dropped.
struct Servers {
    order: ServerProcess,
    reverse: ServerProcess,
    hold: ServerProcess,
}

impl Servers {
    fn start() -> std::io::Result<Self> {
        Ok(Servers {
            order: ServerProcess::spawn(ServerMode::Order)?,
            reverse: ServerProcess::spawn(ServerMode::Reverse)?,
            hold: ServerProcess::spawn(ServerMode::Hold)?,
        })
    }

    fn get(&self, mode: ServerMode) -> &ServerProcess {
        match mode {
            ServerMode::Order => &self.order,
            ServerMode::Reverse => &self.reverse,
            ServerMode::Hold => &self.hold,
        }
    }
}

fn bench(options: &Options) -> Result<(), BoxError> {
    let selected = |group: Group| -> Vec<Variant> {
        Variant::ALL
            .iter()
            .copied()
            .filter(|v| v.group() == group)
            .filter(|v| options.filter.as_ref().is_none_or(|f| selects(f, v.name())))
            .collect()
    };
    let (matrix, safety, redis) = (
        selected(Group::Matrix),
        selected(Group::Safety),
        selected(Group::Redis),
    );
    if matrix.is_empty() && safety.is_empty() && redis.is_empty() {
        return Err("no variant matches the filter".into());
    }

    let echo_cells = options.callers.len() * options.payloads.len() * matrix.len()
        + usize::from(
            options.callers.contains(&SAFETY_CELL.0) && options.payloads.contains(&SAFETY_CELL.1),
        ) * safety.len();
    let redis_cells = if options.no_redis {
        0
    } else {
        options.callers.len() * REDIS_COMMANDS * redis.len()
    };
    let mut progress = Progress::new(
        options.runs * options.runtimes.len() * (echo_cells + redis_cells),
        options.window.warmup + options.window.measure,
    );

    let mut rows = Vec::new();
    if !matrix.is_empty() || !safety.is_empty() {
        rows = report::summarize(&echo(options, &matrix, &safety, &mut progress)?);
        print_rows(options, &rows, "hand");
    }
    let printed = !rows.is_empty();
    rows.extend(redis_section(options, &redis, printed, &mut progress)?);
    if let Some(path) = &options.svg {
        let caption = format!(
            "socketchannel-bench: median of {} run(s), {:?} per cell, {} CPUs",
            options.runs,
            options.window.measure,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        std::fs::write(path, svg::chart(&rows, &caption))
            .map_err(|e| format!("--svg {}: {e}", path.display()))?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}

/// The commands of the Redis section, per concurrency.
#[cfg(feature = "redis")]
const REDIS_COMMANDS: usize = redis::COMMANDS.len();
#[cfg(not(feature = "redis"))]
const REDIS_COMMANDS: usize = 0;

/// Does `--filter FILTER` select the variant `name`? Any of its comma-separated items
/// does: `=NAME` by equality, any other by being part of the name.
fn selects(filter: &str, name: &str) -> bool {
    filter.split(',').any(|item| match item.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(item),
    })
}

/// Prints rows as a table whose ratio columns are headed `rps/BASELINE` and
/// `cpu/BASELINE`, or as JSON lines.
fn print_rows(options: &Options, rows: &[report::Row], baseline: &str) {
    if options.json {
        rows.iter()
            .for_each(|row| println!("{}", report::json(row)));
    } else {
        print!("{}", report::table(rows, baseline));
    }
}

/// Runs and prints the Redis section for `variants`, unless there are none, or
/// `--no-redis` or a missing `redis-server` skips it (a note says so), and returns its
/// rows. `after_table`: a table was printed before it.
#[cfg(feature = "redis")]
fn redis_section(
    options: &Options,
    variants: &[Variant],
    after_table: bool,
    progress: &mut Progress,
) -> Result<Vec<report::Row>, BoxError> {
    if variants.is_empty() {
        return Ok(Vec::new());
    }
    if options.no_redis {
        eprintln!("note: Redis section skipped (--no-redis)");
        return Ok(Vec::new());
    }
    let plan = redis::Plan {
        runs: options.runs,
        callers: &options.callers,
        runtimes: &options.runtimes,
        window: options.window,
    };
    let Some(section) = redis::run(variants, &plan, progress)? else {
        return Ok(Vec::new());
    };
    let rows = report::summarize(&section.samples);
    if options.json {
        print_rows(options, &rows, "redis-rs-notimeout");
        if let Some(limit) = &section.limit {
            print!("{}", limit.json());
        }
        return Ok(rows);
    }
    if after_table {
        println!();
    }
    println!("{}", section.heading);
    print_rows(options, &rows, "redis-rs-notimeout");
    if let Some(limit) = &section.limit {
        print!("\n{limit}");
    }
    Ok(rows)
}

/// Without the `redis` feature there is no Redis section.
#[cfg(not(feature = "redis"))]
fn redis_section(
    options: &Options,
    _: &[Variant],
    _: bool,
    _: &mut Progress,
) -> Result<Vec<report::Row>, BoxError> {
    if !options.no_redis {
        eprintln!("note: built without the `redis` feature: no Redis section");
    }
    Ok(Vec::new())
}

/// The echo part: the matrix, with the "cost of safety" rows in their cell, each cell on
/// every runtime of `--runtime`. Returns a sample per variant, runtime, cell and run.
fn echo(
    options: &Options,
    matrix: &[Variant],
    safety: &[Variant],
    progress: &mut Progress,
) -> Result<Vec<Sample>, BoxError> {
    let servers = Servers::start()?;
    let runtime = |variant: Variant, flavor: Flavor| match variant.traced() {
        Some(level) => CellRuntime::traced(level, flavor),
        None => CellRuntime::plain(flavor),
    };

    let mut samples = Vec::new();
    for run in 1..=options.runs {
        let mut inflight = HashMap::new();
        for &flavor in &options.runtimes {
            for &variant in matrix.iter().chain(safety) {
                if !variant.measures_inflight() {
                    inflight.insert((variant, flavor), None);
                    continue;
                }
                let addr = servers.get(ServerMode::Hold).addr();
                let bytes =
                    runtime(variant, flavor)?.block_on(variant.run(addr, InFlight(IN_FLIGHT)));
                let bytes = bytes
                    .inspect_err(|e| {
                        eprintln!(
                            "warning: {variant} ({flavor}): in-flight bytes not measured: {e}"
                        )
                    })
                    .ok();
                inflight.insert((variant, flavor), bytes);
            }
        }

        // Variants side by side within each cell and runtime, so they see the same
        // machine noise.
        for &concurrency in &options.callers {
            for &payload in &options.payloads {
                let extra = if (concurrency, payload) == SAFETY_CELL {
                    safety
                } else {
                    &[]
                };
                for &flavor in &options.runtimes {
                    for &variant in matrix.iter().chain(extra) {
                        let load = Load {
                            concurrency,
                            payload,
                            window: options.window,
                        };
                        let server = variant.mode().server().expect("an echo variant");
                        let addr = servers.get(server).addr();
                        progress.start();
                        let outcome = runtime(variant, flavor)?
                            .block_on(variant.run(addr, load))
                            .map_err(|e| {
                                format!("{variant} ({flavor}) c={concurrency} p={payload}: {e}")
                            })?;
                        let sample = Sample::new(
                            variant,
                            flavor,
                            concurrency,
                            Payload::Bytes(payload),
                            &outcome,
                            inflight[&(variant, flavor)],
                        );
                        progress.finish(&sample, run, options.runs);
                        samples.push(sample);
                    }
                }
            }
        }
    }
    Ok(samples)
}
