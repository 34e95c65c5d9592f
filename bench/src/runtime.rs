//! The runtime each experiment runs on: a fresh tokio runtime, so no task of one client
//! outlives its cell, of one of two flavors ([`Flavor`]): a current-thread runtime (every
//! task on the thread in `block_on`) or a multi-thread runtime with two workers. For `channel-order+tracing` and
//! `channel-order+tracing-debug`, the runtime also carries a tracing subscriber,
//! installed on its threads only and gone with it.
//!
//! The subscriber is `tracing_subscriber::fmt` at INFO (or DEBUG) level writing to
//! `std::io::sink`: the row measures what the crate's instrumentation costs once someone
//! listens (level checks, spans and events that pass them, formatting), not terminal
//! output. It is set as
//! the thread default (`tracing::dispatcher::set_default`) on every thread of the runtime
//! and on the thread blocked in `block_on`, rather than as the global default, so it
//! does not outlive its cell: the rows after it (and the next run's rows) run as they
//! would with no subscriber. When the runtime is dropped, tracing's global level filter
//! and the callsites' cached interest are put back to "nobody listens".

use std::cell::RefCell;
use std::future::Future;
use std::io;

use tracing::dispatcher::{self, DefaultGuard, Dispatch};
use tracing::level_filters::LevelFilter;

/// The kind of runtime a cell runs on: the `runtime` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flavor {
    /// `Builder::new_current_thread()`: callers, connection tasks and the harness share
    /// the one thread blocked in `block_on`.
    Current,
    /// `Builder::new_multi_thread().worker_threads(2)`.
    Multi,
}

impl Flavor {
    /// Both, in the order each cell runs them.
    pub const BOTH: [Flavor; 2] = [Flavor::Current, Flavor::Multi];

    /// The name in the report and on the command line (`--runtime`).
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Current => "current",
            Flavor::Multi => "multi",
        }
    }

    /// Parses `--runtime current|multi|both`.
    pub fn parse_list(text: &str) -> Option<Vec<Flavor>> {
        match text {
            "current" => Some(vec![Flavor::Current]),
            "multi" => Some(vec![Flavor::Multi]),
            "both" => Some(Flavor::BOTH.to_vec()),
            _ => None,
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Worker threads of the [`Flavor::Multi`] runtime.
const WORKERS: usize = 2;

thread_local! {
    /// This thread's hold on the subscriber, while a traced runtime runs on it.
    static SUBSCRIBED: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// A runtime for one experiment; see the module documentation.
#[derive(Debug)]
pub struct CellRuntime {
    /// `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// The subscriber, for a traced runtime.
    subscriber: Option<Dispatch>,
}

impl CellRuntime {
    /// A plain runtime: no subscriber.
    pub fn plain(flavor: Flavor) -> io::Result<Self> {
        Ok(CellRuntime {
            runtime: Some(builder(flavor).build()?),
            subscriber: None,
        })
    }

    /// A runtime whose threads all have a `fmt` subscriber at `level` writing to
    /// `std::io::sink` as their default. (On a current-thread runtime the tasks run on
    /// the thread in [`block_on`](Self::block_on), which gets the subscriber there; the
    /// runtime's other threads are its blocking pool's.)
    pub fn traced(level: LevelFilter, flavor: Flavor) -> io::Result<Self> {
        let subscriber = Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(io::sink)
                .finish(),
        );
        // Only the runtime holds the subscriber strongly; the threads take a strong
        // reference for as long as they run (the guard), so dropping the runtime drops it.
        let weak = subscriber.downgrade();
        let runtime = builder(flavor)
            .on_thread_start(move || {
                if let Some(subscriber) = weak.upgrade() {
                    let guard = dispatcher::set_default(&subscriber);
                    SUBSCRIBED.set(Some(guard));
                }
            })
            .on_thread_stop(|| SUBSCRIBED.set(None))
            .build()?;
        Ok(CellRuntime {
            runtime: Some(runtime),
            subscriber: Some(subscriber),
        })
    }

    /// Runs `future` to completion on this runtime (with the subscriber, if any, on the
    /// calling thread too).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _subscribed = self.subscriber.as_ref().map(dispatcher::set_default);
        self.runtime
            .as_ref()
            .expect("the runtime lives until the CellRuntime is dropped")
            .block_on(future)
    }
}

impl Drop for CellRuntime {
    fn drop(&mut self) {
        // Shuts the runtime down and joins its threads; each drops its guard on the way
        // out (`on_thread_stop`).
        drop(self.runtime.take());
        if let Some(subscriber) = self.subscriber.take() {
            let weak = subscriber.downgrade();
            drop(subscriber);
            if weak.upgrade().is_some() {
                eprintln!("warning: the tracing subscriber outlived its runtime");
            }
            forget_subscribers();
        }
    }
}

/// Puts tracing back as if no subscriber had ever been set: the global level filter at
/// OFF, so every `debug!` and `info!` fails its first check again, and every callsite's
/// cached interest at "never".
///
/// `tracing::callsite::rebuild_interest_cache` alone would leave the filter at TRACE: with
/// the subscriber gone, it asks tracing's `NoSubscriber`, which gives no level hint. So
/// a subscriber that enables nothing is registered (which rebuilds the filter and the
/// interests from it) and dropped.
fn forget_subscribers() {
    drop(Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(LevelFilter::OFF)
            .finish(),
    ));
    if LevelFilter::current() != LevelFilter::OFF {
        eprintln!(
            "warning: tracing's level filter is {} after the traced cell, not OFF",
            LevelFilter::current()
        );
    }
}

/// Turns off `tracing`'s bridge to `log` for the whole process, before any row runs.
///
/// tokio-tower needs tower 0.4 with its default features, which turn on `tracing`'s
/// `log` feature for the whole binary: until a dispatcher has been set, every span then
/// also goes to `log` as it is made, entered, left and closed (`Span::log`, about 4% of
/// a `channel-order` run's instructions under callgrind). A user's build of the crate has
/// no such feature (its `tower` has no default features). Worse, the first traced row
/// (`channel-order+tracing`) sets a dispatcher and so turned the bridge off for the rows
/// after it only: a row read differently by where it ran in the matrix. Setting and
/// dropping an empty thread default marks a dispatcher as set, which is all the bridge
/// asks; the global default and every level check stay as they were.
pub fn without_log_bridge() {
    drop(dispatcher::set_default(&Dispatch::none()));
}

fn builder(flavor: Flavor) -> tokio::runtime::Builder {
    let mut builder = match flavor {
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
        Flavor::Multi => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(WORKERS);
            builder
        }
    };
    builder.enable_all();
    builder
}
