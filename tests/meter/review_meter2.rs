//! A second skeptical review of the byte-counting IO (`src/meter.rs`: `Metered`, `Wire`,
//! the thread's `Below` record, the `WriteUnderWay` guard, the flag that became the
//! `credit`) and of how the TLS stack uses it, after 1d2a06f and 853b9df. The rule under test: a call
//! fails *not sent* only if the server cannot have executed it.
//!
//! Stacks are built as tests/meter/tls_partial.rs and tests/meter/review_session6.rs
//! build them: a scripted in-memory "socket" under a `Wire`, under a layer (rustls, or a layer that
//! takes its input and reports it only once all of it left, as `SSL_write` without
//! partial writes), `Metered::new` above (`Metered::reporting` over rustls, as the
//! crate's `TlsConnector` has it), framed with a `Metered` codec.
//!
//! Tests marked `// Found:` failed before the fix that followed this review (a credit
//! for bytes counted ahead of a layer's report, `Metered::reporting`, and a `Wire` that
//! turns `Ok(0)` into `WriteZero`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketchannel::{Channel, Config, Error, Metered, Order, Plain, Wire};
use tokio_rustls::rustls;
use tokio_util::codec::{Framed, LinesCodec};

use super::rig::*;
use crate::ca;

// ---------------------------------------------------------------------------------------
// A layer that reports its input only once all of it left ([`Pieces`], in the rig).
// ---------------------------------------------------------------------------------------

/// How the connection over [`Pieces`] ends after a piece left and the socket stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The peer's reset reaches the reads (and the writes, which stay stalled).
    ReadFails,
    /// The stall timer (300 ms) fires.
    StallTimer,
    /// The writes fail; the layer reports the failure as `Ok(0)`.
    LayerSaysZero,
}

/// 8 big calls over `Metered::new(Pieces<Wire<Socket>>)`: the socket takes one piece
/// (call 0 whole, part of call 1), then stalls; then the connection ends as `end` says.
async fn over_pieces(end: End) -> (Vec<Error>, Vec<usize>) {
    let (client, server) = tokio::io::duplex(4 << 20);
    let executed = Executed::default();
    let server = tokio::spawn(serve_lines(server, executed.clone()));
    let (socket, control) = socket(client);
    script(&control, &[Act::Take], Act::Stall);
    let layer = Pieces {
        io: Wire::new(socket),
        taking: None,
        zero_on_error: end == End::LayerSaysZero,
    };
    let config = match end {
        End::StallTimer => Config::default().stall_timeout(Some(Duration::from_millis(300))),
        _ => Config::default(),
    };
    let channel: Channel<String, String> =
        Channel::with_config(framed(layer), Order::new(Plain), config);
    let calls = big_calls(&channel, 8);
    until(&control, "a piece left, then the socket stalled", |c| {
        c.stalled && c.accepted == PIECE
    })
    .await;
    let exec = executed.clone();
    for _ in 0..2_000 {
        if !exec.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(*exec.lock().unwrap(), vec![0], "the server executed call 0");
    match end {
        End::ReadFails => reset_now(&control, false, true),
        End::StallTimer => {}
        End::LayerSaysZero => reset_now(&control, true, false),
    }
    let errors = within(STEP, "the calls", calls)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect_err("the server never answers"))
        .collect();
    drop(channel);
    server.abort();
    let executed = executed.lock().unwrap().clone();
    (errors, executed)
}

// Found: the piece that left during a write that said `Pending` (hidden by the layer)
// was credited only by a later *failed write* (count_write's `unreported` flag).
// When the connection ends on a read error instead, nothing of it was counted: call 0,
// which the server executed, fails *not sent*.
#[tokio::test(flavor = "current_thread")]
async fn hidden_piece_then_a_read_error_keeps_the_executed_call_mx() {
    within(TEST, "test", async {
        let (errors, executed) = over_pieces(End::ReadFails).await;
        check_safe(&errors, &executed);
    })
    .await;
}

// Found: the same, the connection ending by the stall timer (Config::stall_timeout
// even says every waiting call then fails *may have executed*): call 0, executed, NS.
#[tokio::test(flavor = "current_thread")]
async fn hidden_piece_then_the_stall_timer_keeps_the_executed_call_mx() {
    within(TEST, "test", async {
        let (errors, executed) = over_pieces(End::StallTimer).await;
        check_safe(&errors, &executed);
    })
    .await;
}

// Found: the same, the retry's failure reported by the layer as `Ok(0)` (openssl's
// `ZERO_RETURN`): `Ready(Ok(0))` cleared `unreported` and counted 0; the `Framed`
// failed with `WriteZero`; call 0, executed, NS.
#[tokio::test(flavor = "current_thread")]
async fn hidden_piece_then_the_layer_says_ok0_keeps_the_executed_call_mx() {
    within(TEST, "test", async {
        let (errors, executed) = over_pieces(End::LayerSaysZero).await;
        check_safe(&errors, &executed);
    })
    .await;
}

/// The same layer with the error kept (the socket fails the second piece at once) and
/// then reported as `Ok(0)`: the `Pending` after the keep counted all it was offered, so
/// the `Ok(0)` that follows hides nothing. Safe.
#[tokio::test(flavor = "current_thread")]
async fn kept_error_under_the_layer_then_ok0_is_safe() {
    within(TEST, "test", async {
        let (client, server) = tokio::io::duplex(4 << 20);
        let executed = Executed::default();
        let server = tokio::spawn(serve_lines(server, executed.clone()));
        let (socket, control) = socket(client);
        script(&control, &[Act::Take], Act::Fail);
        let layer = Pieces {
            io: Wire::new(socket),
            taking: None,
            zero_on_error: true,
        };
        let channel: Channel<String, String> = Channel::new(framed(layer), Order::new(Plain));
        let errors: Vec<Error> = within(STEP, "the calls", big_calls(&channel, 8))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.expect_err("the server never answers"))
            .collect();
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        let executed = executed.lock().unwrap().clone();
        assert!(executed.contains(&0), "{executed:?}");
        check_safe(&errors, &executed);
    })
    .await;
}

// Found (lesser): under rustls, a write in which the session took nothing (its buffer
// full) while a record of plaintext it had already reported left, then `Pending`, set
// `unreported`; the next write, whose session takes
// fresh plaintext and whose socket write then fails before a byte leaves (`Below::Nothing`),
// was counted in full. The calls past what the session reported taking were never taken
// to the socket, yet failed *may have executed*. Now rustls is metered
// `Metered::reporting`: its `Pending` takes nothing.
#[tokio::test(flavor = "current_thread")]
async fn rustls_a_record_leaving_under_a_full_buffer_does_not_make_untaken_calls_mx() {
    within(TEST, "test", async {
        const CALLS: usize = 16;
        let ca = ca::TestCa::new("review CA").unwrap();
        let (tls, control, executed, server) = tls_session(&ca, BIG_LINES).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let spy = Spy {
            io: tls,
            log: log.clone(),
        };
        script(&control, &[Act::Take], Act::Stall);
        let channel: Channel<String, String> = Channel::new(framed_tls(spy), Order::new(Plain));
        let calls = big_calls(&channel, CALLS);
        // The session fills its buffer and says `Pending`.
        let pending = |log: &Arc<Mutex<Vec<Wrote>>>| {
            log.lock()
                .unwrap()
                .iter()
                .filter(|w| **w == Wrote::Pending)
                .count()
        };
        until(&control, "the socket stalled", |c| c.stalled).await;
        for _ in 0..2_000 {
            if pending(&log) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(pending(&log) > 0, "{:?}", log.lock().unwrap());
        let before = log.lock().unwrap().len();
        // One more record leaves, then the socket stalls again: the session took nothing
        // in that write (it was full when the write began).
        let accepted = control.lock().unwrap().accepted;
        script(&control, &[Act::Take], Act::Stall);
        until(&control, "one more record, then the stall", |c| {
            c.stalled && c.accepted > accepted
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after: Vec<Wrote> = log.lock().unwrap()[before..].to_vec();
        assert_eq!(
            after.first(),
            Some(&Wrote::Pending),
            "a record left in a write that took nothing: {after:?}"
        );
        // The peer's reset: the next write fails before a byte of it leaves.
        reset_now(&control, true, false);
        let errors: Vec<Error> = within(STEP, "the calls", calls)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.expect_err("the server never answers"))
            .collect();
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        let wrote = log.lock().unwrap().clone();
        assert_eq!(wrote.last(), Some(&Wrote::Failed), "{wrote:?}");
        let taken: usize = wrote
            .iter()
            .map(|w| if let Wrote::Took(n) = w { *n } else { 0 })
            .sum();
        let executed = executed.lock().unwrap().clone();
        check_safe(&errors, &executed);
        let want: Vec<&str> = (0..CALLS)
            .map(|i| if start(i) < taken { "MX" } else { "NS" })
            .collect();
        assert!(want.contains(&"NS"), "{taken} taken: {wrote:?}");
        assert_eq!(
            verdicts(&errors),
            want,
            "the session reported {taken} bytes taken ({wrote:?}); the calls past them \
             never reached the socket"
        );
    })
    .await;
}

/// A `Metered` twice over the session, and a `Metered::exact` under its `Wire` (a user's
/// connector that meters every layer): the counts are not this stream's (each layer adds
/// to the thread's counts, the inner write's guard resets the record the outer reads),
/// but only in the safe direction: no executed call is *not sent*.
#[tokio::test(flavor = "current_thread")]
async fn nested_metered_layers_never_call_an_executed_call_not_sent() {
    within(TEST, "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        for then in [Act::Fail, Act::Stall] {
            let acceptor = tokio_rustls::TlsAcceptor::from(
                ca.server(&["localhost"]).unwrap().server_config().unwrap(),
            );
            let (client, server) = tokio::io::duplex(4 << 20);
            let executed = Executed::default();
            let log = executed.clone();
            let server = tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(server).await {
                    serve_lines(tls, log).await;
                }
            });
            let (sock, control) = socket(client);
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = within(
                STEP,
                "handshake",
                tokio_rustls::TlsConnector::from(client_config(&ca))
                    .connect(name, Wire::new(Metered::exact(sock))),
            )
            .await
            .expect("handshake");
            tls.get_mut().1.set_buffer_limit(Some(LIMIT));
            script(&control, &[Act::Take], then);
            let channel: Channel<String, String> =
                Channel::new(framed(Metered::new(tls)), Order::new(Plain));
            let calls = big_calls(&channel, 16);
            if then == Act::Stall {
                until(&control, "stalled", |c| c.stalled).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                reset_now(&control, true, false);
            }
            let errors: Vec<Error> = within(STEP, "the calls", calls)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.expect_err("never answered"))
                .collect();
            drop(channel);
            within(STEP, "the server", server).await.unwrap();
            let executed = executed.lock().unwrap().clone();
            assert!(!executed.is_empty(), "{then:?}: a record left");
            check_safe(&errors, &executed);
        }
    })
    .await;
}

/// A plain connection (`Metered::exact(Wire<Socket>)`) and a TLS one on one thread,
/// interleaved: the TLS socket takes a record and then fails within a write (the error
/// kept by its `Wire`), the plain socket takes 5 bytes, stalls, and then fails. Each
/// connection's verdicts are its own: plain call 0 MX and the rest NS; TLS by the rule
/// (some NS, none executed NS).
#[tokio::test(flavor = "current_thread")]
async fn a_plain_and_a_tls_connection_interleaved_keep_their_own_record() {
    within(TEST, "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let (tls, tls_ctl, tls_exec, tls_server) = tls_session(&ca, BIG_LINES).await;
        let (client, server) = tokio::io::duplex(4 << 20);
        let plain_exec = Executed::default();
        let plain_server = tokio::spawn(serve_lines(server, plain_exec.clone()));
        let (sock, plain_ctl) = socket(client);
        script(&plain_ctl, &[Act::Short(5)], Act::Stall);
        let plain_framed = Framed::new(
            Metered::exact(Wire::new(sock)),
            Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        );
        let plain: Channel<String, String> = Channel::new(plain_framed, Order::new(Plain));
        let plain_calls = big_calls(&plain, 4);
        until(&plain_ctl, "the plain socket stalled", |c| c.stalled).await;
        // The TLS connection runs its failing write while the plain one is stalled.
        script(&tls_ctl, &[Act::Take], Act::Fail);
        let tls_ch: Channel<String, String> = Channel::new(framed(tls), Order::new(Plain));
        let tls_calls = big_calls(&tls_ch, 16);
        let tls_errors: Vec<Error> = within(STEP, "TLS calls", tls_calls)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.expect_err("never answered"))
            .collect();
        reset_now(&plain_ctl, true, false);
        let plain_errors: Vec<Error> = within(STEP, "plain calls", plain_calls)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.expect_err("never answered"))
            .collect();
        drop((plain, tls_ch));
        within(STEP, "TLS server", tls_server).await.unwrap();
        within(STEP, "plain server", plain_server).await.unwrap();
        assert_eq!(verdicts(&plain_errors), ["MX", "NS", "NS", "NS"]);
        check_safe(&tls_errors, &tls_exec.lock().unwrap());
        assert!(
            verdicts(&tls_errors).contains(&"NS"),
            "{:?}",
            verdicts(&tls_errors)
        );
    })
    .await;
}

/// `Metered::exact(Wire<Socket>)`: the socket takes 5 bytes, then says `Ok(0)`: the
/// `Framed` fails with `WriteZero`; call 0 MX (5 bytes left), the rest NS, at once.
#[tokio::test(flavor = "current_thread")]
async fn exact_over_a_wire_short_then_ok0_counts_the_short_write() {
    within(TEST, "test", async {
        let (client, server) = tokio::io::duplex(4 << 20);
        let executed = Executed::default();
        let server = tokio::spawn(serve_lines(server, executed.clone()));
        let (sock, control) = socket(client);
        script(&control, &[Act::Short(5)], Act::Zero);
        let framed = Framed::new(
            Metered::exact(Wire::new(sock)),
            Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        );
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        let errors: Vec<Error> =
            within(Duration::from_secs(2), "the calls", big_calls(&channel, 4))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.expect_err("never answered"))
                .collect();
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        assert_eq!(verdicts(&errors), ["MX", "NS", "NS", "NS"]);
    })
    .await;
}

// Found (hang): a socket under the TLS session that says `Ok(0)` (its object can take
// no more bytes) once the session's buffer is full: tokio-rustls treats `Ok(0)` from its
// IO as "would block" and, having taken no plaintext, says `Pending` with no waker
// registered. The `Wire` passed the `Ok(0)` up as it was, so the connection waited
// for ever (no stall timer). Now the `Wire` makes it `WriteZero`.
#[tokio::test(flavor = "current_thread")]
async fn a_socket_saying_ok0_under_tls_fails_the_calls_instead_of_hanging() {
    within(TEST, "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let (tls, control, _executed, server) = tls_session(&ca, BIG_LINES).await;
        script(&control, &[Act::Take], Act::Zero);
        let channel: Channel<String, String> = Channel::new(framed(tls), Order::new(Plain));
        let calls = big_calls(&channel, 16);
        let outcome = tokio::time::timeout(Duration::from_secs(2), calls).await;
        server.abort();
        let results = outcome.expect(
            "the calls never resolved: the session said Pending with no waker after its \
             socket said Ok(0)",
        );
        let errors: Vec<Error> = results
            .unwrap()
            .into_iter()
            .map(|r| r.expect_err("never answered"))
            .collect();
        assert!(verdicts(&errors).iter().all(|v| *v != "??"));
    })
    .await;
}
