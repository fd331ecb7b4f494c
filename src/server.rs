//! The HTTP server loop: accepts TCP connections and serves each with
//! hyper's HTTP/1.1, under limits that keep slow or idle clients from
//! holding the process.
//!
//! - Header read timeout (`HEADER_READ_TIMEOUT_SECONDS`): a connection that
//!   has begun a request, or just opened, and has not sent the whole request
//!   head within it is closed. Trickling a header byte at a time buys
//!   nothing.
//! - Keep-alive idle timeout (`KEEP_ALIVE_TIMEOUT_SECONDS`): a connection
//!   that has finished its responses and sends nothing for this long is
//!   closed. It is longer than the idle timeout of the load balancers in
//!   front (typically 60 s), so they close first and never send a request
//!   on a connection the service is closing.
//! - Connection cap (`MAX_CONNECTIONS`): past it, a new connection is
//!   accepted and closed at once (counted), rather than left waiting in
//!   the listen queue: a client, or the load balancer, learns at once to
//!   try elsewhere.
//!
//! hyper's own `header_read_timeout` counts the idle time between requests
//! as header time, so it cannot tell a trickled header from an idle
//! keep-alive connection; the two timeouts are kept here instead, from the
//! phase of each connection ([`Activity`]): header (from the connection's
//! first byte, or its opening, to the request being dispatched), busy (a
//! request in flight, until its response body is sent: no limit here; the
//! router's request timeout bounds handlers, and streamed answers may
//! last), idle (after a response). A connection costs one small
//! allocation and a timer beside hyper's own state: no buffers are added.
//!
//! Shutdown: on the signal, the listener closes, idle connections close and
//! busy ones finish their request; whatever is still open after
//! `SHUTDOWN_GRACE_SECONDS` is cut.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, LazyLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request},
    response::Response,
    Router,
};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The server's limits, from `Config`.
#[derive(Clone, Copy, Debug)]
pub struct ServerSettings {
    /// Connections the kernel queues for `accept` (`LISTEN_BACKLOG`; the
    /// kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// Connections open at once; must stay below the process's file
    /// descriptor limit, with room for the stores' connections.
    pub max_connections: usize,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            backlog: 4096,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_connections: 50_000,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// A listener on `addr` with a listen queue of `backlog`.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted server binds again at once, past the old one's TIME_WAITs.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

struct ConnectionMetrics {
    open: metrics::Gauge,
    refused: metrics::Counter,
    header_timeouts: metrics::Counter,
    idle_timeouts: metrics::Counter,
}

static METRICS: LazyLock<ConnectionMetrics> = LazyLock::new(|| ConnectionMetrics {
    open: metrics::gauge!("flashsale_connections_open"),
    refused: metrics::counter!("flashsale_connections_refused_total"),
    header_timeouts: metrics::counter!("flashsale_connections_timed_out_total", "phase" => "header"),
    idle_timeouts: metrics::counter!("flashsale_connections_timed_out_total", "phase" => "idle"),
});

/// Serves `app` on `listener` until `shutdown` completes, then drains the
/// connections (see the module's documentation). Each request carries the
/// peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(&err).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            METRICS.refused.increment(1);
            drop(stream);
            continue;
        };
        // Answers are small and written whole: no reason to hold them back.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            settings,
            slot,
            graceful.clone(),
            hard.clone(),
        ));
    }
    drop(listener);
    graceful.cancel();
    let open = settings.max_connections - slots.available_permits();
    tracing::info!(connections = open, "draining connections");
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(settings.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let open = settings.max_connections - slots.available_permits();
        tracing::warn!(
            connections = open,
            grace_seconds = settings.shutdown_grace.as_secs(),
            "connections still open after the shutdown grace period: closing them"
        );
        hard.cancel();
    }
}

/// Out of file descriptors (or memory) is passing: wait a little rather
/// than spin on `accept`. A connection reset before it was accepted is the
/// client's business.
async fn accept_failed(err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    static WARNING: crate::telemetry::Rarely =
        crate::telemetry::Rarely::every(Duration::from_secs(60));
    if WARNING.now() {
        tracing::warn!(error = %err, "accept failed (file descriptor limit?); retrying");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The origin of [`millis`]: the process's first use of this clock.
static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(*BASE).as_millis() as u64
}

fn instant(millis: u64) -> Instant {
    *BASE + Duration::from_millis(millis)
}

const HEADER: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// A connection's phase and since when (milliseconds of [`millis`]).
/// Written from the connection's own task only (its reads, its service
/// calls, its response bodies); atomics because the task may move between
/// threads.
struct Activity {
    phase: AtomicU8,
    since: AtomicU64,
}

impl Activity {
    fn enter(&self, phase: u8) {
        self.since.store(millis(Instant::now()), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// When the current phase runs out, and which timeout that is; `None`
    /// while a request is in flight.
    fn deadline(&self, settings: &ServerSettings) -> Option<(Instant, u8)> {
        let phase = self.phase.load(Ordering::Relaxed);
        let limit = match phase {
            HEADER => settings.header_read_timeout,
            IDLE => settings.keep_alive_timeout,
            _ => return None,
        };
        let since = instant(self.since.load(Ordering::Relaxed));
        Some((since + limit, phase))
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: ServerSettings,
    _slot: OwnedSemaphorePermit,
    graceful: CancellationToken,
    hard: CancellationToken,
) {
    METRICS.open.increment(1.0);
    let activity = Arc::new(Activity {
        phase: AtomicU8::new(HEADER),
        since: AtomicU64::new(millis(Instant::now())),
    });
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let service = ConnectionService {
        app,
        peer,
        activity: activity.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are kept here (module documentation), not by hyper.
    builder.header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut armed: Option<Instant> = None;
    let mut draining = pin!(graceful.cancelled());
    let mut cut = pin!(hard.cancelled());
    let mut asked_to_close = false;
    std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !asked_to_close && draining.as_mut().poll(cx).is_ready() {
            asked_to_close = true;
            conn.as_mut().graceful_shutdown();
            // Closing an idle connection needs another turn of it.
            cx.waker().wake_by_ref();
        }
        // The phase may have changed while hyper ran: arm the timer for it.
        if let Some((deadline, phase)) = activity.deadline(&settings) {
            if deadline <= Instant::now() {
                match phase {
                    HEADER => METRICS.header_timeouts.increment(1),
                    _ => METRICS.idle_timeouts.increment(1),
                }
                return Poll::Ready(());
            }
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline);
                armed = Some(deadline);
            }
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    })
    .await;
    // Dropping the connection closes the socket.
    METRICS.open.decrement(1.0);
}

/// The socket, noting when a byte of a new request head arrives on an idle
/// connection.
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.activity.phase.load(Ordering::Relaxed) == IDLE {
            self.activity.enter(HEADER);
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router, called for each request of one connection.
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.activity.enter(BUSY);
        let busy = Busy(self.activity.clone());
        let mut req: Request = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let app = self.app.clone();
        Box::pin(async move {
            let res: Response = match app.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            Ok(res.map(|body| TrackedBody { body, _busy: busy }))
        })
    }
}

/// Held while a request is in flight: dropped with its response's body
/// (sent, or abandoned), which makes the connection idle.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.enter(IDLE);
    }
}

/// A response body that keeps its connection busy until it is dropped.
pub struct TrackedBody {
    body: Body,
    _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
