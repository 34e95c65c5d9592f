//! The checks: what the crate promises, over a [`Ledger`] and a [`ServerLog`].
//!
//! Each check has a name (the `check` of its [`Violation`]s) and reflects one of the
//! Contracts of `docs/design.md` as they hold once the defects of issue 15 are fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tower::load::Load;

use super::{CallRecord, Ledger, Outcome, Record, ReplyTag, ServerLog, Violation, What};
use crate::channel::Channel;
use crate::error::{ConnectionErrorKind, Kind};
use crate::shared::State;

/// `resolved_once`: every call resolved exactly once; a call whose caller gave up
/// resolved at most once.
pub fn resolved_once(ledger: &Ledger) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in ledger.calls() {
        match (c.outcomes.len(), c.cancelled) {
            (1, _) | (0, Some(_)) => {}
            (0, None) => out.push(Violation::new(
                "resolved_once",
                format!(
                    "call {} ({}, client {}) never resolved",
                    c.id, c.shape, c.client
                ),
            )),
            (n, _) => out.push(Violation::new(
                "resolved_once",
                format!("call {} ({}) resolved {n} times", c.id, c.shape),
            )),
        }
    }
    out
}

fn tags(o: &Outcome) -> Vec<&ReplyTag> {
    match o {
        Outcome::Replies(r) => r.iter().collect(),
        Outcome::Failed { reply, before, .. } => before.iter().chain(reply.iter()).collect(),
        _ => Vec::new(),
    }
}

/// `own_reply`: every reply frame a call got answers that call's request (its nonce),
/// unless it is a frame for any caller (a refusal at accept) or the call is a read.
pub fn own_reply(ledger: &Ledger) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in ledger.calls() {
        if c.nonce == 0 {
            continue;
        }
        for (_, o) in &c.outcomes {
            for t in tags(o) {
                if t.nonce != c.nonce && !t.any_caller {
                    out.push(Violation::new(
                        "own_reply",
                        format!(
                            "call {} (n={}, {}) got the reply to n={} (conn {:?})",
                            c.id, c.nonce, c.shape, t.nonce, t.conn
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// `not_sent_not_executed`: a call that failed *not sent* was executed by no server.
pub fn not_sent_not_executed(ledger: &Ledger, log: &ServerLog) -> Vec<Violation> {
    let mut out = Vec::new();
    for c in ledger.calls() {
        if c.nonce == 0 {
            continue;
        }
        for (at, o) in &c.outcomes {
            if let Outcome::Failed {
                not_sent: true,
                text,
                ..
            } = o
            {
                let n = log.executions(c.nonce);
                if n > 0 {
                    out.push(Violation::new(
                        "not_sent_not_executed",
                        format!(
                            "call {} (n={}, {}) failed not sent at {} ms ({text}) but was executed {n} time(s)",
                            c.id,
                            c.nonce,
                            c.shape,
                            at.as_millis()
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// `executed_at_most_once`: no request was executed twice (the channel never writes
/// a call twice, and a retry of *not sent* calls never runs one twice).
pub fn executed_at_most_once(ledger: &Ledger, log: &ServerLog) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for c in ledger.calls() {
        if c.nonce == 0 || !seen.insert(c.nonce) {
            continue;
        }
        let n = log.executions(c.nonce);
        if n > 1 {
            let how = if c.retried {
                " through RetryNotSent"
            } else {
                ""
            };
            out.push(Violation::new(
                "executed_at_most_once",
                format!(
                    "call {} (n={}, {}) was executed {n} times{how}",
                    c.id, c.nonce, c.shape
                ),
            ));
        }
    }
    out
}

/// `handshake_first`: on every connection, every frame a handshake sent was read
/// before any user frame (Contract 12).
pub fn handshake_first(log: &ServerLog) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut user_seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    for r in log.records() {
        if let What::Read(d) = &r.what {
            if !d.handshake {
                user_seen.entry(r.conn).or_insert_with(|| d.text.clone());
            } else if let Some(user) = user_seen.get(&r.conn)
                && reported.insert(r.conn)
            {
                out.push(Violation::new(
                        "handshake_first",
                        format!(
                            "conn {} ({}): handshake frame [{}] read at {} ms after user frame [{user}]",
                            r.conn,
                            r.host,
                            d.text,
                            r.at.as_millis()
                        ),
                    ));
            }
        }
    }
    out
}

/// The connection of `client` open at `at`: the last one it made before then.
/// The client's one open connection at `at`, if it had exactly one.
fn only_conn_at(records: &[Record], client: usize, at: Duration) -> Option<u64> {
    let closed_before = |conn: u64| {
        records
            .iter()
            .any(|r| r.conn == conn && r.at < at && matches!(r.what, What::Closed(_)))
    };
    let mut open = records
        .iter()
        .filter(|r| r.client == client && r.at <= at && r.what == What::Connect(None))
        .map(|r| r.conn)
        .filter(|&conn| !closed_before(conn));
    match (open.next(), open.next()) {
        (Some(conn), None) => Some(conn),
        _ => None,
    }
}

/// `stall_means_silence`: no call failed `Stalled` while the server had written bytes
/// on its connection within the stall period (Contract 6: the stall timeout measures
/// silence, not transfer). `stall(client)` is that client's stall timeout; `slack` is
/// the timer's granularity.
pub fn stall_means_silence(
    ledger: &Ledger,
    log: &ServerLog,
    stall: &dyn Fn(usize) -> Option<Duration>,
    slack: Duration,
) -> Vec<Violation> {
    let records = log.records();
    let read_on = |nonce: u64| {
        records
            .iter()
            .find(|r| matches!(&r.what, What::Read(d) if nonce != 0 && d.nonce == Some(nonce)))
            .map(|r| r.conn)
    };
    let stalled = |o: &Outcome| {
        matches!(
            o,
            Outcome::Failed {
                connection: Some(ConnectionErrorKind::Stalled),
                ..
            }
        )
    };
    // The connection each stall ended, by (client, instant), from the calls a server
    // read: every call a stall fails fails with its connection, at the same instant.
    let mut ended = std::collections::BTreeMap::new();
    for c in ledger.calls() {
        for (at, o) in &c.outcomes {
            if let (true, Some(conn)) = (stalled(o), read_on(c.nonce)) {
                ended.insert((c.client, *at), conn);
            }
        }
    }
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for c in ledger.calls() {
        let Some(period) = stall(c.client) else {
            continue;
        };
        for (at, o) in &c.outcomes {
            if !stalled(o) {
                continue;
            }
            // The connection its request was read on; else the one a call read by a
            // server failed with at that instant; else the client's only connection
            // then. A call no server read, on a client with a connection draining
            // beside the current one, cannot be placed: it is left out.
            let conn = read_on(c.nonce)
                .or_else(|| ended.get(&(c.client, *at)).copied())
                .or_else(|| only_conn_at(&records, c.client, *at));
            let Some(conn) = conn else { continue };
            let last_write = records
                .iter()
                .filter(|r| r.conn == conn && r.at <= *at && matches!(r.what, What::Wrote(_)))
                .map(|r| r.at)
                .next_back();
            if let Some(w) = last_write
                && *at < w + period.saturating_sub(slack)
                && reported.insert(conn)
            {
                out.push(Violation::new(
                        "stall_means_silence",
                        format!(
                            "call {} ({}) failed Stalled at {} ms, but conn {conn} was written to at {} ms (stall timeout {} ms)",
                            c.id,
                            c.shape,
                            at.as_millis(),
                            w.as_millis(),
                            period.as_millis()
                        ),
                    ));
            }
        }
    }
    out
}

/// `pass_names_hosts`: every failed connect pass a call reports names every host that
/// was configured (host and backups, as built or changed) at some point; a redirect or
/// a promotion never drops one (Contract 8). `configured(client)` lists the host sets
/// the client had.
pub fn pass_names_hosts(
    ledger: &Ledger,
    configured: &dyn Fn(usize) -> Vec<BTreeSet<String>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for c in ledger.calls() {
        for (at, o) in &c.outcomes {
            let Outcome::Failed {
                kind: Kind::ConnectFailed,
                pass: Some(pass),
                ..
            } = o
            else {
                continue;
            };
            let named: BTreeSet<&str> = pass.iter().map(String::as_str).collect();
            let sets = configured(c.client);
            let ok = sets
                .iter()
                .any(|set| set.iter().all(|h| named.contains(h.as_str())));
            if !ok && reported.insert(c.client) {
                out.push(Violation::new(
                    "pass_names_hosts",
                    format!(
                        "call {} on client {} at {} ms: the failed pass named {pass:?}, the client was configured with {sets:?}",
                        c.id,
                        c.client,
                        at.as_millis()
                    ),
                ));
            }
        }
    }
    out
}

/// `connect_rate`: in any one virtual second, a client connects to a host whose
/// connections delivered no reply to any call at most `bound(client)` times (a race
/// over a dead first address and the live one is one attempt), plus the
/// `kicks` (operations that start a pass: `connect()`, `change_host`) in that second
/// and the one before (Contract 8: only a reply delivered to a user's call counts as
/// "the host answered", a handshake's does not; crash-looping hosts wait out the
/// backoff).
pub fn connect_rate(
    ledger: &Ledger,
    log: &ServerLog,
    bound: &dyn Fn(usize) -> usize,
    kicks: &[(usize, Duration)],
) -> Vec<Violation> {
    let answered: BTreeSet<u64> = ledger
        .calls()
        .iter()
        .filter(|c| !c.handshake)
        .flat_map(|c: &CallRecord| {
            c.outcomes
                .iter()
                .flat_map(|(_, o)| tags(o).into_iter().cloned().collect::<Vec<_>>())
        })
        .filter_map(|t| t.conn)
        .collect();
    // One attempt is one race when the host's name has a dead first address
    // (`Net::dead_first_address`): its `DeadAddress` record, then the `Connect` of the
    // live address if the race got that far. It counts in the second it began, unless
    // its connection answered; a race that never reached the live address counts too.
    let mut windows: BTreeMap<(usize, String, u64), usize> = BTreeMap::new();
    let mut racing: BTreeMap<(usize, String), u64> = BTreeMap::new();
    for r in log.records() {
        let key = (r.client, r.host.clone());
        match &r.what {
            What::DeadAddress(_) => {
                if let Some(sec) = racing.insert(key.clone(), r.at.as_secs()) {
                    *windows.entry((key.0, key.1, sec)).or_default() += 1;
                }
            }
            What::Connect(_) => {
                let sec = racing.remove(&key).unwrap_or(r.at.as_secs());
                if r.conn != 0 && answered.contains(&r.conn) {
                    continue;
                }
                *windows.entry((key.0, key.1, sec)).or_default() += 1;
            }
            _ => {}
        }
    }
    for ((client, host), sec) in racing {
        *windows.entry((client, host, sec)).or_default() += 1;
    }
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for ((client, host, sec), n) in windows {
        let k = kicks
            .iter()
            .filter(|(c, at)| *c == client && (at.as_secs() == sec || at.as_secs() + 1 == sec))
            .count();
        let limit = bound(client) + k;
        if n > limit && reported.insert((client, host.clone())) {
            out.push(Violation::new(
                "connect_rate",
                format!(
                    "client {client} connected to {host} {n} times in second {sec} without a reply delivered (bound {limit})"
                ),
            ));
        }
    }
    out
}

/// `idle_gauges`: once nothing is queued or waiting, `in_flight` is 0, `Load` is 0
/// (unless the channel backs off or connects) and the overload signal is off. A slot
/// `poll_ready` reserved counts in `Load` while its handle holds it: the caller excuses
/// the slots it knows are held.
pub fn idle_gauges<Req, Resp>(name: &str, channel: &Channel<Req, Resp>) -> Vec<Violation>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let mut out = Vec::new();
    let counters = channel.counters();
    let state = *channel.state().borrow();
    if counters.in_flight != 0 {
        out.push(Violation::new(
            "idle_gauges",
            format!(
                "{name}: in_flight is {} when idle (state {state:?})",
                counters.in_flight
            ),
        ));
    }
    let load = channel.load();
    let excused = matches!(
        state,
        State::BackingOff | State::Connecting | State::Handshaking
    );
    if load != 0 && !excused {
        out.push(Violation::new(
            "idle_gauges",
            format!(
                "{name}: Load is {load} when idle (state {state:?}, in_flight {})",
                counters.in_flight
            ),
        ));
    }
    if *channel.overload().borrow() {
        out.push(Violation::new(
            "idle_gauges",
            format!("{name}: the overload signal is on when idle (state {state:?})"),
        ));
    }
    out
}
