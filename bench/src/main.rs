//! Benchmark of `socketchannel` against a hand-written minimal client and tokio-tower,
//! side by side in one run, over loopback, with the same codec and the same echo server.
//!
//! ```text
//! cargo run --release -p socketchannel-bench -- [--quick] [--json] [--runs N] [--filter SUBSTR]
//! ```
//!
//! See `bench/README.md` for what each column means.
//!
//! # Layout
//!
//! - `codec`: the wire format (`u32` length, `u64` id, payload) and its tokio-util codec.
//! - `server`: the echo server, run as a child process of this same binary.
//! - `hand`: the hand-written baselines, one per mode.
//! - `tokio_tower`: the peer, tokio-tower's clients behind tower's `Buffer`.
//! - `engine`: this crate's engine (feature `engine`).
//! - `variant`: the list of clients and how each is built.
//! - `load`: the experiments: closed-loop load, and heap per in-flight request.
//! - `measure`: counting allocator, counting socket, CPU time, latency histogram.
//! - `report`: medians, ratios, table and JSON.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod codec;
#[cfg(feature = "engine")]
mod engine;
mod hand;
mod load;
mod measure;
mod report;
mod server;
mod tokio_tower;
mod variant;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use tower::BoxError;

use crate::load::Load;
use crate::report::Sample;
use crate::server::{ServerMode, ServerProcess};
use crate::variant::{InFlight, Variant};

/// Caller tasks per cell.
const CONCURRENCY: [usize; 3] = [1, 16, 256];
/// Payload bytes per cell.
const PAYLOADS: [usize; 2] = [16, 1024];
/// Requests held in flight to measure bookkeeping bytes.
const IN_FLIGHT: usize = 256;

const USAGE: &str = "\
usage: bench [--quick] [--json] [--runs N] [--filter SUBSTR] [--duration SECS]

  --quick          short cells (0.3 s each), under a minute in all
  --json           one JSON object per row on stdout instead of the table
  --runs N         repeat the whole matrix N times, report medians (default 1)
  --filter SUBSTR  only variants whose name contains SUBSTR
  --duration SECS  measured time per cell (default 2, or 0.3 with --quick)";

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
    warmup: Duration,
    measure: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut quick = false;
    let mut json = false;
    let mut runs = 1;
    let mut filter = None;
    let mut duration = None;
    let mut server = None;
    let mut port = 0;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            "--runs" => runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--filter" => filter = Some(value()?),
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
        warmup,
        measure: duration.unwrap_or(measure),
    }))
}

fn main() -> ExitCode {
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

/// A fresh runtime for each experiment, so no task of one client outlives its cell.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn bench(options: &Options) -> Result<(), BoxError> {
    let variants: Vec<Variant> = Variant::ALL
        .iter()
        .copied()
        .filter(|v| {
            options
                .filter
                .as_ref()
                .is_none_or(|f| v.name().contains(f.as_str()))
        })
        .collect();
    if variants.is_empty() {
        return Err("no variant matches the filter".into());
    }
    let servers = Servers::start()?;

    let mut samples = Vec::new();
    for run in 1..=options.runs {
        let mut inflight = HashMap::new();
        for &variant in &variants {
            let addr = servers.get(ServerMode::Hold).addr();
            let bytes = runtime()?.block_on(variant.run(addr, InFlight(IN_FLIGHT)));
            let bytes = bytes
                .inspect_err(|e| eprintln!("warning: {variant}: in-flight bytes not measured: {e}"))
                .ok();
            inflight.insert(variant, bytes);
        }

        // Variants side by side within each cell, so they see the same machine noise.
        for concurrency in CONCURRENCY {
            for payload in PAYLOADS {
                for &variant in &variants {
                    let load = Load {
                        concurrency,
                        payload,
                        warmup: options.warmup,
                        measure: options.measure,
                    };
                    let addr = servers.get(variant.mode().server()).addr();
                    let outcome = runtime()?
                        .block_on(variant.run(addr, load))
                        .map_err(|e| format!("{variant} c={concurrency} p={payload}: {e}"))?;
                    let sample = Sample::new(variant, load, &outcome, inflight[&variant]);
                    eprintln!(
                        "run {run}/{runs}  {variant:<20} c={concurrency:<4} p={payload:<5} \
                         {rps:>9.0} req/s  p50 {p50:>8.1} us  p99 {p99:>8.1} us",
                        runs = options.runs,
                        rps = sample.rps,
                        p50 = sample.p50_us,
                        p99 = sample.p99_us,
                    );
                    samples.push(sample);
                }
            }
        }
    }
    drop(servers);

    let rows = report::summarize(&samples);
    if options.json {
        for row in &rows {
            println!("{}", report::json(row));
        }
    } else {
        print!("{}", report::table(&rows));
    }
    Ok(())
}
