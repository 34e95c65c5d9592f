//! A line protocol whose replies are several lines, SMTP-style: `250-more` lines go on,
//! the `250 last` line (code, then a space) ends the reply. Framed by `LinesCodec`, one
//! frame per line, in order mode; each call collects its lines until the one
//! [`Protocol::is_final`] marks (`request_until_final`, or `Replies::UntilFinal` through
//! the tower service of calls).
//!
//! The server is in-process, on a 127.0.0.1 port: it greets each connection with a
//! two-line `220` reply (read by the handshake, until final too) and writes every reply
//! line by itself, so replies arrive in pieces.

#![cfg(feature = "tcp")]

mod support;

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use socketchannel::{
    BoxError, Call, Channel, ConnectionErrorKind, Error, Handshake, Kind, Protocol, Replies, Reply,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::codec::LinesCodec;
use tower::{Service, ServiceBuilder, ServiceExt};

use support::peak::PeakInFlight;
use support::{BOUND, bounded, timeout};

/// The longest line the codec takes; the server's `LONG` reply is longer.
const MAX_LINE: usize = 1024;

/// A reply line as the server wrote it: `NNN-text` (more follow) or `NNN text` (the
/// last); `None` for a line that does not start so.
fn parse(line: &str) -> Option<(u16, bool, &str)> {
    let code = line
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
    let (last, text) = match line.as_bytes().get(3) {
        None => (true, ""),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return None,
    };
    Some((code.parse().ok()?, last, text))
}

/// What a failed call's error is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SmtpError {
    /// A reply line with a code of 400 or more (its first such line).
    Code(u16, String),
    /// A line that does not start with a code.
    Malformed(String),
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmtpError::Code(code, text) => write!(f, "the server said {code} {text}"),
            SmtpError::Malformed(line) => write!(f, "a reply line with no code: {line:?}"),
        }
    }
}

impl std::error::Error for SmtpError {}

/// The `NNN ` line ends a reply. A line with no code cannot: every line of a reply
/// carries one, so one without is read as part of its reply (the reply goes on to its
/// `NNN ` line and the connection stays in step), and `check` fails the call with it.
/// Ending the reply there instead would hand the rest to the next call.
#[derive(Debug, Clone)]
struct Smtp;

impl Protocol<String, String> for Smtp {
    fn is_final(&self, line: &String) -> bool {
        parse(line).is_some_and(|(_, last, _)| last)
    }

    fn check(&self, line: String) -> Result<String, BoxError> {
        match parse(&line) {
            None => Err(SmtpError::Malformed(line).into()),
            Some((code, _, text)) if code >= 400 => Err(SmtpError::Code(code, text.into()).into()),
            Some(_) => Ok(line),
        }
    }
}

/// The reply lines to one request line:
/// `LINES <n> <tag>` -> `250-<tag> 1` ... `250 <tag> <n>`;
/// `FAIL <tag>` -> two `550` lines; `BAD <tag>` -> a line with no code mid-reply;
/// `NOOP` -> `250 OK`; `LONG` -> one line over [`MAX_LINE`]; anything else -> `500`.
fn answer(req: &str) -> Vec<String> {
    let words: Vec<&str> = req.split(' ').collect();
    match words[..] {
        ["LINES", n, tag] => {
            let n: usize = n.parse().unwrap_or(1).max(1);
            let dash = |i| if i < n { '-' } else { ' ' };
            (1..=n)
                .map(|i| format!("250{}{tag} {i}", dash(i)))
                .collect()
        }
        ["FAIL", tag] => vec![
            format!("550-{tag} no such mailbox"),
            format!("550 {tag} rejected"),
        ],
        ["BAD", tag] => vec![
            format!("250-{tag} 1"),
            format!("{tag} has no code"),
            format!("250 {tag} end"),
        ],
        ["NOOP"] => vec!["250 OK".to_string()],
        ["LONG"] => vec![format!("250 {}", "x".repeat(2 * MAX_LINE))],
        _ => vec![format!("500 unknown: {req}")],
    }
}

async fn session(sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (read, mut write) = sock.into_split();
    write
        .write_all(b"220-mx.test ESMTP\r\n220 ready\r\n")
        .await?;
    let mut requests = BufReader::new(read).lines();
    while let Some(req) = requests.next_line().await? {
        for line in answer(&req) {
            write.write_all(format!("{line}\r\n").as_bytes()).await?;
        }
    }
    Ok(())
}

/// Serves every connection to a 127.0.0.1 port until the test ends.
async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr").to_string();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(session(sock));
        }
    });
    addr
}

/// A channel whose handshake reads the greeting, until its final line.
fn channel(addr: &str) -> Channel<String, String> {
    Channel::builder()
        .host(addr)
        .handshake(|conn: Channel<String, String>, _| async move {
            let greeting = conn.request_until_final(Call::read()).await?;
            match greeting.last().and_then(|line| parse(line)) {
                Some((220, true, _)) => Ok(Handshake::Ready),
                _ => Err(format!("not a greeting: {greeting:?}").into()),
            }
        })
        .order(LinesCodec::new_with_max_length(MAX_LINE), Smtp)
        .expect("valid host")
}

fn lines(n: usize, tag: &str) -> Vec<String> {
    answer(&format!("LINES {n} {tag}"))
}

fn smtp_error(err: &Error) -> SmtpError {
    assert_eq!(err.kind(), Kind::Server, "{err}");
    err.source()
        .and_then(|s| s.downcast_ref::<SmtpError>())
        .unwrap_or_else(|| panic!("not an SmtpError: {err}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_calls_each_get_exactly_their_own_lines() {
    bounded(async {
        const TASKS: usize = 32;
        const CALLS: usize = 25;
        let ch = channel(&server().await);
        let sampler = PeakInFlight::start(&ch);
        let mut tasks = JoinSet::new();
        for t in 0..TASKS {
            let ch = ch.clone();
            tasks.spawn(async move {
                for i in 0..CALLS {
                    let (n, tag) = (1 + (t + i) % 7, format!("t{t}.{i}"));
                    let got = ch.request_until_final(format!("LINES {n} {tag}")).await?;
                    assert_eq!(got, lines(n, &tag));
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("caller panicked").expect("call failed");
        }
        sampler.stop();
        assert!(
            sampler.peak() >= 8,
            "only {} calls in flight at once",
            sampler.peak()
        );
        let counters = ch.counters();
        assert_eq!((counters.reconnects, counters.unknown), (0, 0));
        // The connection task reports calls in flight at the end of its pass, after
        // the replies it routed woke their callers (and after its flush): the last
        // caller can read the count first.
        support::eventually(Duration::from_secs(5), "nothing in flight", || {
            ch.counters().in_flight == 0
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn until_final_through_the_tower_service_of_calls() {
    bounded(async {
        let ch = channel(&server().await);
        let mut svc = ServiceBuilder::new().timeout(BOUND).service(ch.calls());

        let call = Call::new("LINES 3 svc".to_string()).replies(Replies::UntilFinal);
        let reply = svc.ready().await.unwrap().call(call).await.unwrap();
        assert_eq!(reply.into_many().expect("collected lines"), lines(3, "svc"));

        // The same reply, a line at a time.
        let call = Call::new("LINES 4 stream".to_string()).stream(Replies::UntilFinal);
        let Reply::Stream(stream) = svc.ready().await.unwrap().call(call).await.unwrap() else {
            panic!("not a stream");
        };
        let streamed: Vec<String> = stream.map(|line| line.expect("a line")).collect().await;
        assert_eq!(streamed, lines(4, "stream"));

        // A one-line reply is final at once.
        let one = svc.oneshot(Call::new("NOOP".to_string()).replies(Replies::UntilFinal));
        assert_eq!(one.await.unwrap().into_many().unwrap(), ["250 OK"]);
    })
    .await;
}

#[tokio::test]
async fn an_error_code_or_a_line_with_no_code_fails_only_its_call() {
    bounded(async {
        let ch = channel(&server().await);
        let call = |req: &str| ch.request_until_final(req.to_string());
        let (before, fail, bad, after) = tokio::join!(
            call("LINES 2 a"),
            call("FAIL b"),
            call("BAD c"),
            call("LINES 3 d")
        );
        assert_eq!(before.unwrap(), lines(2, "a"));
        let fail = fail.expect_err("a 550 reply");
        assert_eq!(
            smtp_error(&fail),
            SmtpError::Code(550, "b no such mailbox".into())
        );
        let bad = bad.expect_err("a line with no code");
        assert!(bad.may_have_executed());
        assert_eq!(
            smtp_error(&bad),
            SmtpError::Malformed("c has no code".into())
        );
        // The bad reply was read to its end: the next call got its own lines.
        assert_eq!(after.unwrap(), lines(3, "d"));
        assert_eq!(call("LINES 1 e").await.unwrap(), lines(1, "e"));
        assert_eq!(ch.counters().reconnects, 0);
    })
    .await;
}

/// A line the codec cannot frame (over its length) is a decode error: the connection
/// ends, the calls written on it fail *may have executed*, and the channel connects
/// again (and greets again) for the next call.
#[tokio::test]
async fn a_line_over_the_codec_limit_ends_the_connection() {
    bounded(async {
        let ch = channel(&server().await);
        assert_eq!(
            ch.request_until_final("LINES 2 a".to_string())
                .await
                .unwrap(),
            lines(2, "a")
        );
        let err = timeout(
            Duration::from_secs(5),
            ch.request_until_final("LONG".to_string()),
        )
        .await
        .expect_err("a line over the limit");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
        assert!(err.may_have_executed());
        let conn = err.connection_error().expect("a connection error");
        assert_eq!(conn.kind(), ConnectionErrorKind::Read);
        assert_eq!(
            ch.request_until_final("LINES 2 b".to_string())
                .await
                .unwrap(),
            lines(2, "b")
        );
        assert_eq!(ch.counters().reconnects, 1);
    })
    .await;
}
