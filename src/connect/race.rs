//! Happy eyeballs (RFC 8305, section 5): connection attempts to a name's addresses,
//! staggered, raced, the first to connect winning. Over any kind of address, so the
//! simulation's network (feature `testing`) races its hosts with the same code as
//! [`TcpConnector`](crate::TcpConnector) races sockets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// Starts `connect` for each address in turn, the next when the latest has not
/// finished within `delay` or at once when an attempt fails; the attempts started keep
/// racing, the first success wins and the others are dropped. All failed: the last
/// failure.
pub(crate) async fn race<A, F, Fut, T>(
    addrs: Vec<A>,
    delay: Duration,
    mut connect: F,
) -> io::Result<T>
where
    F: FnMut(A) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut waiting = addrs.into_iter().peekable();
    let mut running: Vec<Pin<Box<Fut>>> = Vec::new();
    let mut last: Option<io::Error> = None;
    let stagger = tokio::time::sleep(delay);
    tokio::pin!(stagger);
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        loop {
            let mut failed = false;
            let mut i = 0;
            while i < running.len() {
                match running[i].as_mut().poll(cx) {
                    Poll::Ready(Ok(stream)) => return Poll::Ready(Ok(stream)),
                    Poll::Ready(Err(e)) => {
                        last = Some(e);
                        failed = true;
                        drop(running.swap_remove(i));
                    }
                    Poll::Pending => i += 1,
                }
            }
            let next_due = waiting.peek().is_some()
                && (failed || running.is_empty() || stagger.as_mut().poll(cx).is_ready());
            if next_due {
                let addr = waiting.next().expect("peeked");
                running.push(Box::pin(connect(addr)));
                stagger.as_mut().reset(Instant::now() + delay);
                continue;
            }
            if running.is_empty() {
                return Poll::Ready(Err(last.take().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")
                })));
            }
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What each fake attempt does: fail or connect after a time, or never answer.
    #[derive(Clone, Copy)]
    enum Fate {
        Connects(u64),
        Fails(u64),
        Never,
    }

    /// Races fake attempts, one per fate (address port = index), under paused time:
    /// what won (or the error's text), when each attempt started and when the race
    /// ended, in ms from the start, and how many attempts were dropped unfinished.
    async fn run(fates: &[Fate]) -> (Result<u16, String>, Vec<(u16, u64)>, u64, usize) {
        let start = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(());
        let addrs = (0..fates.len() as u16).collect();
        let fates = fates.to_vec();
        let log = started.clone();
        let guard = live.clone();
        // Bounded: a race that never ends (attempts run one after another, the first
        // never answering) fails here instead of hanging.
        let race = race(addrs, Duration::from_millis(250), move |a| {
            let ms = start.elapsed().as_millis() as u64;
            log.lock().unwrap().push((a, ms));
            let fate = fates[a as usize];
            let alive = guard.clone();
            async move {
                let _alive = alive;
                match fate {
                    Fate::Connects(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(a)
                    }
                    Fate::Fails(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(io::Error::other(format!("attempt {a} failed")))
                    }
                    Fate::Never => std::future::pending().await,
                }
            }
        });
        let out = tokio::time::timeout(Duration::from_secs(60), race)
            .await
            .expect("the race ends")
            .map_err(|e| e.to_string());
        let ended = start.elapsed().as_millis() as u64;
        let started = started.lock().unwrap().clone();
        // Every attempt's future is gone once the race is: none left running.
        let leftover = Arc::strong_count(&live) - 1;
        (out, started, ended, leftover)
    }

    #[tokio::test(start_paused = true)]
    async fn a_blackholed_first_address_costs_the_delay_not_the_timeout() {
        use Fate::*;
        let (out, started, ended, leftover) = run(&[Never, Connects(10)]).await;
        assert_eq!(out, Ok(1));
        assert_eq!(started, [(0, 0), (1, 250)]);
        assert_eq!(ended, 260);
        assert_eq!(leftover, 0, "the losing attempt is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_keep_racing_and_the_first_to_connect_wins() {
        use Fate::*;
        // The first answers at 400 ms: after the second started (at 250, to answer at
        // 550), before the third was due (at 500). The first wins.
        let (out, started, ended, _) = run(&[Connects(400), Connects(300), Connects(10)]).await;
        assert_eq!(out, Ok(0));
        assert_eq!(started, [(0, 0), (1, 250)]);
        assert_eq!(ended, 400);
        // The third, started at 500, wins over two slow ones.
        let (out, started, ended, leftover) =
            run(&[Connects(900), Connects(900), Connects(10)]).await;
        assert_eq!(out, Ok(2));
        assert_eq!(started, [(0, 0), (1, 250), (2, 500)]);
        assert_eq!(ended, 510);
        assert_eq!(leftover, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_address_at_once() {
        use Fate::*;
        let (out, started, ended, _) = run(&[Fails(5), Fails(20), Connects(10)]).await;
        assert_eq!(out, Ok(2));
        assert_eq!(started, [(0, 0), (1, 5), (2, 25)]);
        assert_eq!(ended, 35);
    }

    #[tokio::test(start_paused = true)]
    async fn all_failed_is_the_last_failure() {
        use Fate::*;
        // The first fails last (at 600), after the second (250 + 10) and third.
        let (out, _, ended, _) = run(&[Fails(600), Fails(10), Fails(20)]).await;
        assert_eq!(out, Err("attempt 0 failed".to_string()));
        assert_eq!(ended, 600);
        let (out, _, _, _) = run(&[]).await;
        assert_eq!(out, Err("host resolved to no address".to_string()));
    }
}
