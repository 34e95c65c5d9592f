//! The shapes a call can take beyond "one request, one reply".

use std::fmt;

use tokio::time::Instant;

use super::reply::Shape;
use crate::mux::{Deadline, Envelope, Frames, Until, Waiter};
use crate::protocol::SessionId;

/// A call with options: what it writes (one frame, several, or nothing), how its reply
/// comes back (one frame, several, a stream, none), a caller-supplied session id, an
/// exemption from the stall timeout, and whether it may be retried after it was written.
///
/// Every [`Channel`](crate::Channel) method that takes a request takes a `Call` too; the
/// method decides the reply's shape. Through `tower`, `Channel` is a
/// `Service<Call<Req>>` whose response is a [`Reply`](crate::Reply) of the shape the
/// call asked for, so `ServiceBuilder` layers wrap every shape.
///
/// ```
/// use socketchannel::{Call, Replies};
///
/// let blocking = Call::new("BLPOP jobs 0").no_stall_timeout();
/// let greeting: Call<&str> = Call::read();
/// let split = Call::parts(vec!["part 1", "part 2"]);
/// let mine = Call::new("ping").id(7u16);
/// let pipeline = Call::new("GET a\r\nGET b").replies(Replies::Count(2));
/// let listing = Call::new("LIST").stream(Replies::UntilFinal);
/// let quit = Call::new("QUIT").no_reply();
/// let read = Call::new("GET a").idempotent();
/// ```
pub struct Call<Req> {
    pub(crate) frames: Frames<Req>,
    pub(crate) id: Option<u64>,
    pub(crate) exempt: bool,
    pub(crate) shape: Shape,
    pub(crate) deadline: Option<Deadline>,
    /// Set by [`Call::idempotent`]: copies the frames, so a retry has them even after
    /// they were written.
    copy: Option<CopyFrames<Req>>,
    /// A copy made for a retry without the frames ([`Call::retry_copy`]): they must be
    /// put back ([`Call::refill`]) before it is sent.
    pub(crate) hollow: bool,
}

type CopyFrames<Req> = fn(&Frames<Req>) -> Frames<Req>;

impl<Req> fmt::Debug for Call<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frames = match &self.frames {
            Frames::None if self.hollow => "hollow",
            Frames::None => "none",
            Frames::One(_) => "one",
            Frames::Many(_) => "parts",
        };
        f.debug_struct("Call")
            .field("frames", &frames)
            .field("id", &self.id)
            .field("exempt", &self.exempt)
            .field("shape", &self.shape)
            .field("deadline", &self.deadline)
            .field("idempotent", &self.copy.is_some())
            .finish()
    }
}

impl<Req> Call<Req> {
    #[inline]
    fn of(frames: Frames<Req>) -> Self {
        Call {
            frames,
            id: None,
            exempt: false,
            shape: Shape::One,
            deadline: None,
            copy: None,
            hollow: false,
        }
    }

    /// A call that writes one frame.
    #[inline]
    pub fn new(req: Req) -> Self {
        Call::of(Frames::One(req))
    }

    /// A call that writes several frames back to back; no other call's frame comes
    /// between them. Its reply is matched as one. If it fails unsent,
    /// [`Error::take_request`](crate::Error::take_request) gives back the `Vec<Req>`.
    pub fn parts(parts: Vec<Req>) -> Self {
        Call::of(Frames::Many(parts))
    }

    /// A call that writes nothing and waits for the next reply (a server greeting, a
    /// message a subscription brings).
    ///
    /// In order mode it takes the next FIFO slot, as a request would. In session mode it
    /// takes the next frame that carries no session id.
    pub fn read() -> Self {
        Call::of(Frames::None)
    }

    /// Session mode: use this session id instead of one the channel allocates. The call
    /// fails with [`Kind::IdInUse`](crate::Kind::IdInUse) if a call with this id is still
    /// waiting, and with [`Kind::Unsupported`](crate::Kind::Unsupported) in order mode.
    pub fn id(mut self, id: impl SessionId) -> Self {
        self.id = Some(id.into_u64());
        self
    }

    /// Exempts the call from the stall timeout (a blocking command such as `BLPOP`).
    pub fn no_stall_timeout(mut self) -> Self {
        self.exempt = true;
        self
    }

    /// Fails the call with [`Kind::Timeout`](crate::Kind::Timeout) if it is not answered
    /// by `at`: still queued then, it is never written (*not sent*, at any phase of the
    /// channel: connecting, backing off, waiting for room); written, it fails *may have
    /// executed*, its slot or session id taken until its reply comes. It replaces the
    /// channel's [`Config::call_timeout`](crate::Config::call_timeout). A copy a retry
    /// makes keeps it, so it bounds every attempt together (and
    /// [`RetryNotSent`](crate::RetryNotSent) never retries a timeout).
    /// It does not bound what comes before an attempt is queued: tower's `Retry` waits
    /// for the channel's `poll_ready`, which a connect pass keeps `Pending` up to the
    /// connect and handshake timeouts (Contract 2); for a bound on the whole, put a
    /// `tower::timeout::Timeout` outside the `Retry`.
    ///
    /// The connection task keeps every deadline in one heap with one timer, so a
    /// deadline costs far less than a `tower::timeout` per call, and its error says
    /// whether the call was sent. A `std::time::Instant` converts.
    #[inline]
    pub fn deadline(mut self, at: impl Into<Instant>) -> Self {
        self.deadline = Some(Deadline::At(at.into()));
        self
    }

    /// [`deadline`](Self::deadline) `timeout` after the channel takes the call in
    /// (through [`Service::call`](tower::Service::call), or as a
    /// [`Channel`](crate::Channel) method is called), not after it is sent.
    ///
    /// A channel that is writing takes a call in at its connection task's next pass,
    /// which reads the clock once for all the calls it takes, so a timeout costs no
    /// clock read per call (a `deadline` made from `Instant::now()` costs one: about
    /// 20 ns, a few per cent of a call); one that cannot be written is taken in to be
    /// timed at the task's next poll. A call through a channel's or a pool's async
    /// methods is stamped as the method is called, and a retry's copy as it is made. So
    /// the deadline comes `timeout` after
    /// `call` (to within the microseconds of one write pass, whose clock a call taken in
    /// it shares) and, while the channel can write, at most one pass of its connection
    /// task later. The time before the channel (in `poll_ready`, in layers in front of it)
    /// is not counted: bound that with `deadline`.
    #[inline]
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.deadline = Some(Deadline::After(timeout));
        self
    }

    /// Through `Service<Call<Req>>`: the reply is several frames, collected into
    /// [`Reply::Many`](crate::Reply::Many) (as [`Channel::request_n`] and
    /// [`Channel::request_until_final`] do).
    ///
    /// [`Channel::request_n`]: crate::Channel::request_n
    /// [`Channel::request_until_final`]: crate::Channel::request_until_final
    pub fn replies(mut self, replies: Replies) -> Self {
        self.shape = Shape::Collect(replies.into());
        self
    }

    /// Through `Service<Call<Req>>`: the reply frames come one by one, through the
    /// [`ReplyStream`](crate::ReplyStream) of [`Reply::Stream`](crate::Reply::Stream)
    /// (as [`Channel::stream`](crate::Channel::stream) does).
    ///
    /// The service's future resolves with the first frame in hand (or with the call's
    /// error, so a retry layer sees a call that failed *not sent*); the stream then
    /// yields that frame and the rest.
    pub fn stream(mut self, replies: Replies) -> Self {
        self.shape = Shape::Stream(replies.into());
        self
    }

    /// Through `Service<Call<Req>>`: fire-and-forget, a request the server never
    /// answers; resolves with [`Reply::Sent`](crate::Reply::Sent) once written (as
    /// [`Channel::send`](crate::Channel::send) does).
    pub fn no_reply(mut self) -> Self {
        self.shape = Shape::Send;
        self
    }

    /// Marks the call as safe to run twice (a read): [`RetryNotSent`](crate::RetryNotSent)
    /// retries it after it failed *may have executed* too (its connection was lost while
    /// it was written), not only after *not sent*. It keeps a copy of the frames for that.
    pub fn idempotent(mut self) -> Self
    where
        Req: Clone,
    {
        self.copy = Some(copy_frames::<Req>);
        self
    }

    /// Is the call marked [`idempotent`](Self::idempotent)?
    pub fn is_idempotent(&self) -> bool {
        self.copy.is_some()
    }

    /// A copy to retry with: a full one for an idempotent call, otherwise one without
    /// the frames, which [`refill`](Self::refill) completes from a *not sent* error.
    pub(crate) fn retry_copy(&self) -> Self {
        let (frames, hollow) = match self.copy {
            Some(copy) => (copy(&self.frames), false),
            None => (Frames::None, !matches!(self.frames, Frames::None)),
        };
        Call {
            frames,
            id: self.id,
            exempt: self.exempt,
            shape: self.shape,
            // Counted from now, if from when taken in: every attempt within it.
            deadline: self.deadline.map(Deadline::fixed),
            copy: self.copy,
            hollow,
        }
    }

    /// A read: it writes nothing (and is no hollow copy).
    pub(crate) fn is_read(&self) -> bool {
        matches!(self.frames, Frames::None) && !self.hollow
    }

    /// Undoes a [`refill`](Self::refill) whose retry did not happen: the error hands
    /// the request back again.
    pub(crate) fn unfill(&mut self, err: &mut crate::Error)
    where
        Req: Send + 'static,
    {
        if self.copy.is_some() {
            return;
        }
        let frames = std::mem::replace(&mut self.frames, Frames::None);
        if let Some(req) = frames.into_any() {
            err.put_request(req);
            self.hollow = true;
        }
    }

    /// The call as the intake carries it, its outcome going to `waiter`. A hollow copy
    /// (never refilled) is failed *not sent*, [`Kind::Unsupported`](crate::Kind::Unsupported),
    /// on every path: sent as it is, it would be a read and take another call's reply.
    #[inline]
    pub(crate) fn into_envelope<Resp>(self, waiter: Waiter<Resp>) -> Option<Envelope<Req, Resp>>
    where
        Req: Send + 'static,
    {
        if self.hollow {
            Envelope::new(self.frames, waiter).fail_unsent(crate::error::Kind::Unsupported, None);
            return None;
        }
        Some(self.envelope(waiter))
    }

    /// [`into_envelope`](Self::into_envelope) for a call known not to be hollow: built
    /// where it is used, with no `Option` to move it through (the per-call path).
    #[inline(always)]
    pub(crate) fn envelope<Resp>(self, waiter: Waiter<Resp>) -> Envelope<Req, Resp>
    where
        Req: Send + 'static,
    {
        let mut envelope = Envelope::new(self.frames, waiter);
        envelope.id = self.id;
        envelope.exempt = self.exempt;
        envelope.deadline = self.deadline;
        envelope
    }

    /// Puts back the frames of a hollow copy; false when there were none to put back.
    pub(crate) fn refill(&mut self, err: &mut crate::Error) -> bool
    where
        Req: 'static,
    {
        if !self.hollow {
            return true;
        }
        // A hollow copy was made from one frame or several; the error gives back what
        // the call was given as.
        if let Some(req) = err.take_request::<Req>() {
            self.frames = Frames::One(req);
        } else if let Some(parts) = err.take_request::<Vec<Req>>() {
            self.frames = Frames::Many(parts);
        } else {
            return false;
        }
        self.hollow = false;
        true
    }
}

fn copy_frames<Req: Clone>(frames: &Frames<Req>) -> Frames<Req> {
    match frames {
        Frames::None => Frames::None,
        Frames::One(req) => Frames::One(req.clone()),
        Frames::Many(parts) => Frames::Many(parts.clone()),
    }
}

/// Anything a call can be made from: a request, or a [`Call`].
pub trait IntoCall<Req> {
    /// Makes the call.
    fn into_call(self) -> Call<Req>;
}

impl<Req> IntoCall<Req> for Req {
    fn into_call(self) -> Call<Req> {
        Call::new(self)
    }
}

impl<Req> IntoCall<Req> for Call<Req> {
    fn into_call(self) -> Call<Req> {
        self
    }
}

/// How many frames make a reply, for [`Channel::stream`](crate::Channel::stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// Exactly this many.
    Count(usize),
    /// Frames until one that [`Protocol::is_final`](crate::Protocol::is_final) marks.
    UntilFinal,
}

impl From<Replies> for Until {
    fn from(r: Replies) -> Until {
        match r {
            Replies::Count(n) => Until::Count(n),
            Replies::UntilFinal => Until::Final,
        }
    }
}
