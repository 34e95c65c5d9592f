//! Limits and timers of the multiplexing engine.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Durations beyond this count as "never" (about 30 years, as tokio's own far future):
/// `Instant + Duration::MAX` would overflow.
pub(crate) const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, where a huge `d` means "never" instead of an overflow.
#[inline]
pub(crate) fn deadline(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now + d.min(NEVER)
}

/// Limits and timers of a channel's engine. The defaults suit most protocols.
///
/// ```
/// use std::time::Duration;
/// use socketchannel::Config;
///
/// let config = Config::default()
///     .max_in_flight(4096)
///     .stall_timeout(Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_in_flight: usize,
    pub(crate) queue: usize,
    pub(crate) stall_timeout: Option<Duration>,
    pub(crate) push_capacity: usize,
    pub(crate) overload: Option<Overload>,
    pub(crate) limits: ReplyLimits,
    pub(crate) orphans: Orphans,
    pub(crate) orphan_age: Option<Duration>,
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) name: Option<Cow<'static, str>>,
    #[cfg(feature = "metrics")]
    pub(crate) latency_sampling: u32,
}

/// When a reconnecting channel retires a connection whose waiting calls are orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orphans {
    /// A quarter of what can wait at once (the in-flight limit, or the id range).
    Quarter,
    Limit(usize),
    Off,
}

impl Orphans {
    /// The limit for a connection that holds `capacity` calls at once. By default only
    /// where a server can ignore a call and answer later ones (session mode): in order
    /// mode an orphan is only ever a slow reply, and retiring would only multiply the
    /// load on a slow server.
    pub(crate) fn limit(self, capacity: usize, ignorable: bool) -> Option<usize> {
        match self {
            Orphans::Quarter if !ignorable => None,
            Orphans::Quarter => Some((capacity / 4).max(1)),
            Orphans::Limit(n) => Some(n.max(1)),
            Orphans::Off => None,
        }
    }
}

/// How large a multi-frame reply may grow ([`Kind::Limit`](crate::Kind::Limit)).
#[derive(Clone)]
pub(crate) struct ReplyLimits {
    /// Frames one reply may have.
    pub(crate) frames: usize,
    /// Bytes one reply may weigh, by the user's weigher of a frame.
    pub(crate) bytes: Option<(usize, WeighReply)>,
    /// Frames a stream's reader may leave unread.
    pub(crate) stream: usize,
}

/// Type-erased like `Weigh`: the frame as `&dyn Any`.
pub(crate) type WeighReply = Arc<dyn Fn(&dyn Any) -> usize + Send + Sync>;

impl fmt::Debug for ReplyLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyLimits")
            .field("frames", &self.frames)
            .field("bytes", &self.bytes.as_ref().map(|(max, _)| max))
            .field("stream", &self.stream)
            .finish()
    }
}

/// The overload signal's setting: a high-water mark and how to weigh a request.
#[derive(Clone)]
pub(crate) struct Overload {
    pub(crate) high_water: usize,
    /// Type-erased so `Config` needs no type parameter; given the request as `&dyn Any`.
    weigh: Weigh,
}

type Weigh = Arc<dyn Fn(&dyn Any) -> usize + Send + Sync>;

impl Overload {
    pub(crate) fn weigh(&self, req: &dyn Any) -> usize {
        (self.weigh)(req)
    }
}

impl fmt::Debug for Overload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overload")
            .field("high_water", &self.high_water)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight: 1024,
            queue: 1024,
            stall_timeout: Some(Duration::from_secs(30)),
            push_capacity: 1024,
            overload: None,
            limits: ReplyLimits {
                frames: 1 << 16,
                bytes: None,
                stream: 1024,
            },
            orphans: Orphans::Quarter,
            orphan_age: Some(Duration::from_secs(60)),
            call_timeout: None,
            name: None,
            #[cfg(feature = "metrics")]
            latency_sampling: crate::metrics::SAMPLING,
        }
    }
}

impl Config {
    /// Calls written and waiting for a reply, at most (default 1024). When reached, the
    /// channel stops writing and, once its queue is full too, `poll_ready` waits.
    /// Values below 1 count as 1.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Calls queued and not yet written: the intake's size (default 1024). Values below
    /// 1 count as 1. The connection task takes calls out of the intake in batches; those
    /// of a batch it could not write (the transport stopped taking frames) it holds,
    /// fewer than this many. Once calls with deadlines are made, it also takes every
    /// queued call out of the intake to time it while it cannot write, and while it
    /// holds this many, handles wait before they queue more (`poll_ready`, the async
    /// methods; a call made without `poll_ready` fails
    /// [`Kind::Overloaded`](crate::Kind::Overloaded) *not sent*). So about twice this
    /// many can wait unwritten (see [`call_timeout`](Self::call_timeout)); `Load` and
    /// the overload signal count them all.
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// The deadline of every call that has none of its own
    /// ([`Call::deadline`](crate::Call::deadline)), counted from when the channel takes
    /// the call in, as [`Call::timeout`](crate::Call::timeout) is (default `None`: no
    /// deadline). Kept by the connection task, with one timer for all calls, and no
    /// clock read per call.
    ///
    /// A call still queued at its deadline fails [`Kind::Timeout`](crate::Kind::Timeout)
    /// *not sent*, and is never written, whether the channel is connecting, backing off
    /// or waiting for room; a written one fails *may have executed*, and its slot (or
    /// session id) stays taken until its reply comes, or its connection ends. Unlike
    /// `tower::timeout`, it costs no timer per call and its error says whether the call
    /// was sent. While deadlines are in use the task takes every queued call out of the
    /// intake to time it, so none waits there untimed; while it holds
    /// [`queue`](Self::queue) of them, handles wait to queue more (a method's wait is
    /// within its deadline). Handshake calls do not get it: the handshake timeout bounds
    /// them.
    ///
    /// A retry ([`RetryNotSent`](crate::RetryNotSent)) of a call that got this
    /// default gets it afresh; give the [`Call`](crate::Call) its own deadline to bound
    /// every attempt together.
    pub fn call_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.call_timeout = timeout.into();
        self
    }

    /// How long a connection may stay silent while calls wait for their replies before
    /// it is declared dead (default 30 s; `None` turns it off).
    ///
    /// It measures silence, not transfer: the clock runs only while a call that counts
    /// waits, and the server's signs of life restart it: a frame read, a byte read
    /// (over a [`Metered`](crate::Metered) IO, as [`TcpConnector`](crate::TcpConnector)
    /// frames), and bytes of a request the transport is still taking in (a large write
    /// over a slow link). With the crate's connectors on Linux (and a connector of
    /// your own that meters its socket with
    /// [`Metered::send_queue`](crate::Metered::send_queue)), the socket's send queue
    /// counts too: a request the kernel took whole, that the server is still reading,
    /// keeps the clock from running out while the queue shrinks. The queue shrinks in
    /// steps (a TCP window update, tens of KB), read halfway through a quiet spell and
    /// at its end: a server reading slower than about a step per half the timeout (a
    /// few KB/s with the default) is silence to it. A large reply or request over a
    /// slow link, or a multi-frame reply whose frames keep coming, never stalls; small
    /// requests or heartbeats that go out whole do not keep a server that never answers
    /// alive. Over a transport of your own without `Metered`, only frames read count.
    /// Calls made with an exemption
    /// ([`Call::no_stall_timeout`](crate::Call::no_stall_timeout): blocking commands) do
    /// not count, nor, in order mode, the calls queued behind one.
    ///
    /// When it fires, the connection closes and every call waiting on it fails as
    /// *may have executed*. A server that ignores some calls while it answers others is
    /// not silent: [`max_orphans`](Self::max_orphans) covers that case.
    pub fn stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Turns on the overload signal ([`Channel::overload`](crate::Channel::overload)):
    /// it goes `true` when the requests queued and not yet written weigh more than
    /// `high_water` bytes by `weigh` (usually the request's encoded length), and back to
    /// `false` once they weigh half of that, like skynet's write-buffer warning. It costs
    /// two atomic additions per request when on, nothing when off.
    ///
    /// ```
    /// # use socketchannel::Config;
    /// let config = Config::default().overload(1 << 20, |req: &Vec<u8>| req.len());
    /// ```
    pub fn overload<Req: 'static>(
        mut self,
        high_water: usize,
        weigh: impl Fn(&Req) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.overload = Some(Overload {
            high_water,
            weigh: Arc::new(move |req| req.downcast_ref::<Req>().map_or(0, &weigh)),
        });
        self
    }

    /// Push frames kept for the push receiver, at most (default 1024). Beyond that new
    /// push frames are dropped and counted in
    /// [`Counters::push_overflow`](crate::Counters::push_overflow): a slow push reader
    /// never blocks replies. Values below 1 count as 1.
    pub fn push_capacity(mut self, n: usize) -> Self {
        self.push_capacity = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// Frames one multi-frame reply (`request_n`, `request_until_final`, `stream`) may
    /// have, at most (default 65 536; values below 1 count as 1). A reply with more fails
    /// its call only, with [`Kind::Limit`](crate::Kind::Limit), *may have executed*; the
    /// rest of its frames are read and dropped, so no other caller notices. Exempt calls
    /// ([`Call::no_stall_timeout`](crate::Call::no_stall_timeout)) are held to it too.
    pub fn max_reply_frames(mut self, n: usize) -> Self {
        self.limits.frames = n.max(1);
        self
    }

    /// Bytes one multi-frame reply may weigh, by `weigh` (usually the frame's encoded
    /// length), at most. Off by default. Going over fails the call as
    /// [`max_reply_frames`](Self::max_reply_frames) does.
    ///
    /// ```
    /// # use socketchannel::Config;
    /// let config = Config::default().max_reply_bytes(64 << 20, |frame: &Vec<u8>| frame.len());
    /// ```
    pub fn max_reply_bytes<Resp: 'static>(
        mut self,
        max: usize,
        weigh: impl Fn(&Resp) -> usize + Send + Sync + 'static,
    ) -> Self {
        let weigh: WeighReply =
            Arc::new(move |frame| frame.downcast_ref::<Resp>().map_or(0, &weigh));
        self.limits.bytes = Some((max, weigh));
        self
    }

    /// Frames a [`ReplyStream`](crate::ReplyStream)'s reader may leave unread, at most
    /// (default 1024; values below 1 count as 1). A reader further behind fails its
    /// stream with [`Kind::Limit`](crate::Kind::Limit) after the frames it has; the
    /// connection reads on for everyone else.
    pub fn stream_buffer(mut self, n: usize) -> Self {
        self.limits.stream = n.max(1);
        self
    }

    /// A reconnecting channel's answer to a server that ignores some calls while it
    /// answers others (so the stall timer, which measures silence, never fires): when
    /// the connection is full (the in-flight limit, or no free session id) and at least
    /// this many of its waiting calls are *orphans* (their caller dropped its future or
    /// timed out), the connection is retired as [`Channel::change_host`] does: new calls
    /// go to a fresh connection, the old one finishes what it can within the drain
    /// timeout, and its ids die with it.
    ///
    /// `None` turns it off. The default is a quarter of what can wait at once (the
    /// in-flight limit, or the session id range when that is smaller) in session mode,
    /// and off in order mode, where a server cannot skip a call without breaking the
    /// order, so an orphan is only a slow reply (a limit set here applies to both). A
    /// channel over a fixed transport has nothing to retire to and ignores it.
    ///
    /// [`Channel::change_host`]: crate::Channel::change_host
    pub fn max_orphans(mut self, limit: Option<usize>) -> Self {
        self.orphans = limit.map_or(Orphans::Off, Orphans::Limit);
        self
    }

    /// The other half of the orphan rule ([`max_orphans`](Self::max_orphans)): a
    /// reconnecting channel also retires a connection whose oldest orphan has waited
    /// this long (default 60 s; `None` turns it off), full or not. In order mode an
    /// orphan that is never answered holds every reply behind it; in session mode it
    /// holds an id for good. The age is measured to within a quarter of itself, with no
    /// clock read per call.
    pub fn orphan_age(mut self, age: Option<Duration>) -> Self {
        self.orphan_age = age;
        self
    }

    /// The channel's name in its telemetry (default: none): the `channel` field of its
    /// connection task's `socketchannel` span and, with the `metrics` feature, the
    /// `channel` label of its metrics (see the crate docs' "Observability"). This is where
    /// a channel over a transport of one's own ([`Channel::with_config`],
    /// [`MuxLayer::config`]) gets its name; a builder channel takes it from
    /// [`Builder::name`], which wins over this.
    ///
    /// ```
    /// # use socketchannel::Config;
    /// let config = Config::default().name("sessions-db");
    /// ```
    ///
    /// [`Channel::with_config`]: crate::Channel::with_config
    /// [`MuxLayer::config`]: crate::MuxLayer::config
    /// [`Builder::name`]: crate::Builder::name
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Which calls the latency histogram times (feature `metrics`): one call in `n`,
    /// drawn at random (default 8; 1 times every call; 0 is taken as 1). Every call is still
    /// counted with its outcome; only `socketchannel_call_duration_seconds` is sampled.
    ///
    /// Timing a call reads the clock twice and hands the recorder a sample, which with
    /// metrics-exporter-prometheus costs more than the rest of the call's metrics
    /// together: at a million calls a second, one in eight keeps the histogram's
    /// quantiles (its `_count` and `_sum` are then an eighth of the calls').
    ///
    /// ```
    /// # use socketchannel::Config;
    /// let config = Config::default().latency_sampling(1);
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn latency_sampling(mut self, n: u32) -> Self {
        self.latency_sampling = n.max(1);
        self
    }
}
