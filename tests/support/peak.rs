//! The most calls a channel had in flight at once while a load ran: [`PeakInFlight`]
//! samples `counters().in_flight` every 200 µs on a task of its own.
//!
//! ```ignore
//! let sampler = PeakInFlight::start(&channel);
//! // ... run the load ...
//! sampler.stop();
//! assert!(sampler.peak() >= 100);
//! ```

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socketchannel::Channel;
use tokio::task::JoinHandle;

/// Samples a channel's calls in flight until stopped (or dropped), keeping the most seen.
pub struct PeakInFlight {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PeakInFlight {
    /// Starts sampling `channel`.
    pub fn start<Req, Resp>(channel: &Channel<Req, Resp>) -> PeakInFlight
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let peak = Arc::new(AtomicU64::new(0));
        let task = {
            let (channel, peak) = (channel.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(channel.counters().in_flight, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        };
        PeakInFlight { peak, task }
    }

    /// Stops sampling.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// The most calls seen in flight at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakInFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}
