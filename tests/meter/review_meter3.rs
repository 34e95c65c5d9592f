//! A third skeptical review of the byte counting in `src/meter.rs` after 75a8d0d: the
//! `Mode` of a `Metered` (`new` = Layer, `exact`, `reporting`), the `credit` (bytes
//! counted as written ahead of the layer's report), and the `Wire` that turns `Ok(0)`
//! into `WriteZero`. The rule: a call fails *not sent* only if the server cannot have
//! executed it (none of its bytes reached the socket; over TLS, none of its plaintext
//! was taken by the session).
//!
//! Helpers and stacks are review_meter2's (shared in `rig`). New here: a `Puppet`
//! layer whose every write does what its script says (send k more bytes of its input
//! to the `Wire`, then say `Pending` or report what it sent), to drive the credit
//! through exact sequences; a `Trickle` socket (a slow link); a `Splitter` that hands
//! the `Metered` vectored writes with empty slices.
//!
//! Tests marked `// Found:` failed on 75a8d0d and pass since the fix that followed (a
//! `Wire`'s bytes restart the stall clock, `Mark::below`).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use socketchannel::{Channel, Config, Error, Metered, Order, Plain, Wire};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_util::codec::{Framed, LinesCodec};

use super::rig::*;
use crate::ca;

/// A small call's line (the `Puppet` tests), without its `\n`.
const SMALL: usize = 99;
/// The one slow request's line (the stall tests), without its `\n`.
const BIG: usize = 512 * 1024;

/// The lengths of a whole call line here: big, small and the one slow request's.
const SIZES: &[usize] = &[LINE, SMALL, BIG];

// ---------------------------------------------------------------------------------------
// The server and the verdicts (the rest in the rig).
// ---------------------------------------------------------------------------------------

/// Reads lines, records each whole call line (big or small); never answers.
async fn serve_lines<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, executed: Executed) {
    serve(io, executed, SIZES, false).await
}

/// Stricter than [`check_safe`]: no call one of whose bytes reached the socket (the
/// socket took `accepted` bytes of a stream of `len`-byte calls) is *not sent*.
fn check_reached(errors: &[Error], accepted: usize, len: usize) {
    let v = verdicts(errors);
    assert!(!v.contains(&"??"), "a call both or neither: {v:?}");
    for (i, e) in errors.iter().enumerate() {
        assert!(
            !(start_of(i, len) < accepted && e.is_not_sent()),
            "call {i} (bytes from {}) reached the socket ({accepted} bytes taken) but \
             failed not sent: {v:?}",
            start_of(i, len)
        );
    }
}

async fn errors_of(calls: JoinHandle<Vec<Result<String, Error>>>) -> Vec<Error> {
    within(STEP, "the calls", calls)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.expect_err("the server never answers"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Layers ([`Pieces`] is in the rig).
// ---------------------------------------------------------------------------------------

/// A slow link: takes at most [`PIECE`] bytes a write, then says `Pending` for `gap`.
struct Trickle {
    io: DuplexStream,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    accepted: Arc<AtomicUsize>,
}

read_through!(Trickle);

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let n = buf.len().min(PIECE);
        let poll = Pin::new(&mut self.io).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(n)) = poll {
            self.accepted.fetch_add(n, Ordering::Relaxed);
            let gap = self.gap;
            self.sleep = Some(Box::pin(tokio::time::sleep(gap)));
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One write of a [`Puppet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Sends `k` more bytes of its input to its IO, then says `Pending` without waking
    /// the task; until the test lets it go on (`Puppet::held`), every write says
    /// `Pending` at once (nothing sent, not logged, no step taken).
    SendPark(usize),
    /// Sends `k` more bytes, then reports all it sent and had not reported.
    SendReport(usize),
    /// Makes the socket fail every write, then sends the rest (and fails with it).
    ResetThenPass,
}

/// A layer that holds its input (an honest `SSL_write`: it reports, at the latest, what
/// it sent), each write doing what its script says; once the script is done, it sends
/// all it is offered and reports it. Logs (offered, what it returned) per write.
struct Puppet<IO> {
    io: IO,
    steps: VecDeque<Step>,
    /// Bytes of the stream sent to the IO / reported to the writer above.
    sent: usize,
    reported: usize,
    control: Ctl,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    held: Arc<std::sync::atomic::AtomicBool>,
}

impl<IO: AsyncWrite + Unpin> Puppet<IO> {
    /// Sends up to `k` more bytes of `buf` (which begins at `reported`); what the IO
    /// said if it did not take them.
    fn send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        k: usize,
    ) -> Option<Poll<io::Result<usize>>> {
        let mut left = k;
        while left > 0 {
            let off = self.sent - self.reported;
            let end = off.saturating_add(left).min(buf.len());
            if off >= end {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &buf[off..end]) {
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    left -= n;
                }
                other => return Some(other),
            }
        }
        None
    }
}

read_through!(Puppet<IO>);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Puppet<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.held.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let step = this
            .steps
            .pop_front()
            .unwrap_or(Step::SendReport(usize::MAX));
        let (k, report) = match step {
            Step::SendPark(k) => {
                this.held.store(true, Ordering::Relaxed);
                (k, false)
            }
            Step::SendReport(k) => (k, true),
            Step::ResetThenPass => {
                this.control.lock().unwrap().writes_fail = true;
                (usize::MAX, true)
            }
        };
        let poll = match this.send(cx, buf, k) {
            Some(poll) => poll,
            None if report => {
                let n = this.sent - this.reported;
                this.reported = this.sent;
                Poll::Ready(Ok(n))
            }
            None => Poll::Pending,
        };
        let said = match &poll {
            Poll::Ready(Ok(n)) => format!("Ok({n})"),
            Poll::Ready(Err(_)) => "Err".to_string(),
            Poll::Pending => "Pending".to_string(),
        };
        this.log.lock().unwrap().push((buf.len(), said));
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Above a `Metered`: hands each write on as a vectored write with empty slices around
/// and between its two halves.
struct Splitter<IO> {
    io: IO,
}

read_through!(Splitter<IO>);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Splitter<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (a, b) = buf.split_at(buf.len() / 2);
        let slices = [
            io::IoSlice::new(&[]),
            io::IoSlice::new(a),
            io::IoSlice::new(&[]),
            io::IoSlice::new(b),
        ];
        Pin::new(&mut self.io).poll_write_vectored(cx, &slices)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The error chain of `e`, each link's `Debug`: for what the connection failed with.
fn chain(e: &Error) -> String {
    let mut out = format!("{e:?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(&format!(" <- {s:?}"));
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------
// The credit and the stall timer.
// ---------------------------------------------------------------------------------------

/// One request of 512 KiB over a link that takes 16 KiB every 25 ms (0.8 s in all),
/// with a stall timer of 300 ms and a server that answers each whole line; `layered`:
/// through [`Pieces`] over a `Wire` (`Metered::new`), else `Metered::exact` on the
/// link. What the call got, and how many bytes had left.
async fn trickle(layered: bool) -> (Result<String, Error>, usize) {
    let (client, server) = tokio::io::duplex(8 << 20);
    let server = tokio::spawn(serve(server, Executed::default(), SIZES, true));
    let accepted = Arc::new(AtomicUsize::new(0));
    let link = Trickle {
        io: client,
        gap: Duration::from_millis(25),
        sleep: None,
        accepted: accepted.clone(),
    };
    let config = Config::default().stall_timeout(Some(Duration::from_millis(300)));
    let reply = if layered {
        let framed = framed(Pieces::new(Wire::new(link)));
        let channel: Channel<String, String> =
            Channel::with_config(framed, Order::new(Plain), config);
        within(STEP, "the call", channel.request(line_of(0, BIG))).await
    } else {
        let framed = framed_as(Metered::exact(link));
        let channel: Channel<String, String> =
            Channel::with_config(framed, Order::new(Plain), config);
        within(STEP, "the call", channel.request(line_of(0, BIG))).await
    };
    server.abort();
    (reply, accepted.load(Ordering::Relaxed))
}

/// Control: the same slow request over a socket metered `exact` is never stalled (each
/// write that took bytes restarts the clock, as `Config::stall_timeout` promises).
#[tokio::test(flavor = "current_thread")]
async fn a_large_request_trickling_over_an_exact_socket_is_not_stalled() {
    within(TEST, "test", async {
        let (reply, left) = trickle(false).await;
        assert_eq!(reply.expect("answered"), "re00", "{left} bytes left");
    })
    .await;
}

// Found: under a layer that holds its input (`Metered::new`, the mode the commit made
// the credit for), the first write that says `Pending` after a piece left counts the
// whole buffer offered (512 KiB) at once, and every write after it that moves bytes
// counts nothing until the layer's reports catch up with that credit
// (`count_write`, src/meter.rs: the `Pending` arm and the `Ok` arm's `n - ahead`). The
// engine restarts the stall clock only on `written != 0` (src/mux/engine/drive.rs,
// `count_bytes` / `heard`), so 0.8 s of bytes leaving look like silence and the stall
// timer (300 ms) kills a request that was being taken in, which
// `Config::stall_timeout` says never stalls. On 75a8d0d's parent each `Ok(64 KiB)` of
// the layer counted and the call was answered. Now the bytes the `Wire` saw leave
// restart the stall clock too.
#[tokio::test(flavor = "current_thread")]
async fn a_large_request_trickling_through_a_holding_layer_is_not_stalled() {
    within(TEST, "test", async {
        let (reply, left) = trickle(true).await;
        match reply {
            Ok(reply) => assert_eq!(reply, "re00"),
            Err(e) => panic!(
                "a request still being taken in (the link took {left} of {} bytes) \
                 failed: {}",
                512 * 1024 + 1,
                chain(&e)
            ),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The credit's arithmetic, step by step (a `Puppet` layer, 100-byte calls).
// ---------------------------------------------------------------------------------------

type PuppetLog = Arc<Mutex<Vec<(usize, String)>>>;

struct PuppetRig {
    channel: Channel<String, String>,
    control: Ctl,
    log: PuppetLog,
    held: Arc<std::sync::atomic::AtomicBool>,
    executed: Executed,
    server: JoinHandle<()>,
}

fn puppet_rig(steps: &[Step]) -> PuppetRig {
    let (client, server) = tokio::io::duplex(4 << 20);
    let executed = Executed::default();
    let server = tokio::spawn(serve_lines(server, executed.clone()));
    let (socket, control) = socket(client);
    script(&control, &[], Act::Take);
    let log = PuppetLog::default();
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let puppet = Puppet {
        io: Wire::new(socket),
        steps: steps.iter().copied().collect(),
        sent: 0,
        reported: 0,
        control: control.clone(),
        log: log.clone(),
        held: held.clone(),
    };
    let channel: Channel<String, String> = Channel::new(framed(puppet), Order::new(Plain));
    PuppetRig {
        channel,
        control,
        log,
        held,
        executed,
        server,
    }
}

async fn until_log(log: &PuppetLog, n: usize) {
    for _ in 0..2_000 {
        if log.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "the layer was written {:?}, not {n} times",
        log.lock().unwrap()
    );
}

fn said(log: &PuppetLog) -> Vec<(usize, String)> {
    log.lock().unwrap().clone()
}

fn entries(want: &[(usize, &str)]) -> Vec<(usize, String)> {
    want.iter().map(|(n, s)| (*n, s.to_string())).collect()
}

/// Runs batches of 100-byte calls (one batch per entry of `batches`, the next queued
/// once the layer was written `at` times, and let go on if it held) and returns every
/// call's error, in order.
async fn puppet_run(rig: &PuppetRig, batches: &[(std::ops::Range<usize>, usize)]) -> Vec<Error> {
    let mut handles = Vec::new();
    for (range, at) in batches {
        until_log(&rig.log, *at).await;
        rig.held.store(false, Ordering::Relaxed);
        handles.push(calls_of(&rig.channel, range.clone(), SMALL));
    }
    let mut errors = Vec::new();
    for handle in handles {
        errors.extend(errors_of(handle).await);
    }
    errors
}

/// A `Pending` after 150 of 300 bytes left (credit 300); more calls make the retry's
/// buffer 600, and the layer reports 200 (less than the credit: 100 of it stays); the
/// next write reports 300 (more than what is left of the credit), then the socket fails.
/// 500 bytes left: calls 0-4 MX, call 5 (its bytes from 500) NS, exactly.
#[tokio::test(flavor = "current_thread")]
async fn a_report_short_of_the_credit_on_a_longer_buffer_then_one_past_it() {
    within(TEST, "test", async {
        let rig = puppet_rig(&[
            Step::SendPark(150),
            Step::SendReport(50),
            Step::SendReport(300),
            Step::ResetThenPass,
        ]);
        let errors = puppet_run(&rig, &[(0..3, 0), (3..6, 1)]).await;
        until_log(&rig.log, 4).await;
        assert_eq!(
            said(&rig.log),
            entries(&[
                (300, "Pending"),
                (600, "Ok(200)"),
                (400, "Ok(300)"),
                (100, "Err")
            ])
        );
        let accepted = rig.control.lock().unwrap().accepted;
        assert_eq!(accepted, 500);
        check_reached(&errors, accepted, SMALL + 1);
        check_safe(&errors, &rig.executed.lock().unwrap());
        assert_eq!(verdicts(&errors), ["MX", "MX", "MX", "MX", "MX", "NS"]);
        drop(rig.channel);
        within(STEP, "the server", rig.server).await.unwrap();
    })
    .await;
}

/// Two `Pending`s after bytes left, the second on a longer buffer (300, then 600: the
/// credit grows to 600); a third batch makes the next buffer 900, and the layer reports
/// 600 (exactly the credit); then a write of 50 that counts in full, then the socket
/// fails. 650 bytes left: calls 0-6 MX, 7 and 8 NS, exactly.
#[tokio::test(flavor = "current_thread")]
async fn two_pendings_on_growing_buffers_then_a_report_equal_to_the_credit() {
    within(TEST, "test", async {
        let rig = puppet_rig(&[
            Step::SendPark(100),
            Step::SendPark(100),
            Step::SendReport(400),
            Step::SendReport(50),
            Step::ResetThenPass,
        ]);
        let errors = puppet_run(&rig, &[(0..3, 0), (3..6, 1), (6..9, 2)]).await;
        until_log(&rig.log, 5).await;
        assert_eq!(
            said(&rig.log),
            entries(&[
                (300, "Pending"),
                (600, "Pending"),
                (900, "Ok(600)"),
                (300, "Ok(50)"),
                (250, "Err"),
            ])
        );
        let accepted = rig.control.lock().unwrap().accepted;
        assert_eq!(accepted, 650);
        check_reached(&errors, accepted, SMALL + 1);
        check_safe(&errors, &rig.executed.lock().unwrap());
        assert_eq!(
            verdicts(&errors),
            ["MX", "MX", "MX", "MX", "MX", "MX", "MX", "NS", "NS"]
        );
        drop(rig.channel);
        within(STEP, "the server", rig.server).await.unwrap();
    })
    .await;
}

/// A credit left over meets later writes that really move bytes. A `Pending` after 50
/// of 300 left (credit 300); a second batch (buffer 500): reports of 50 and 100 (the
/// bytes sent in the second are taken off the credit: 150 stay), then a `Pending` after
/// 100 more left on a buffer of 350 (the credit grows to 350); a third batch (buffer
/// 650): reports of 100, 150 and 200 (the last counts the 100 past the credit), then
/// the socket fails. 600 left: calls 0-5 MX, 6 and 7 NS, exactly.
#[tokio::test(flavor = "current_thread")]
async fn a_leftover_credit_never_hides_bytes_of_a_later_write() {
    within(TEST, "test", async {
        let rig = puppet_rig(&[
            Step::SendPark(50),
            Step::SendReport(0),
            Step::SendReport(100),
            Step::SendPark(100),
            Step::SendReport(0),
            Step::SendReport(150),
            Step::SendReport(200),
            Step::ResetThenPass,
        ]);
        let errors = puppet_run(&rig, &[(0..3, 0), (3..5, 1), (5..8, 4)]).await;
        until_log(&rig.log, 8).await;
        assert_eq!(
            said(&rig.log),
            entries(&[
                (300, "Pending"),
                (500, "Ok(50)"),
                (450, "Ok(100)"),
                (350, "Pending"),
                (650, "Ok(100)"),
                (550, "Ok(150)"),
                (400, "Ok(200)"),
                (200, "Err"),
            ])
        );
        let accepted = rig.control.lock().unwrap().accepted;
        assert_eq!(accepted, 600);
        check_reached(&errors, accepted, SMALL + 1);
        check_safe(&errors, &rig.executed.lock().unwrap());
        assert_eq!(
            verdicts(&errors),
            ["MX", "MX", "MX", "MX", "MX", "MX", "NS", "NS"]
        );
        drop(rig.channel);
        within(STEP, "the server", rig.server).await.unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// `Ok(0)` under a `Wire`: `WriteZero`, kept or answered.
// ---------------------------------------------------------------------------------------

/// Under [`Pieces`] (`Metered::new`): the socket takes one piece, then says `Ok(0)`
/// within the same write: the `Wire` keeps `WriteZero`, the layer says `Pending` (the
/// write counts all it was offered), and its retry gets the kept error. The calls fail
/// at once (no stall timer), with `WriteZero`, none that reached the socket NS.
#[tokio::test(flavor = "current_thread")]
async fn ok0_after_a_piece_under_a_holding_layer_is_kept_then_reported() {
    within(TEST, "test", async {
        let (client, server) = tokio::io::duplex(4 << 20);
        let executed = Executed::default();
        let server = tokio::spawn(serve_lines(server, executed.clone()));
        let (sock, control) = socket(client);
        script(&control, &[Act::Take], Act::Zero);
        let channel: Channel<String, String> =
            Channel::new(framed(Pieces::new(Wire::new(sock))), Order::new(Plain));
        let errors = within(
            Duration::from_secs(2),
            "the calls",
            errors_of(big_calls(&channel, 8)),
        )
        .await;
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        let accepted = control.lock().unwrap().accepted;
        assert_eq!(accepted, PIECE);
        let executed = executed.lock().unwrap().clone();
        assert_eq!(executed, [0]);
        check_reached(&errors, accepted, LINE + 1);
        check_safe(&errors, &executed);
        assert!(
            chain(&errors[0]).contains("WriteZero"),
            "{}",
            chain(&errors[0])
        );
    })
    .await;
}

/// Under rustls (`Metered::reporting`, as `TlsConnector` meters it): one record leaves,
/// then the socket says `Ok(0)` within the same session write: kept as `WriteZero`,
/// the session reports the plaintext it took, the next write gets the error. Exactly
/// the calls past what the session reported taking fail NS.
#[tokio::test(flavor = "current_thread")]
async fn ok0_after_a_record_under_rustls_counts_exactly_what_the_session_took() {
    within(TEST, "test", async {
        const CALLS: usize = 16;
        let ca = ca::TestCa::new("review CA").unwrap();
        let (tls, control, executed, server) = tls_session(&ca, SIZES).await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let spy = Spy {
            io: tls,
            log: log.clone(),
        };
        script(&control, &[Act::Take], Act::Zero);
        let channel: Channel<String, String> = Channel::new(framed_tls(spy), Order::new(Plain));
        let errors = within(
            Duration::from_secs(2),
            "the calls",
            errors_of(big_calls(&channel, CALLS)),
        )
        .await;
        drop(channel);
        within(STEP, "the server", server).await.unwrap();
        let wrote = log.lock().unwrap().clone();
        let taken: usize = wrote
            .iter()
            .map(|w| if let Wrote::Took(n) = w { *n } else { 0 })
            .sum();
        let executed = executed.lock().unwrap().clone();
        check_safe(&errors, &executed);
        assert!(!executed.is_empty(), "a record left");
        let want: Vec<&str> = (0..CALLS)
            .map(|i| if start(i) < taken { "MX" } else { "NS" })
            .collect();
        assert!(want.contains(&"NS"), "{taken} taken: {wrote:?}");
        assert_eq!(verdicts(&errors), want, "{taken} taken: {wrote:?}");
        assert!(
            chain(&errors[0]).contains("WriteZero"),
            "{}",
            chain(&errors[0])
        );
    })
    .await;
}

/// Vectored writes with empty slices (a [`Splitter`] above the `Metered`) over a `Wire`,
/// `exact` and `new`: the socket takes 5 bytes, then says `Ok(0)` to a write whose
/// first slice is empty: `WriteZero`, counted as nothing. Call 0 MX, the rest NS.
#[tokio::test(flavor = "current_thread")]
async fn vectored_writes_with_empty_slices_then_ok0_count_only_what_left() {
    within(TEST, "test", async {
        for exact in [true, false] {
            let (client, server) = tokio::io::duplex(4 << 20);
            let executed = Executed::default();
            let server = tokio::spawn(serve_lines(server, executed.clone()));
            let (sock, control) = socket(client);
            script(&control, &[Act::Short(5)], Act::Zero);
            let io = if exact {
                Metered::exact(Wire::new(sock))
            } else {
                Metered::new(Wire::new(sock))
            };
            let framed = Framed::new(
                Splitter { io },
                Metered::new(LinesCodec::new_with_max_length(1 << 20)),
            );
            let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
            let errors = within(
                Duration::from_secs(2),
                "the calls",
                errors_of(big_calls(&channel, 4)),
            )
            .await;
            drop(channel);
            within(STEP, "the server", server).await.unwrap();
            assert_eq!(control.lock().unwrap().accepted, 5);
            assert_eq!(
                verdicts(&errors),
                ["MX", "NS", "NS", "NS"],
                "exact: {exact}"
            );
            assert!(
                chain(&errors[0]).contains("WriteZero"),
                "{}",
                chain(&errors[0])
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Plain TCP, `Metered::exact(TcpStream)`, no `Wire`.
// ---------------------------------------------------------------------------------------

/// A real loopback socket with small buffers, metered `exact` as `TcpConnector` does:
/// 100 calls of 10 KB; the server reads 25,005 bytes (calls 0 and 1 whole, part of 2),
/// lets the client's writes stall (`Pending`, no `Wire`: nothing counted), then closes
/// with unread data (a reset). The verdicts are a run of MX then a run of NS, call 2 and
/// the calls before it MX, and many NS (the kernel never took their bytes).
#[tokio::test(flavor = "current_thread")]
async fn exact_tcp_without_a_wire_counts_what_the_kernel_took() {
    within(TEST, "test", async {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(16 * 1024).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0; 25_005];
            s.read_exact(&mut got).await.unwrap();
            let _ = close_rx.await;
            drop(s);
        });
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_send_buffer_size(16 * 1024).unwrap();
        let stream = within(STEP, "connect", sock.connect(addr)).await.unwrap();
        let mut framed = Framed::new(
            Metered::exact(stream),
            Metered::new(LinesCodec::new_with_max_length(1 << 20)),
        );
        framed.set_backpressure_boundary(4 << 20);
        let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
        let calls = big_calls(&channel, 100);
        tokio::time::sleep(Duration::from_millis(300)).await;
        close_tx.send(()).unwrap();
        within(STEP, "the server", server).await.unwrap();
        let errors = errors_of(calls).await;
        let v = verdicts(&errors);
        assert!(!v.contains(&"??"), "{v:?}");
        let mx = v.iter().take_while(|v| **v == "MX").count();
        assert!(v[mx..].iter().all(|v| *v == "NS"), "{v:?}");
        assert!(mx >= 3, "calls 0-2 reached the server: {v:?}");
        assert!(mx < 60, "the kernel cannot have taken 600 KB: {v:?}");
        drop(channel);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// `Metered::reporting` over a layer that breaks its promise.
// ---------------------------------------------------------------------------------------

/// Not a finding: documented misuse. `Metered::reporting` over [`Pieces`] (a layer
/// that takes its input and says `Pending` until all of it left): one piece leaves
/// (call 0 executed), the socket stalls, the reads fail. The `Pending` counted
/// nothing, so call 0, executed, fails NS, as `Metered::reporting`'s docs warn ("one
/// that says `Pending` after taking input would have executed calls fail *not sent*").
/// `Metered::new` over the same layer keeps it MX.
#[tokio::test(flavor = "current_thread")]
async fn reporting_over_a_layer_that_breaks_its_promise_is_the_documented_misuse() {
    within(TEST, "test", async {
        for reporting in [true, false] {
            let (client, server) = tokio::io::duplex(4 << 20);
            let executed = Executed::default();
            let server = tokio::spawn(serve_lines(server, executed.clone()));
            let (sock, control) = socket(client);
            script(&control, &[Act::Take], Act::Stall);
            let layer = Pieces::new(Wire::new(sock));
            let framed = if reporting {
                framed_tls(layer)
            } else {
                framed(layer)
            };
            let channel: Channel<String, String> = Channel::new(framed, Order::new(Plain));
            let calls = big_calls(&channel, 8);
            until(&control, "a piece left, then the stall", |c| {
                c.stalled && c.accepted == PIECE
            })
            .await;
            for _ in 0..2_000 {
                if !executed.lock().unwrap().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(*executed.lock().unwrap(), [0]);
            reset_now(&control, false, true);
            let errors = errors_of(calls).await;
            drop(channel);
            server.abort();
            assert_eq!(
                errors[0].is_not_sent(),
                reporting,
                "reporting: {reporting}: {:?}",
                verdicts(&errors)
            );
        }
    })
    .await;
}
