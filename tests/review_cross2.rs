//! Helper-60's hunt for failure-path defects where two features meet: a host that
//! drains every connection during the handshake (its queued calls stranded, its
//! backups never tried). Each test failed before its fix.

#![cfg(feature = "testing")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{Backoff, Channel, Endpoint, Handshake, Order, Session};

use support::channel::{msg, spawn_request};
use support::codec::{Msg, TestProto, Verdicts};
use support::memory::{Io, Net, Seen};

/// Connection `n` (counted from 1 over every host) sends a drain notice at accept if
/// `drain(endpoint, n)`; then it answers each request with `body@host` (`Verdicts`
/// reads `DRAIN` as a drain), records `body@host#n`, and closes a second after its
/// first reply if `close_after_first(n)` (the server's idle timeout).
fn scripted(
    seen: &Seen,
    drain: impl Fn(&Endpoint, usize) -> bool + Send + Sync + 'static,
    close_after_first: fn(usize) -> bool,
) -> (Net, Arc<AtomicUsize>) {
    let seen = seen.clone();
    let drain = Arc::new(drain);
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let net = Net::new(move |ep: Endpoint, mut io: Io| {
        let seen = seen.clone();
        let k = count.fetch_add(1, Ordering::SeqCst) + 1;
        let drains = drain(&ep, k);
        async move {
            if drains && io.send(Msg::new("DRAIN")).await.is_err() {
                return;
            }
            while let Some(Ok(req)) = io.next().await {
                seen.lock()
                    .unwrap()
                    .push(format!("{}@{ep}#{k}", req.text()));
                let reply = Msg::with_id(req.id, format!("{}@{ep}", req.text()));
                if io.send(reply).await.is_err() {
                    break;
                }
                if close_after_first(k) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    });
    (net, n)
}

/// Hosts whose name starts with `d` drain every connection at accept.
fn draining_net(seen: &Seen) -> Net {
    scripted(seen, |ep, _| ep.host().starts_with('d'), |_| false).0
}

/// `builder` for `d:1`, with a handshake that awaits a request of its own (so a drain
/// notice sent at accept is read during the handshake).
fn with_hello(builder: socketchannel::Builder<Msg, Msg>) -> socketchannel::Builder<Msg, Msg> {
    builder
        .host("d:1")
        .handshake(|conn: Channel<Msg, Msg>, _ep: Endpoint| async move {
            conn.request(msg("hello")).await?;
            Ok(Handshake::Ready)
        })
}

/// A short backoff, so a test goes through many passes.
fn short() -> Backoff {
    Backoff::exponential(Duration::from_millis(10), Duration::from_millis(100))
}

/// A host that drains every connection at once, with a handshake that awaits a
/// request: the drain notice is read during the handshake, so the queued user call is
/// never written there, and the connection is left as a failed attempt. The next pass
/// tried the same host again and again: the call, never written and never failed,
/// waited for ever (60 s of virtual time, 20 connects). Now, with every host failed
/// so, it fails fast, *not sent*, as after a failed pass.
#[tokio::test(start_paused = true)]
async fn d1_a_host_draining_every_connection_during_the_handshake_fails_queued_calls_not_sent() {
    let seen = Seen::default();
    let net = draining_net(&seen);
    let ch: support::channel::Ch = with_hello(Channel::builder())
        .connector(net.connector(), Order::new(Verdicts))
        .unwrap();
    let call = spawn_request(&ch, "x");
    let out = tokio::time::timeout(Duration::from_secs(60), call).await;
    let connects = net.connects();
    let out = out.unwrap_or_else(|_| {
        panic!(
            "a queued call still unresolved after 60 s, {connects} connects, state {:?}, seen {:?}",
            *ch.state().borrow(),
            seen.lock().unwrap()
        )
    });
    let err = out.expect("joined").expect_err("no host serves");
    assert!(err.is_not_sent(), "{err:?}");
    assert!(
        !seen.lock().unwrap().iter().any(|s| s.starts_with("x@")),
        "never executed"
    );
}

/// The same with a healthy backup: a host that drains at once was not tried last (as a
/// crash-looping or wrong host is), so the backup was never tried and the call waited
/// for ever although the backup would serve it.
#[tokio::test(start_paused = true)]
async fn d2_a_host_draining_during_the_handshake_is_tried_last_and_the_backup_serves() {
    let seen = Seen::default();
    let net = draining_net(&seen);
    let ch: support::channel::Ch = with_hello(Channel::builder().backup("b:2"))
        .connector(net.connector(), Session::new(Verdicts))
        .unwrap();
    let call = spawn_request(&ch, "x");
    let out = tokio::time::timeout(Duration::from_secs(60), call).await;
    let tried = net.tried();
    assert!(
        matches!(&out, Ok(Ok(Ok(m))) if m.text() == "x@b:2"),
        "{out:?}: the backup was tried {} times in {} connects",
        tried.iter().filter(|t| *t == "b:2").count(),
        tried.len()
    );
}

// Helper-61's review of the fix above (the `d3_*` tests).

/// `d1` with `max_attempts(2)`: the leave that should fail the queued call fast was the
/// one whose backoff gave up, which went `Idle` and dropped `fail_fast`; `Idle`
/// restarted a pass at once (the call is queued): 11,999 connects in 60 s, the call
/// never failed. The calls now fail there.
#[tokio::test(start_paused = true)]
async fn d3_with_max_attempts_the_queued_call_of_a_draining_host_fails_not_sent() {
    let seen = Seen::default();
    let (net, conns) = scripted(&seen, |_, _| true, |_| false);
    let ch: support::channel::Ch = with_hello(Channel::builder().backoff(short().max_attempts(2)))
        .connector(net.connector(), Order::new(Verdicts))
        .unwrap();
    let call = spawn_request(&ch, "x");
    let out = tokio::time::timeout(Duration::from_secs(60), call).await;
    let out = out.unwrap_or_else(|_| {
        panic!(
            "queued call unresolved after 60 s, {} connects",
            conns.load(Ordering::SeqCst)
        )
    });
    let err = out.expect("joined").expect_err("no host serves");
    assert!(err.is_not_sent(), "{err:?}");
}

/// The first fix counted `failures`, which every failure since a reply adds to, not the
/// connections left unanswered: after a handshaken connection the server closed while
/// idle ("lost before it answered"), a single drain during the next handshake (a
/// graceful restart) failed the queued call, which the next connection serves.
#[tokio::test(start_paused = true)]
async fn d3_one_drain_after_an_idle_close_leaves_the_call_to_the_next_connection() {
    let seen = Seen::default();
    // #1: handshake answered, then closed (idle timeout); #2: drains; #3+: serve.
    let (net, conns) = scripted(&seen, |_, k| k == 2, |k| k == 1);
    let ch: support::channel::Ch = with_hello(Channel::builder().backoff(short()))
        .connector(net.connector(), Order::new(Verdicts))
        .unwrap();
    ch.connect().await.expect("first connection");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    let out = tokio::time::timeout(Duration::from_secs(60), spawn_request(&ch, "x")).await;
    let out = out.expect("resolved").expect("joined");
    assert!(
        matches!(&out, Ok(m) if m.text() == "x@d:1"),
        "{out:?} after {} connects, seen {:?}",
        conns.load(Ordering::SeqCst),
        seen.lock().unwrap()
    );
}

/// On a plain channel, a `connect()` made during a shutdown reopens the channel after
/// it, even when another `shutdown()` comes (documented); the lease fix had made a
/// later shutdown fail it `Closed`. Only a pool's own reopening is called off.
#[tokio::test(start_paused = true)]
async fn d3_a_users_connect_parked_in_a_shutdown_still_reopens_after_a_later_one() {
    let seen = Seen::default();
    let net = support::memory::echo_after(Duration::from_secs(2), &seen);
    let ch: support::channel::Ch = Channel::builder()
        .host("e:1")
        .connector(net.connector(), Order::new(TestProto))
        .unwrap();
    ch.connect().await.expect("connects");
    let call = spawn_request(&ch, "slow");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s1 = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.shutdown(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.connect().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    ch.shutdown(Duration::from_secs(10)).await;
    s1.await.unwrap();
    let _ = call.await;
    let got = c.await.unwrap();
    assert!(
        got.is_ok(),
        "the connect() made during the first shutdown: {got:?}, state {:?}",
        *ch.state().borrow()
    );
}

/// Found reading that count again: it was reset only when a connection was left or
/// lost having answered, so a drain before answering, then a connection serving for
/// long and retired at its maximum age, then one drain by a graceful restart, failed a
/// call the next connection serves. A connection that answers now resets it.
#[tokio::test(start_paused = true)]
async fn d3_a_connection_that_answered_clears_the_count_of_those_left_unanswered() {
    let seen = Seen::default();
    // #1 drains; #2 serves until its maximum age; #3 drains; #4 serves.
    let (net, conns) = scripted(&seen, |_, k| k == 1 || k == 3, |_| false);
    let builder = Channel::builder()
        .max_connection_age(Duration::from_secs(10))
        .backoff(short());
    let ch: support::channel::Ch = with_hello(builder)
        .connector(net.connector(), Order::new(Verdicts))
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), spawn_request(&ch, "a")).await;
    let first = first.expect("resolved").expect("joined");
    assert!(matches!(&first, Ok(m) if m.text() == "a@d:1"), "{first:?}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let out = tokio::time::timeout(Duration::from_secs(60), spawn_request(&ch, "b")).await;
    let out = out.expect("resolved").expect("joined");
    assert!(
        matches!(&out, Ok(m) if m.text() == "b@d:1"),
        "{out:?} after {} connects, seen {:?}",
        conns.load(Ordering::SeqCst),
        seen.lock().unwrap()
    );
}

// Helper-63's hunt (session ids).

/// A caller's own id outside `Session::ids`'s range took one of the range's ids: with
/// `.ids(1..=1)` and a long call under id 1000 (a watch), id 1 was free, and yet no
/// other call was written until the watch ended (Contract 4: a call waits only when
/// no id is free).
#[tokio::test(start_paused = true)]
async fn i1_a_caller_id_outside_the_range_takes_none_of_its_ids() {
    support::bounded(async {
        let (transport, server) = support::script::pipe();
        let mut peer = support::script::Peer::spawn(server);
        let ch: support::channel::Ch =
            Channel::new(transport, Session::new(TestProto).ids(1u64..=1));
        let c = ch.clone();
        let watch = tokio::spawn(async move {
            c.request(
                socketchannel::Call::new(msg("watch"))
                    .id(1000u64)
                    .no_stall_timeout(),
            )
            .await
        });
        let req = peer.next().await;
        assert_eq!((req.id, req.text()), (1000, "watch"));
        let c = ch.clone();
        let plain = tokio::spawn(async move { c.request(msg("b")).await });
        let written = tokio::time::timeout(Duration::from_secs(3), peer.recv()).await;
        let req = written
            .expect("the plain call is written under id 1 while only id 1000 is taken")
            .expect("connection up");
        assert_eq!((req.id, req.text()), (1, "b"));
        peer.reply(&req, "b-reply");
        assert_eq!(plain.await.unwrap().expect("b").text(), "b-reply");
        drop(watch);
    })
    .await;
}
