//! Review of 4cfd23b: a pool method call waiting for room on a connection chooses
//! again when that connection is taken out (`Pool::room`). Each test below showed a
//! defect the review found, now fixed, or holds what the review found sound.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Call, Channel, Endpoint, Error, Kind, Order, Reconnect};
use tower::ServiceExt;
use tower::discover::Change;

use support::bounded;
use support::channel::msg;
use support::codec::{Msg, TestProto};
use support::memory::{Io, Net};
use support::pool::held_intake;

/// Echoes every request, recording its body in `seen`.
fn net(seen: Arc<Mutex<Vec<String>>>) -> Net {
    Net::new(move |_: Endpoint, mut io: Io| {
        let seen = seen.clone();
        async move {
            while let Some(Ok(req)) = io.next().await {
                seen.lock().unwrap().push(req.text().to_string());
                if io.send(req).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// The error of the call `waiting` ends with, within 5 s (of paused time).
async fn failed(waiting: tokio::task::JoinHandle<Result<Msg, Error>>) -> Error {
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the call ends")
        .expect("the call's task")
        .expect_err("the call fails")
}

/// Counts the polls of the future it wraps.
struct Counted<F> {
    polls: Arc<AtomicUsize>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

/// Q6: a connection *leased* while a method call waits for room on it is held out of
/// the choice just as a removed one is, and its intake is as full of slots a ready
/// handle holds; the call chooses again (b is usable and empty). Found: `room` looked
/// only at `removed`, and the call waited on a for good.
#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_room_on_a_connection_leased_goes_to_another() {
    bounded(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let net = net(seen.clone());
        let (pool, changes, holder) = held_intake(&net).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("moved")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits for room on a");
        let lease = pool.lease().await.unwrap();
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("chosen again when a was leased (b has room), not waiting on a")
            .unwrap()
            .expect("answered");
        assert_eq!(reply.text(), "moved");
        drop((lease, holder));
    })
    .await;
}

/// Q4: a call re-chosen after its connection was taken out keeps its one deadline:
/// while the only other connection connects (for ever), it fails `Timeout`, not sent,
/// its request handed back, at the deadline it was given (not one restarted).
#[tokio::test(start_paused = true)]
async fn a_rechosen_call_fails_timeout_at_its_first_deadline_not_sent() {
    bounded(async {
        let net = net(Arc::default());
        let (pool, changes, holder) = held_intake(&net).await;
        let start = tokio::time::Instant::now();
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let out = pool
                    .request(Call::new(msg("late")).timeout(Duration::from_secs(1)))
                    .await;
                (out, tokio::time::Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        net.hang("b:2");
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A call of its own makes b connect (for ever): b is then held out as Soon.
        let kick = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("kick")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        changes.send(Change::Remove("a")).unwrap();
        let (out, at) = waiting.await.unwrap();
        let mut err = out.expect_err("b never connects");
        assert_eq!(err.kind(), Kind::Timeout, "{err:?}");
        assert!(err.is_not_sent());
        assert_eq!(
            err.take_request::<Msg>()
                .map(|m| m.text().to_string())
                .as_deref(),
            Some("late")
        );
        let took = at - start;
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
            "at its deadline: {took:?}"
        );
        kick.abort();
        drop(holder);
    })
    .await;
}

/// Q1: on a multi-thread runtime, the removal races the waiter's registration; the
/// waiter must never miss it (it would then wait on the holder's slot for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_removal_is_never_missed_on_a_multi_thread_runtime() {
    bounded(async {
        for round in 0..60u32 {
            let net = net(Arc::default());
            let (pool, changes, holder) = held_intake(&net).await;
            let waiting = {
                let pool = pool.clone();
                tokio::spawn(async move { pool.request(msg("moved")).await })
            };
            // Vary where the removal lands in the waiter's steps.
            for _ in 0..(round % 6) {
                tokio::task::yield_now().await;
            }
            if round % 3 == 0 {
                tokio::time::sleep(Duration::from_micros(u64::from(round) * 20)).await;
            }
            changes
                .send(Change::Insert("b", Endpoint::new("b", 2)))
                .unwrap();
            changes.send(Change::Remove("a")).unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(3), waiting)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the waiter missed the removal"))
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            assert_eq!(reply.text(), "moved");
            // No slot leaked on b: nothing queued or in flight once answered.
            let b = pool.channels().next().expect("b");
            support::eventually(Duration::from_secs(2), "b's load back to 0", || {
                tower::load::Load::load(&b) == 0
            })
            .await;
            drop(holder);
        }
    })
    .await;
}

/// Q2: lease churn on the connection two calls wait on does not cost them their places
/// in its intake's queue: once the holder lets go, the first waiter goes first.
#[tokio::test(start_paused = true)]
async fn waiters_keep_their_places_through_lease_churn() {
    bounded(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let net = net(seen.clone());
        let (pool, _changes, holder) = held_intake(&net).await;
        let spawn = |body: &'static str| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg(body)).await })
        };
        let first = spawn("first");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = spawn("second");
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..200 {
            let lease = pool.lease().await.unwrap();
            tokio::task::yield_now().await;
            drop(lease);
            tokio::task::yield_now().await;
        }
        drop(holder);
        assert_eq!(first.await.unwrap().unwrap().text(), "first");
        assert_eq!(second.await.unwrap().unwrap().text(), "second");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, ["warm", "first", "second"]);
    })
    .await;
}

/// Q2: every lease taken or returned, and every change of the list, wakes *every* call
/// waiting for room anywhere in the pool (`members.changes` is pool-wide): 64 calls
/// waiting on a full connection, 100 lease cycles on another, cost 12,500 polls
/// though none of them could go on (found; before 4cfd23b such a call woke only for
/// room). Each connection now has its own notice of being taken (`Slot::taken`).
#[tokio::test(start_paused = true)]
async fn lease_churn_elsewhere_does_not_wake_every_call_waiting_for_room() {
    bounded(async {
        let net = net(Arc::default());
        let (pool, changes, holder) = held_intake(&net).await;
        let polls = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..64)
            .map(|i| {
                let pool = pool.clone();
                let polls = polls.clone();
                tokio::spawn(Counted {
                    polls,
                    inner: Box::pin(async move { pool.request(msg(format!("w{i}"))).await }),
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Another endpoint, connected, leased and returned again and again.
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        pool.connect().await.unwrap();
        let before = polls.load(Ordering::Relaxed);
        for _ in 0..100 {
            let lease = pool.lease().await.unwrap();
            assert_eq!(lease.request(msg("tx")).await.unwrap().text(), "tx");
            drop(lease);
            tokio::task::yield_now().await;
        }
        let during = polls.load(Ordering::Relaxed) - before;
        drop(holder);
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert!(
            during <= 64 * 4,
            "64 waiters, 100 lease cycles elsewhere: {during} polls of the waiters"
        );
    })
    .await;
}

/// Q5: a connection taken out, then the pool closed. The call does not loop choosing
/// again (paused time reaches the 5 s timeout: nothing spins). Found: it never ended
/// either: re-chosen onto b, whose only slot a ready handle holds, it waited for room
/// there, and closing b did not end that wait (older, see the two below).
#[tokio::test(start_paused = true)]
async fn removed_then_closed_ends_the_call_not_sent() {
    bounded(async {
        let net = net(Arc::default());
        let (pool, changes, holder) = held_intake(&net).await;
        changes
            .send(Change::Insert("b", Endpoint::new("b", 2)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // b full too: the holder's balance now reserved b's only slot as well.
        let mut holder2 = pool.clone();
        ServiceExt::<Msg>::ready(&mut holder2).await.unwrap();
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("x")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        changes.send(Change::Remove("a")).unwrap();
        tokio::task::yield_now().await;
        pool.close();
        let err = failed(waiting).await;
        assert!(err.is_not_sent(), "{err:?}");
        eprintln!("removed then closed: {:?}", err.kind());
        drop((holder, holder2));
    })
    .await;
}

/// Q5 (older than 4cfd23b): no removal, the pool closed while a call waits for room a
/// ready handle holds: the call waited on for good; it fails `Closed` now.
#[tokio::test(start_paused = true)]
async fn a_pool_call_waiting_for_room_ends_when_the_pool_is_closed() {
    bounded(async {
        let net = net(Arc::default());
        let (pool, _changes, holder) = held_intake(&net).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.request(msg("x")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        pool.close();
        let err = failed(waiting).await;
        assert_eq!(err.kind(), Kind::Closed, "{err:?}");
        drop(holder);
    })
    .await;
}

/// The same on one `Channel`: `close()` does not close the intake (it can reopen), so
/// a wait for room in it was never failed; a close ends it now (`reserve_or_close`).
#[tokio::test(start_paused = true)]
async fn a_channel_call_waiting_for_room_ends_when_the_channel_is_closed() {
    bounded(async {
        let net = net(Arc::default());
        let ch: Channel<Msg, Msg> = Channel::builder()
            .host("a:1")
            .config(socketchannel::Config::default().queue(1))
            .reconnect(Reconnect::Persistent)
            .connector(net.connector(), Order::new(TestProto))
            .unwrap();
        assert_eq!(ch.request(msg("warm")).await.unwrap().text(), "warm");
        let mut holder = ch.clone();
        ServiceExt::<Msg>::ready(&mut holder).await.unwrap();
        let waiting = {
            let ch = ch.clone();
            tokio::spawn(async move { ch.request(msg("x")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        ch.close();
        let err = failed(waiting).await;
        assert_eq!(err.kind(), Kind::Closed, "{err:?}");
        drop(holder);
    })
    .await;
}
