//! A skeptical review's reproductions (2026-12-04) of the orphan-age clock that counts
//! every tick that passed (a call written after a quiet spell stamped as that old) and
//! of the pool's shrink (a call readied for a connection taken out; a dead extra
//! connection never taken out). In memory, under paused time.

mod support;

use std::time::Duration;

use socketchannel::{Channel, Config};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use support::channel::{Mode, abandon, joined, msg, spawn_request};
use support::eventually;
use support::pool::{grown, hold_net, ready};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A connection that was quiet for 10 s (nothing waiting: the age clock does not tick)
/// takes a call, whose entry is stamped with the stale tick of 10 s ago before the
/// pass advances the clock by 40 ticks. Its caller gives up after 100 ms: at the next
/// tick (250 ms after the write) the orphan is judged 40 ticks old and retires the
/// connection, though it is 0.25 s old against a 1 s `orphan_age`.
async fn orphan_after_a_quiet_spell(stall: Option<Duration>) {
    let net = hold_net();
    let age = Duration::from_secs(1);
    let ch = net.channel(
        Mode::Session,
        Channel::builder()
            .host("a:1")
            .config(Config::default().orphan_age(Some(age)).stall_timeout(stall)),
    );
    let reply = joined(spawn_request(&ch, "ping")).await.expect("answered");
    assert_eq!(reply.text(), "ping");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let written = Instant::now();
    abandon(&ch, "mute").await;
    // Half the age later, something moves on the connection (with a stall timer the
    // age rule keeps no timer and ticks only then).
    tokio::time::sleep(ms(400)).await;
    let reply = joined(spawn_request(&ch, "ping")).await.expect("answered");
    assert_eq!(reply.text(), "ping");
    let c = ch.counters();
    assert_eq!(
        c.retired,
        0,
        "an orphan {:?} old retired its connection (orphan_age {age:?})",
        written.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_orphan_written_after_a_quiet_spell_is_not_retired_early_without_stall_timer() {
    orphan_after_a_quiet_spell(None).await;
}

#[tokio::test(start_paused = true)]
async fn an_orphan_written_after_a_quiet_spell_is_not_retired_early_with_stall_timer() {
    orphan_after_a_quiet_spell(Some(Duration::from_secs(30))).await;
}

/// Handles whose `poll_ready` chose a connection (tower's contract: the next `call`
/// goes there) while the pool had two; the pool shrinks before they call. The pool
/// still has a usable connection, but the calls routed to the removed one fail
/// *not sent* (`Closed`): its shutdown refuses them.
#[tokio::test(start_paused = true)]
async fn a_call_readied_before_a_shrink_is_not_failed_by_it() {
    support::timeout(Duration::from_secs(60), async {
        let net = hold_net();
        let (pool, held) = grown(&net, Duration::from_secs(1)).await;
        for h in held {
            h.await.unwrap().unwrap();
        }
        for c in pool.channels() {
            c.connect().await.expect("connects");
        }
        assert!(pool.channels().all(|c| ready(&c)), "both connected");
        let mut handles: Vec<_> = (0..16).map(|_| pool.clone()).collect();
        for h in &mut handles {
            h.ready().await.expect("ready");
        }
        eventually(Duration::from_secs(5), "shrinks", || pool.size() == 1).await;
        let mut failed = Vec::new();
        for (i, h) in handles.iter_mut().enumerate() {
            if let Err(e) = h.call(msg("after")).await {
                failed.push(format!("handle {i}: {e}"));
            }
        }
        assert!(
            failed.is_empty(),
            "the pool has a usable connection, yet {} of 16 readied calls failed: {failed:?}",
            failed.len()
        );
    })
    .await;
}

/// A grown pool whose extra connection went down (the host takes no new connection,
/// the old one still works) and stays down: with "not one that is down" the pool never
/// shrinks back to its built size, and the down member dials again after every backoff
/// for as long as the pool lives, though nothing is queued on it.
#[tokio::test(start_paused = true)]
async fn a_down_member_with_nothing_queued_is_still_shrunk_away() {
    support::timeout(Duration::from_secs(300), async {
        let net = hold_net();
        let (pool, held) = grown(&net, Duration::from_secs(1)).await;
        net.down("a:1", true);
        let fresh = pool.channels().find(|c| !ready(c)).expect("a new member");
        let _ = fresh.request(msg("x")).await;
        for h in held {
            h.await.unwrap().unwrap();
        }
        let dials = net.connects();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let states: Vec<_> = pool.channels().map(|c| *c.state().borrow()).collect();
        assert_eq!(
            pool.size(),
            1,
            "a minute idle, the pool is still {states:?}; {} more dials to a down host",
            net.connects() - dials
        );
    })
    .await;
}
