//! Adaptive polling of a connection's socket while it waits for its
//! client, in the manner of QEMU's event loops (`poll-max-ns`).
//!
//! When a client sends its next request a few microseconds after its
//! last reply (queue depth 1, or a deep queue the server keeps up with),
//! trying the socket in a loop for a moment costs less than going to
//! sleep and being woken by the kernel, and it spares the client's send
//! the work of waking us. The polling window grows while waits are short
//! and shrinks to nothing after long ones, so a quiet connection costs
//! nothing. Only a connection alone on its event loop polls
//! (`placement`), so at most one per loop does; and only while its thread
//! has its CPU to itself. A thread preempted since it last polled shares
//! the CPU with threads that want it (on a small machine, often the
//! client it waits for), and spinning would take the CPU from them: the
//! window closes, and opens again from its smallest after a wait with no
//! preemption.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use super::placement::Placement;
use super::vectored::emptied;

/// The longest a connection polls before it sleeps, unless its export
/// says otherwise (`NbdExportConfig::poll_limit`).
pub const DEFAULT_POLL_LIMIT: Duration = Duration::from_micros(64);
/// The window after the first short sleep; each further one doubles it.
const FIRST_POLL_WINDOW: Duration = Duration::from_micros(4);

/// The polling state of one connection.
pub struct AdaptivePoll {
    placement: Placement,
    /// The widest the window gets, and the longest wait that counts as
    /// short; zero turns polling off.
    limit: Duration,
    window: Duration,
    /// When the current wait for the client began, if polling gave up.
    waiting_since: Option<Instant>,
    /// The thread's involuntary context switches when it last spun.
    preemptions: i64,
}

impl AdaptivePoll {
    pub fn new(placement: Placement, limit: Duration) -> AdaptivePoll {
        AdaptivePoll {
            placement,
            limit,
            window: Duration::ZERO,
            waiting_since: None,
            preemptions: involuntary_context_switches(),
        }
    }

    /// Runs `read`, which must not wait, until it finds input (or fails)
    /// or the window ends; `None` if the window ended or polling is not
    /// for now. Call it only when the connection waits for nothing but
    /// its client, and call [`AdaptivePoll::slept`] when the wait that
    /// follows a `None` is over.
    pub fn poll(
        &mut self,
        mut read: impl FnMut() -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        if self.limit.is_zero() || !self.placement.may_poll() {
            return None;
        }
        if self.window.is_zero() {
            self.waiting_since = Some(Instant::now());
            return None;
        }
        // Input already there needs no spinning, nor the question whether
        // spinning is fair.
        match read() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Some(done),
        }
        let start = Instant::now();
        self.waiting_since = Some(start);
        if self.preempted_since_last_spin(involuntary_context_switches()) {
            self.window = Duration::ZERO;
            return None;
        }
        let found = spin(start + self.window, read);
        if found.is_some() {
            self.waiting_since = None;
        }
        found
    }

    /// The connection slept until its client spoke: a short wait doubles
    /// the window, a long one halves it (one late request does not undo
    /// what a run of quick ones taught; a quiet client closes it after a
    /// few waits).
    pub fn slept(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.adapt(since.elapsed());
        }
    }

    /// Whether the thread was preempted since it last spun, given its
    /// count of involuntary context switches now.
    fn preempted_since_last_spin(&mut self, preemptions: i64) -> bool {
        preemptions != std::mem::replace(&mut self.preemptions, preemptions)
    }

    fn adapt(&mut self, waited: Duration) {
        let first = FIRST_POLL_WINDOW.min(self.limit);
        self.window = if waited <= self.limit {
            (self.window * 2).clamp(first, self.limit)
        } else if self.window > first {
            self.window / 2
        } else {
            Duration::ZERO
        };
    }
}

/// How often this thread was preempted (made to give up its CPU while it
/// could run).
fn involuntary_context_switches() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; on failure it stays
    // zeroed, which reads as no preemption.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_nivcsw
}

/// Runs `read` until it is not `WouldBlock` or `deadline` passes.
fn spin(
    deadline: Instant,
    mut read: impl FnMut() -> io::Result<usize>,
) -> Option<io::Result<usize>> {
    loop {
        match read() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Some(done),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// Polls once a future that never waits (its reads are non-blocking).
pub fn poll_now<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// A socket read without waiting and behind the event loop's back (its
/// readiness flags are only a hint: a later awaited read that finds
/// nothing simply waits for the next event). It notes whether the read
/// found the socket empty (nothing, or less than it asked for), which
/// the event loop is told so that its next read does not try in vain.
pub struct NonBlocking<'a> {
    socket: BorrowedFd<'a>,
    drained: bool,
}

impl<'a> NonBlocking<'a> {
    pub fn new(socket: BorrowedFd<'a>) -> NonBlocking<'a> {
        NonBlocking {
            socket,
            drained: false,
        }
    }

    /// Whether the last read emptied the socket's receive queue.
    pub fn drained(&self) -> bool {
        self.drained
    }
}

impl AsyncRead for NonBlocking<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: recv writes at most the length given into the unfilled,
        // writable part of the buffer; only what it reports is marked
        // filled.
        let wanted = buf.remaining();
        let n = unsafe {
            let unfilled = buf.unfilled_mut();
            libc::recv(
                self.socket.as_raw_fd(),
                unfilled.as_mut_ptr().cast(),
                unfilled.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.drained = e.kind() == io::ErrorKind::WouldBlock;
            return Poll::Ready(Err(e));
        }
        self.drained = emptied(n as usize, wanted);
        // SAFETY: recv initialised these `n` bytes.
        unsafe { buf.assume_init(n as usize) };
        buf.advance(n as usize);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_doubles_with_short_sleeps_and_halves_with_long_ones() {
        let mut poll = AdaptivePoll::new(Placement::alone(), DEFAULT_POLL_LIMIT);
        let short = Duration::from_micros(20);
        for expected in [4, 8, 16, 32, 64, 64] {
            poll.adapt(short);
            assert_eq!(poll.window, Duration::from_micros(expected));
        }
        let long = DEFAULT_POLL_LIMIT + Duration::from_micros(1);
        for expected in [32, 16, 8, 4, 0, 0] {
            poll.adapt(long);
            assert_eq!(poll.window, Duration::from_micros(expected));
        }
    }

    #[tokio::test]
    async fn a_preempted_thread_closes_the_window_and_does_not_spin() {
        let mut poll = AdaptivePoll::new(Placement::alone(), DEFAULT_POLL_LIMIT);
        poll.window = DEFAULT_POLL_LIMIT;
        poll.preemptions -= 1;
        let mut tries = 0;
        let found = poll.poll(|| {
            tries += 1;
            assert_eq!(tries, 1, "spun after a preemption");
            Err(io::ErrorKind::WouldBlock.into())
        });
        assert!(found.is_none());
        assert_eq!(poll.window, Duration::ZERO);
        // The count it saw is now the reference: with no preemption since,
        // the next poll spins.
        assert!(!poll.preempted_since_last_spin(poll.preemptions));
        assert!(poll.preempted_since_last_spin(poll.preemptions + 1));
    }

    #[tokio::test]
    async fn a_failed_poll_then_a_sleep_adapts_the_window() {
        let mut poll = AdaptivePoll::new(Placement::alone(), DEFAULT_POLL_LIMIT);
        assert!(poll
            .poll(|| Err(io::ErrorKind::WouldBlock.into()))
            .is_none());
        std::thread::sleep(DEFAULT_POLL_LIMIT * 2);
        poll.window = DEFAULT_POLL_LIMIT;
        poll.slept();
        assert_eq!(poll.window, DEFAULT_POLL_LIMIT / 2);
        // Only a wait that polling gave up on counts.
        poll.slept();
        assert_eq!(poll.window, DEFAULT_POLL_LIMIT / 2);
    }

    #[test]
    fn input_found_while_spinning_is_returned() {
        let mut tries = 0;
        let found = spin(Instant::now() + Duration::from_secs(60), || {
            tries += 1;
            match tries {
                3 => Ok(42),
                _ => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        assert_eq!(found.unwrap().unwrap(), 42);
        assert_eq!(tries, 3);
    }

    #[test]
    fn a_connection_on_the_shared_runtime_never_polls() {
        let mut poll = AdaptivePoll::new(Placement::Shared, DEFAULT_POLL_LIMIT);
        poll.window = DEFAULT_POLL_LIMIT;
        let found = poll.poll(|| Ok(1));
        assert!(found.is_none());
    }

    #[test]
    fn non_blocking_reads_see_data_and_would_block_and_note_an_emptied_socket() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let read = |len: usize| {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; len];
            let mut source = NonBlocking::new(theirs.as_fd());
            let read = poll_now(async { source.read(&mut buf).await });
            (read.map(|n| buf[..n].to_vec()), source.drained())
        };
        let (read_nothing, drained) = read(8);
        assert_eq!(read_nothing.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(drained);
        ours.write_all(b"abcdef").unwrap();
        // All it asked for: more may be waiting.
        let (exact, drained) = read(2);
        assert_eq!(exact.unwrap(), b"ab");
        assert!(!drained);
        // Less than it asked for: the socket is empty now.
        let (short, drained) = read(8);
        assert_eq!(short.unwrap(), b"cdef");
        assert!(drained);
        drop(ours);
        let (end, drained) = read(8);
        assert!(end.unwrap().is_empty());
        assert!(!drained, "end of file is not an empty queue");
    }

    #[tokio::test]
    async fn the_window_stays_within_the_exports_limit() {
        let limit = Duration::from_micros(10);
        let mut poll = AdaptivePoll::new(Placement::alone(), limit);
        for expected in [4, 8, 10, 10] {
            poll.adapt(Duration::from_micros(9));
            assert_eq!(poll.window, Duration::from_micros(expected));
        }
        // Longer than the limit is a long wait.
        poll.adapt(Duration::from_micros(11));
        assert_eq!(poll.window, Duration::from_micros(5));
    }

    #[tokio::test]
    async fn a_zero_limit_never_polls() {
        let mut poll = AdaptivePoll::new(Placement::alone(), Duration::ZERO);
        poll.window = DEFAULT_POLL_LIMIT;
        assert!(poll.poll(|| panic!("polled with polling off")).is_none());
        poll.slept();
        assert_eq!(poll.window, DEFAULT_POLL_LIMIT);
    }
}
