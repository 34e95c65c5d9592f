//! Review of three changes of the session:
//!
//! 1. b350b39 + 1940ff5, "Cancel notices: take the caller's reference on a per-thread
//!    stripe" (`src/mux/notice.rs` `Leavers` / `Stripe` / `thread_index`): every caller's
//!    end of a reply holds one of a few stripes that all lead to the one `Leaving`.
//! 2. 7106100, "Engine: hand a call on as it came" (`src/mux/engine/mod.rs` `take` /
//!    `recv`, `src/mux/engine/write.rs` `write_pass` / `write_one`).
//! 3. 1d2a06f, "TLS: a socket error mid-write no longer hides the plaintext the session
//!    took" (`src/meter.rs`): a `Wire` keeps a write error that comes after bytes of the
//!    same `Metered` write moved, says `Pending` after waking the task, and answers the
//!    next write, flush or shutdown with it; `Below::Outside` outside a `Metered` write.
//!
//! Findings, all three fixed in the commit after 1d2a06f (each test says how):
//! * `a_panic_under_a_wire_does_not_leave_the_next_handshake_spinning` (change 3):
//!   failed on 1d2a06f, passed on its parent.
//! * `a_layer_that_reports_its_input_once_all_of_it_left_keeps_executed_calls_mx`
//!   (change 3, a `Wire` under a layer that is not rustls): failed on 1d2a06f, passed
//!   on its parent.
//! * `..._after_a_stall` (the same layer, the socket stalling before the reset): failed
//!   on both (a limit of the `Wire` older than the change).
//!
//! Everything else passed on 1d2a06f. On 1d2a06f's parent,
//! `a_kept_error_fails_the_calls_at_once_under_a_stall_timer` and
//! `two_tls_connections_and_a_handshake_on_one_thread_keep_their_own_state` fail on
//! purpose: they check the rule change 3 brings (the calls whose plaintext the session
//! never took fail *not sent*; before, every call *may have executed*). The notice
//! tests pass on b350b39's parent, the engine tests on 7106100's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use socketchannel::{
    Call, Channel, Config, Endpoint, Error, Handshake, Kind as ErrKind, Metered, Order, Plain,
    Replies, Session, Wire,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_util::codec::{Framed, LinesCodec};
use tower::{Service, ServiceExt};

use super::rig::panicking::{Act, Ctl, Socket, arm, reset_now};
use super::rig::*;
use crate::ca;
use crate::support;

use support::channel::{Ch, joined, msg, spawn_request};
use support::codec::{CANCEL, Cancelling, Kind, Msg, MsgCodec, TestProto};
use support::memory::{Io, Net};
use support::script::{Peer, pipe, settle};

// ---------------------------------------------------------------------------------------
// A counting allocator: bytes live per thread (for the memory a channel costs).
// ---------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: defers to `System`; the counter is a const thread-local `Cell` (no allocation,
// no destructor), so touching it inside the allocator is sound.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + layout.size() as isize));
        // SAFETY: as the caller promised.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.with(|l| l.set(l.get() - layout.size() as isize));
        // SAFETY: as the caller promised.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.with(|l| l.set(l.get() + new as isize - layout.size() as isize));
        // SAFETY: as the caller promised.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Runs `test` on a current-thread runtime (real time) in a thread of its own, failing
/// (naming `what`) if it has not finished within `limit` of real time: a task that wakes
/// itself for ever is caught even if it starves the runtime's timers.
fn on_own_thread<F, Fut>(limit: Duration, what: &str, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("not finished within {limit:?} of real time: {what}")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The socket (`rig::panicking`) and the server.
// ---------------------------------------------------------------------------------------

/// Reads lines from `io`, records each whole call line, and echoes it if `echo`.
async fn serve_lines<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, executed: Executed, echo: bool) {
    serve(io, executed, BIG_LINES, echo).await
}

type TlsFramed = Framed<Metered<TlsStream<Wire<Socket>>>, Metered<LinesCodec>>;

/// A TLS stack as `TlsConnector` frames it, over a [`Socket`] to an in-process rustls
/// server that executes (and, if `echo`, answers) whole lines.
struct Tls {
    framed: TlsFramed,
    control: Ctl,
    executed: Executed,
    server: JoinHandle<()>,
}

async fn tls_stack(ca: &ca::TestCa, echo: bool) -> Tls {
    let acceptor = tokio_rustls::TlsAcceptor::from(
        ca.server(&["localhost"]).unwrap().server_config().unwrap(),
    );
    let (client, server) = tokio::io::duplex(4 << 20);
    let executed = Executed::default();
    let log = executed.clone();
    let server = tokio::spawn(async move {
        if let Ok(tls) = acceptor.accept(server).await {
            serve_lines(tls, log, echo).await;
        }
    });
    let control = Ctl::default();
    let socket = Socket {
        io: client,
        control: control.clone(),
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = within(
        STEP,
        "client handshake",
        tokio_rustls::TlsConnector::from(client_config(ca)).connect(name, Wire::new(socket)),
    )
    .await
    .expect("handshake");
    tls.get_mut().1.set_buffer_limit(Some(LIMIT));
    // As `TlsConnector` frames it (`connect::frame`).
    let mut framed = Framed::with_capacity(
        Metered::new(tls),
        Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        64 * 1024,
    );
    framed.set_backpressure_boundary(1024 * 1024);
    Tls {
        framed,
        control,
        executed,
        server,
    }
}
/// Each call fails exactly one of *not sent* and *may have executed*; none the server
/// executed is *not sent*.
fn check_safe(errors: &[&Error], executed: &[usize]) {
    for (i, err) in errors.iter().enumerate() {
        assert!(
            err.is_not_sent() != err.may_have_executed(),
            "call {i} is both or neither: {err}"
        );
    }
    for &call in executed {
        assert!(
            !errors[call].is_not_sent(),
            "the server executed call {call}, which failed not sent: a retry runs it twice \
             (executed: {executed:?}; errors: {:?})",
            errors
                .iter()
                .map(|e| if e.is_not_sent() { "NS" } else { "MX" })
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Change 3: the Wire keeps a write error.
// ---------------------------------------------------------------------------------------

/// A record left, the next write of the same TLS write failed (the error kept), with a
/// stall timer of 1 s: the calls fail at once with the write's error (not `Stalled`
/// after a second of a connection that waits on a self-wake), the taken ones *may have
/// executed*, at least one untaken one *not sent*, and none the server executed *not
/// sent*.
#[tokio::test(flavor = "current_thread")]
async fn a_kept_error_fails_the_calls_at_once_under_a_stall_timer() {
    within(Duration::from_secs(20), "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let Tls {
            framed,
            control,
            executed,
            server,
        } = tls_stack(&ca, false).await;
        arm(&control, &[Act::Take], Act::Fail);
        let config = Config::default().stall_timeout(Some(Duration::from_secs(1)));
        let channel: Channel<String, String> =
            Channel::with_config(framed, Order::new(Plain), config);
        let began = tokio::time::Instant::now();
        let results = within(STEP, "the calls", big_calls(&channel, 16))
            .await
            .unwrap();
        let took = began.elapsed();
        let errors: Vec<&Error> = results
            .iter()
            .map(|r| r.as_ref().expect_err("the server never answers"))
            .collect();
        assert!(
            took < Duration::from_millis(700),
            "the calls failed after {took:?}"
        );
        for err in &errors {
            assert_eq!(err.kind(), ErrKind::ConnectionLost, "{err}");
        }
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        let executed = executed.lock().unwrap().clone();
        assert!(!executed.is_empty(), "a record left");
        check_safe(&errors, &executed);
        assert!(errors[0].may_have_executed());
        assert!(
            errors.iter().any(|e| e.is_not_sent()),
            "the calls past the session's buffer were never taken"
        );
    })
    .await;
}

/// One small call: the socket takes 10 bytes of its record, then fails the rest within
/// the same TLS write. The session took all of the call's plaintext (it says so, the
/// error kept) and the `Framed`'s buffer is then empty: the error must come out of the
/// flush that follows (`Below::Outside`), at once, and the call *may have executed*
/// (bytes of it reached the socket).
#[tokio::test(flavor = "current_thread")]
async fn a_kept_error_with_nothing_left_to_write_comes_out_of_the_flush() {
    within(Duration::from_secs(20), "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let Tls {
            framed,
            control,
            server,
            ..
        } = tls_stack(&ca, false).await;
        arm(&control, &[Act::Short(10)], Act::Fail);
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        let err = within(
            Duration::from_secs(2),
            "the call",
            channel.request("c00".to_string()),
        )
        .await
        .expect_err("the write failed");
        assert!(err.may_have_executed(), "10 bytes of it left: {err}");
        assert!(!err.is_not_sent(), "{err}");
        assert_eq!(err.kind(), ErrKind::ConnectionLost, "{err}");
        assert_eq!(control.lock().unwrap().accepted, 10);
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
    })
    .await;
}

/// Two TLS connections on one thread (the `BELOW` state is the thread's): A's socket
/// fails mid-write (its error kept), B's is healthy and answers, and a third handshake
/// over a socket whose first write fails is made on the same thread meanwhile. B's
/// calls are all answered, A's fail by the rule, and the handshake fails at once with
/// the reset (outside any `Metered` write a `Wire` keeps nothing).
#[tokio::test(flavor = "current_thread")]
async fn two_tls_connections_and_a_handshake_on_one_thread_keep_their_own_state() {
    within(Duration::from_secs(20), "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let a = tls_stack(&ca, false).await;
        let b = tls_stack(&ca, true).await;
        arm(&a.control, &[Act::Take], Act::Fail);
        // B's socket takes everything, a record at a time.
        arm(&b.control, &[], Act::Take);
        let ca_ch: Channel<String, String> = Channel::new(a.framed, Order::new(Plain));
        let cb_ch: Channel<String, String> = Channel::new(b.framed, Order::new(Plain));
        let calls_a = big_calls(&ca_ch, 16);
        let calls_b = big_calls(&cb_ch, 16);
        // A handshake on the same thread, whose socket fails its first write.
        let handshake = tokio::spawn({
            let config = client_config(&ca);
            async move {
                let (client, _server) = tokio::io::duplex(1 << 16);
                let control = Ctl::default();
                arm(&control, &[], Act::Fail);
                let socket = Socket {
                    io: client,
                    control,
                };
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_rustls::TlsConnector::from(config).connect(name, Wire::new(socket)),
                )
                .await
                .map(|r| r.map(drop))
            }
        });
        let results_a = within(STEP, "A's calls", calls_a).await.unwrap();
        let results_b = within(STEP, "B's calls", calls_b).await.unwrap();
        for (i, r) in results_b.iter().enumerate() {
            assert_eq!(
                r.as_deref().ok(),
                Some(format!("re{i:02}").as_str()),
                "{r:?}"
            );
        }
        let errors: Vec<&Error> = results_a
            .iter()
            .map(|r| r.as_ref().expect_err("A's server never answers"))
            .collect();
        drop((ca_ch, cb_ch));
        within(STEP, "A's server", a.server).await.unwrap();
        within(STEP, "B's server", b.server).await.unwrap();
        check_safe(&errors, &a.executed.lock().unwrap());
        assert!(errors.iter().any(|e| e.is_not_sent()));
        let hs = within(STEP, "the handshake", handshake).await.unwrap();
        let err = hs
            .expect("the handshake fails at once, not by the 2 s timeout")
            .expect_err("its socket fails every write");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    })
    .await;
}

/// **Finding (change 3), fixed.** A panic in the IO under a `Wire` during a `Metered`
/// write after a byte moved (user code: the socket of one's own stack; the connection
/// task catches it and closes the channel, and the thread goes on) unwound past the
/// reset of the thread's `BELOW`, leaving it at `Moved`; a later `Wire` write on that
/// thread outside a `Metered` write (a TLS handshake) whose socket failed was kept and
/// kept again on every retry: the handshake spun until its timeout. The reset is now a
/// guard's drop, and a kept error is never kept again.
#[test]
fn a_panic_under_a_wire_does_not_leave_the_next_handshake_spinning() {
    on_own_thread(
        Duration::from_secs(30),
        "a handshake after a panic",
        || async {
            let ca = ca::TestCa::new("review CA").unwrap();
            let Tls {
                framed,
                control,
                server,
                ..
            } = tls_stack(&ca, false).await;
            // A record leaves, then the socket panics within the same TLS write.
            arm(&control, &[Act::Take], Act::Panic);
            let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
            let results = within(STEP, "the calls", big_calls(&channel, 16))
                .await
                .unwrap();
            assert!(
                results.iter().all(|r| r.is_err()),
                "the task panicked: every call fails"
            );
            drop(channel);
            server.abort();

            // The next handshake on this thread, over a socket whose writes fail.
            let (client, _server) = tokio::io::duplex(1 << 16);
            let failing = Ctl::default();
            arm(&failing, &[], Act::Fail);
            let socket = Socket {
                io: client,
                control: failing,
            };
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let began = std::time::Instant::now();
            let outcome = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_rustls::TlsConnector::from(client_config(&ca))
                    .connect(name, Wire::new(socket)),
            )
            .await;
            let err = outcome
                .unwrap_or_else(|_| {
                    panic!(
                        "the handshake did not fail within 2 s ({:?}): its write error was \
                         kept and re-kept by the Wire",
                        began.elapsed()
                    )
                })
                .map(drop)
                .expect_err("every write of its socket fails");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        },
    );
}

/// A flush, a shutdown or a close of a connection with a write error kept: fire-and-
/// forget sends of 16 big lines (each resolves when handed to the sink), then a
/// graceful shutdown: the write that follows fails after a record left, and the
/// shutdown must end at once (the kept error surfaces on the close's flush), not at its
/// 5 s deadline; the task ends (`State::Closed`).
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_with_a_kept_error_ends_at_once() {
    within(Duration::from_secs(20), "test", async {
        let ca = ca::TestCa::new("review CA").unwrap();
        let Tls {
            framed,
            control,
            executed,
            server,
        } = tls_stack(&ca, false).await;
        // Stalled first: the sends are handed over while nothing can be written.
        arm(&control, &[Act::Stall], Act::Stall);
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        for i in 0..16 {
            within(STEP, "a send", channel.send(line(i)))
                .await
                .expect("handed to the sink");
        }
        // The socket takes one record on the next write, then fails.
        {
            let mut c = control.lock().unwrap();
            c.script = [Act::Take].into_iter().collect();
            c.then = Act::Fail;
        }
        let wakers = std::mem::take(&mut control.lock().unwrap().wakers);
        let began = tokio::time::Instant::now();
        let mut state = channel.state();
        let down = {
            let channel = channel.clone();
            tokio::spawn(async move { channel.shutdown(Duration::from_secs(5)).await })
        };
        wakers.into_iter().for_each(Waker::wake);
        within(STEP, "the shutdown", down).await.unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "the shutdown waited {:?}",
            began.elapsed()
        );
        drop(channel);
        within(
            STEP,
            "the task ends",
            state.wait_for(|s| *s == socketchannel::State::Closed),
        )
        .await
        .unwrap();
        within(STEP, "the server", server).await.unwrap();
        assert!(!executed.lock().unwrap().is_empty(), "a record left");
    })
    .await;
}

/// `Metered::exact` over a `Wire` over the socket (no layer between): one write of the
/// `Metered` is one write of the `Wire`, so nothing is ever kept. The socket takes 5
/// bytes, then fails: call 0 *may have executed*, the rest *not sent*, at once.
#[tokio::test(flavor = "current_thread")]
async fn metered_exact_over_a_wire_counts_a_short_write_then_fails_at_once() {
    within(Duration::from_secs(20), "test", async {
        let (client, server) = tokio::io::duplex(4 << 20);
        let executed = Executed::default();
        let server = tokio::spawn(serve_lines(server, executed.clone(), false));
        let control = Ctl::default();
        arm(&control, &[Act::Short(5)], Act::Fail);
        let socket = Socket {
            io: client,
            control: control.clone(),
        };
        let framed = Framed::new(
            Metered::exact(Wire::new(socket)),
            Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        );
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        let results = within(Duration::from_secs(2), "the calls", big_calls(&channel, 4))
            .await
            .unwrap();
        let errors: Vec<&Error> = results.iter().map(|r| r.as_ref().unwrap_err()).collect();
        assert!(errors[0].may_have_executed(), "{}", errors[0]);
        for err in &errors[1..] {
            assert!(err.is_not_sent(), "{err}");
        }
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        check_safe(&errors, &executed.lock().unwrap());
    })
    .await;
}

/// 8 big calls over `Metered::new(Pieces<Wire<Socket>>)`, the socket taking one piece
/// and then going as `then` (a stall then a reset, or a failure at once): the errors,
/// and the calls the server read whole.
async fn over_pieces(then: Act) -> (Vec<Error>, Vec<usize>) {
    let (client, server) = tokio::io::duplex(4 << 20);
    let executed = Executed::default();
    let server = tokio::spawn(serve_lines(server, executed.clone(), false));
    let control = Ctl::default();
    arm(&control, &[Act::Take], then);
    let socket = Socket {
        io: client,
        control: control.clone(),
    };
    let layer = Pieces::new(Wire::new(socket));
    let mut framed = Framed::with_capacity(
        Metered::new(layer),
        Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        64 * 1024,
    );
    framed.set_backpressure_boundary(1024 * 1024);
    let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
    let calls = big_calls(&channel, 8);
    if then == Act::Stall {
        let mut settled = false;
        for _ in 0..2_000 {
            if !executed.lock().unwrap().is_empty() && !control.lock().unwrap().wakers.is_empty() {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(settled, "a piece left, then the socket stalled");
        reset_now(&control);
    }
    let errors = within(STEP, "the calls", calls)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect_err("the server never answers"))
        .collect();
    drop(channel);
    within(STEP, "the server", server).await.unwrap();
    let executed = executed.lock().unwrap().clone();
    (errors, executed)
}

/// **Finding (change 3), fixed.** Under a layer that reports its input only once all
/// of it left (see [`Pieces`]), a piece leaves (calls 0 and part of 1, which the server
/// executes), and the next piece's write fails. The `Wire` keeps the error and says
/// `Pending`, the layer says `Pending` (it reports nothing), and the retry gets the kept
/// error in a `Metered` write in which no byte moved: every call failed *not sent*, call
/// 0 included, which the server executed. Now a `Metered` write that says `Pending` after
/// a `Wire` kept an error counts all it was offered.
#[tokio::test(flavor = "current_thread")]
async fn a_layer_that_reports_its_input_once_all_of_it_left_keeps_executed_calls_mx() {
    within(Duration::from_secs(20), "test", async {
        let (errors, executed) = over_pieces(Act::Fail).await;
        assert!(executed.contains(&0), "the first piece left: {executed:?}");
        check_safe(&errors.iter().collect::<Vec<_>>(), &executed);
    })
    .await;
}

/// The same layer, the socket stalling after the first piece and then reset: the
/// stalled write said `Pending` (counted 0) after a piece left, and the retry failed in
/// a `Metered` write that moved nothing: 0. Call 0, executed, failed *not sent*. This
/// was older than change 3 (its parent did the same): a `Wire` vouches only for the
/// `Metered` write it is under. Now the `Metered` remembers a write that said `Pending`
/// after bytes left, and counts the next failed write as having taken all it was
/// offered.
#[tokio::test(flavor = "current_thread")]
async fn a_layer_that_reports_its_input_once_all_of_it_left_keeps_executed_calls_mx_after_a_stall()
{
    within(Duration::from_secs(20), "test", async {
        let (errors, executed) = over_pieces(Act::Stall).await;
        assert!(executed.contains(&0), "the first piece left: {executed:?}");
        check_safe(&errors.iter().collect::<Vec<_>>(), &executed);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Change 1: the caller's reference on a per-thread stripe.
// ---------------------------------------------------------------------------------------

/// What the notice server read: each request's id by body, and the ids noticed.
#[derive(Default)]
struct NoticeLog {
    ids: HashMap<String, u64>,
    cancels: Vec<u64>,
}

/// A session-mode server that never answers a call, sends one part (`More`) of a reply
/// to a call whose body starts with "s", and records every notice.
async fn notice_server(io: DuplexStream, log: Arc<Mutex<NoticeLog>>) {
    let mut framed = Framed::new(io, MsgCodec::default());
    while let Some(Ok(req)) = framed.next().await {
        if req.text() == CANCEL {
            log.lock().unwrap().cancels.push(req.id);
            continue;
        }
        log.lock()
            .unwrap()
            .ids
            .insert(req.text().to_string(), req.id);
        if req.text().starts_with('s')
            && framed
                .send(Msg::with_id(req.id, "part").kind(Kind::More))
                .await
                .is_err()
        {
            break;
        }
    }
}

/// Callers on many threads (more than the channel's stripes, 16 at most, and more than
/// the machine's cores), each thread with a runtime of its own, call a channel built on
/// a multi-thread runtime; a third of them hand their call's future (or stream) to
/// another thread, which drops it. Each call, once written, is left unanswered: every
/// one is owed a notice, whichever stripe its caller took and wherever it was dropped.
#[test]
fn callers_on_more_threads_than_stripes_each_get_their_notice() {
    const THREADS: usize = 24;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(NoticeLog::default()));
    let ch: Ch = rt.block_on(async {
        let (transport, server) = pipe();
        tokio::spawn(notice_server(server, log.clone()));
        Channel::new(transport, Session::new(Cancelling).ids(1u64..=10_000))
    });
    let (handoff, handed) = std::sync::mpsc::channel::<Box<dyn Send>>();
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let ch = ch.clone();
            let log = log.clone();
            let handoff = handoff.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let written = |body: String| {
                        let log = log.clone();
                        async move {
                            for _ in 0..2_500 {
                                if log.lock().unwrap().ids.contains_key(&body) {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            panic!("{body} was never written");
                        }
                    };
                    if i % 2 == 0 {
                        let body = format!("t{i}");
                        let mut call = Box::pin({
                            let ch = ch.clone();
                            let body = body.clone();
                            async move { ch.request(msg(body)).await }
                        });
                        tokio::select! {
                            r = &mut call => panic!("answered: {r:?}"),
                            () = written(body) => {}
                        }
                        if i % 3 == 0 {
                            handoff.send(Box::new(call)).unwrap();
                        }
                    } else {
                        let body = format!("s{i}");
                        let mut stream = ch.stream(msg(body), Replies::UntilFinal).await;
                        let part = tokio::time::timeout(STEP, stream.next())
                            .await
                            .expect("the first part comes")
                            .expect("a part")
                            .expect("not an error");
                        assert_eq!(part.text(), "part");
                        if i % 3 == 0 {
                            handoff.send(Box::new(stream)).unwrap();
                        }
                    }
                });
            })
        })
        .collect();
    drop(handoff);
    for t in threads {
        t.join().expect("a caller thread");
    }
    // The handed-over ends are dropped here, on yet another thread.
    let handed: Vec<_> = handed.try_iter().collect();
    assert_eq!(handed.len(), (0..THREADS).filter(|i| i % 3 == 0).count());
    drop(handed);
    rt.block_on(async {
        let mut done = false;
        for _ in 0..2_500 {
            if log.lock().unwrap().cancels.len() >= THREADS {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let log = log.lock().unwrap();
        let mut want: Vec<u64> = log.ids.values().copied().collect();
        let mut got = log.cancels.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert!(done, "notices for {got:?} of {want:?}");
        assert_eq!(got, want, "one notice per call left");
        assert_eq!(ch.counters().cancel_notices, THREADS as u64);
    });
    drop(ch);
}

/// What one notice channel costs on top of a channel without notices: the stripes
/// (each an `Arc` on a 128-byte line, so 256 bytes a stripe, up to 16) are made when
/// the channel is built. Measured with the thread's live bytes on a `Channel::pair`
/// (nothing spawned); bounded by 16 stripes' worth.
#[test]
fn a_notice_channel_costs_at_most_its_stripes() {
    const N: isize = 32;
    fn build(cancels: bool) -> isize {
        let before = live();
        let mut held = Vec::new();
        for _ in 0..N {
            let (transport, server) = pipe();
            let pair = if cancels {
                Channel::pair(transport, Session::new(Cancelling), Config::default())
            } else {
                Channel::pair(transport, Session::new(TestProto), Config::default())
            };
            held.push((pair, server));
        }
        let bytes = live() - before;
        drop(held);
        bytes
    }
    // Once first, for what is made once per process or thread.
    build(true);
    build(false);
    let plain = build(false);
    let notices = build(true);
    let per_channel = (notices - plain) / N;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("a notice channel costs {per_channel} B more ({cores} cores)");
    assert!(
        (0..=16 * 256 + 512).contains(&per_channel),
        "a notice channel costs {per_channel} B more than one without"
    );
}

// ---------------------------------------------------------------------------------------
// Change 2: the engine hands a call on as it came.
// ---------------------------------------------------------------------------------------

/// 100 calls queued at once behind `max_in_flight(8)` (so the write pass stages a batch
/// and leaves the rest in `held`), a quarter of them with a deadline (so the task takes
/// the intake into `held` to time it), and one in five of the unwritten ones dropped by
/// its caller: every other call is written once, in order, and answered with its own
/// reply; the dropped ones are never written and are counted as skipped.
#[tokio::test(start_paused = true)]
async fn staged_and_held_calls_keep_their_order_and_dropped_ones_are_skipped() {
    let (transport, server) = pipe();
    let mut peer = Peer::spawn(server);
    let ch: Ch = Channel::with_config(
        transport,
        Order::new(TestProto),
        Config::default().max_in_flight(8),
    );
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let call = Call::new(msg(format!("u{i}")));
            let call = if i % 4 == 0 {
                call.timeout(Duration::from_secs(3600))
            } else {
                call
            };
            spawn_request(&ch, call)
        })
        .collect();
    settle().await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(peer.next().await);
    }
    settle().await;
    assert!(peer.idle().is_none(), "more than 8 in flight");
    let dropped: Vec<usize> = (8..100).filter(|i| i % 5 == 3).collect();
    for &i in &dropped {
        calls[i].abort();
    }
    settle().await;
    let want: Vec<String> = (0..100)
        .filter(|i| !dropped.contains(i))
        .map(|i| format!("u{i}"))
        .collect();
    let mut answered = 0;
    while answered < want.len() {
        let req = seen.remove(0);
        assert_eq!(req.text(), want[answered], "written out of order");
        peer.reply(&req, &format!("re:{}", req.text()));
        answered += 1;
        if seen.is_empty() && answered < want.len() {
            seen.push(peer.next().await);
        }
    }
    settle().await;
    assert!(
        peer.idle().is_none(),
        "a call written twice, or a dropped one"
    );
    for (i, call) in calls.into_iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        let reply = joined(call).await.expect("answered");
        assert_eq!(reply.text(), format!("re:u{i}"));
    }
    let c = ch.counters();
    assert_eq!(c.skipped, dropped.len() as u64, "{c:?}");
    assert_eq!(c.sent, want.len() as u64, "{c:?}");
    assert_eq!(c.in_flight, 0);
}

/// Every handle dropped while 50 calls wait behind `max_in_flight(4)` (taken in
/// batches): the intake is done only once every one of them was written; all are
/// answered in order, and then the transport is closed.
#[tokio::test(start_paused = true)]
async fn the_intake_ends_only_after_every_queued_call_was_written() {
    let (transport, server) = pipe();
    let mut peer = Peer::spawn(server);
    let mut svc: Ch = Channel::with_config(
        transport,
        Order::new(TestProto),
        Config::default().max_in_flight(4).queue(64),
    );
    let mut futures = Vec::new();
    for i in 0..50 {
        svc.ready().await.expect("room");
        futures.push(svc.call(msg(format!("q{i}"))));
    }
    drop(svc);
    let replies = tokio::spawn(futures::future::join_all(futures));
    for i in 0..50 {
        let req = peer.next().await;
        assert_eq!(req.text(), format!("q{i}"));
        peer.reply(&req, &format!("re:q{i}"));
    }
    let replies = joined(replies).await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.expect("answered").text(), format!("re:q{i}"));
    }
    let end = tokio::time::timeout(STEP, peer.recv()).await;
    assert!(
        matches!(end, Ok(None)),
        "the transport is closed once the last was served: {end:?}"
    );
}

/// A handshake that awaits "auth", then queues three calls without awaiting them and
/// drops the second one's future: on the connection "auth", "hs1" and "hs3" come first,
/// in that order, "hs2" never; then the user calls queued meanwhile, in order, but for
/// those whose callers left before the connection was ready.
#[tokio::test(start_paused = true)]
async fn handshake_leftovers_go_first_in_order_and_a_dropped_one_is_skipped() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let net = {
        let log = log.clone();
        Net::new(move |_ep: Endpoint, mut io: Io| {
            let log = log.clone();
            async move {
                while let Some(Ok(req)) = io.next().await {
                    log.lock().unwrap().push(req.text().to_string());
                    if io.send(req).await.is_err() {
                        break;
                    }
                }
            }
        })
    };
    let ch: Ch = Channel::builder()
        .host("a:1")
        .handshake(|conn: Ch, _| async move {
            conn.request(msg("auth")).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut queued = Vec::new();
            for name in ["hs1", "hs2", "hs3"] {
                let mut call = Box::pin({
                    let conn = conn.clone();
                    async move { conn.request(msg(name)).await }
                });
                // Queued (polled once), not awaited.
                assert!(futures::poll!(call.as_mut()).is_pending());
                queued.push(call);
            }
            let hs2 = queued.remove(1);
            drop(hs2);
            for call in queued {
                tokio::spawn(call);
            }
            Ok(Handshake::Ready)
        })
        .connector(net.connector(), Order::new(TestProto))
        .expect("a valid host");
    let calls: Vec<_> = (0..20)
        .map(|i| spawn_request(&ch, format!("u{i}").as_str()))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let dropped: Vec<usize> = (0..20).filter(|i| i % 4 == 1).collect();
    for &i in &dropped {
        calls[i].abort();
    }
    for (i, call) in calls.into_iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        let reply = joined(call).await.expect("answered");
        assert_eq!(reply.text(), format!("u{i}"));
    }
    settle().await;
    let mut want: Vec<String> = ["auth", "hs1", "hs3"].map(String::from).to_vec();
    want.extend(
        (0..20)
            .filter(|i| !dropped.contains(i))
            .map(|i| format!("u{i}")),
    );
    assert_eq!(*log.lock().unwrap(), want);
    let c = ch.counters();
    assert_eq!(c.in_flight, 0, "{c:?}");
    assert_eq!(
        c.skipped,
        dropped.len() as u64 + 1,
        "the dropped user calls and hs2: {c:?}"
    );
}
