//! Connections, HTTP/1 and gRPC (HTTP/2) alike: accept them within the
//! connection cap, serve each with hyper under the idle and keep-alive
//! limits, and drain them all on shutdown. What an HTTP request does is in
//! [`crate::edge::http`], what a gRPC call does in [`crate::edge::grpc`]; what every
//! request shares is in [`crate::edge::app`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::codegen::Service as _;

use crate::edge::app::{App, Plane, Refused};
use crate::edge::grpc;
use crate::edge::http::handle;

/// Serves HTTP until `shutdown` completes, then stops accepting, lets
/// in-flight and queued requests finish for up to `graceful_timeout`, and
/// returns. The public plane shares `--max-connections` with gRPC; the
/// admin plane has a cap of its own, so a busy host can still be managed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    plane: Plane,
    shutdown: impl Future<Output = ()>,
) {
    let cap = match plane {
        Plane::Admin => Arc::new(Semaphore::new(app.config.max_connections)),
        Plane::Public { .. } => Arc::clone(&app.connections),
    };
    accept(listener, app, cap, Protocol::Http(plane), shutdown).await;
}

/// Serves the gRPC service (`--grpc-bind`) as [`serve`] serves HTTP, on
/// the same connection cap, limits and shutdown. `admin` says whether it
/// also serves the repository calls (not when `--admin-bind` moves them).
pub async fn serve_grpc(
    listener: TcpListener,
    app: Arc<App>,
    admin: bool,
    shutdown: impl Future<Output = ()>,
) {
    let service = grpc::service(Arc::clone(&app), admin);
    let cap = Arc::clone(&app.connections);
    accept(listener, app, cap, Protocol::Grpc(service), shutdown).await;
}

/// What a listener's connections speak.
#[derive(Clone)]
enum Protocol {
    /// HTTP/1.1, the routes of a plane.
    Http(Plane),
    /// HTTP/2, the gRPC service.
    Grpc(grpc::Server),
}

async fn accept(
    listener: TcpListener,
    app: Arc<App>,
    connections: Arc<Semaphore>,
    protocol: Protocol,
    shutdown: impl Future<Output = ()>,
) {
    // Tells every connection to finish its current request and close.
    let (stop, stopping) = watch::channel(false);
    // Each connection task holds a sender; when all are dropped, all are done.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        // Past the cap, new connections wait in the kernel backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!("connection from {peer}");
                    stream
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            app: Arc::clone(&app),
            protocol: protocol.clone(),
            stopping: stopping.clone(),
            _permit: permit,
            _done: done.clone(),
        };
        tokio::spawn(connection.serve(stream));
    }

    app.stop_accepting();
    drop(listener);
    let _ = stop.send(true);
    drop(done);
    tracing::info!(
        "shutting down: no new connections; waiting up to {:?} for in-flight requests",
        app.config.graceful_timeout
    );
    tokio::select! {
        _ = all_done.recv() => tracing::info!("all requests finished; exiting"),
        () = tokio::time::sleep(app.config.graceful_timeout) => {
            tracing::warn!("graceful timeout passed with requests still in flight; exiting anyway")
        }
    }
}

/// One client connection, served until the client leaves, it idles past
/// `--keep-alive`, or shutdown asks it to finish.
struct Connection {
    app: Arc<App>,
    protocol: Protocol,
    stopping: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        // Responses are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(stream);
        let requests = Arc::clone(&activity);
        match self.protocol.clone() {
            Protocol::Http(plane) => {
                let app = Arc::clone(&self.app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    let busy = requests.begin();
                    async move {
                        // A refusing drain's `Err` makes hyper close the
                        // connection without an answer.
                        let response = handle(&app, plane, request).await;
                        drop(busy);
                        response
                    }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    // Slow headers are cut off by the idle check below, not by
                    // hyper's header-read timer, which costs a timer-wheel
                    // update per request.
                    .header_read_timeout(None)
                    .keep_alive(true)
                    .serve_connection(io, service);
                self.watch(connection, &activity, |c| c.graceful_shutdown())
                    .await;
            }
            Protocol::Grpc(grpc) => {
                let app = Arc::clone(&self.app);
                let service = service_fn(move |request: Request<Incoming>| {
                    let mut grpc = grpc.clone();
                    let busy = requests.begin();
                    let access = app
                        .config
                        .access_log
                        .then(|| (Instant::now(), request.uri().path().to_owned()));
                    // The body's share of --body-budget, kept until the
                    // call is answered (see grpc::Bounded).
                    let share = grpc::Share::default();
                    let infers = grpc::is_infer(request.uri().path());
                    let request = request
                        .map(|body| grpc::Bounded::new(body, Arc::clone(&app), Arc::clone(&share)));
                    let app = Arc::clone(&app);
                    async move {
                        // Inference passes the same gate as over HTTP: a
                        // refusing drain turns it away (UNAVAILABLE, which
                        // gRPC clients and balancers retry elsewhere), and
                        // it counts as in flight from its first byte, so a
                        // drain waits for it.
                        let _admitted = match infers.then(|| app.admit_inference()) {
                            Some(Err(Refused)) => return Ok(grpc::refused()),
                            Some(Ok(admitted)) => Some(admitted),
                            None => None,
                        };
                        let response = grpc.call(request).await;
                        drop(share);
                        drop(busy);
                        if let (Some((started, path)), Ok(response)) = (access, &response) {
                            crate::edge::access::log_grpc(&path, response, started);
                        }
                        response
                    }
                });
                let connection = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, service);
                self.watch(connection, &activity, |c| c.graceful_shutdown())
                    .await;
            }
        }
    }

    /// Drives a connection until the client leaves, it idles past
    /// `--keep-alive`, or shutdown asks it to finish (an HTTP/2 connection
    /// then sends GOAWAY and finishes the calls it has).
    async fn watch<C>(
        mut self,
        connection: C,
        activity: &Activity,
        graceful_shutdown: fn(Pin<&mut C>),
    ) where
        C: Future<Output = hyper::Result<()>>,
    {
        tokio::pin!(connection);
        // Between responses a connection is idle, whether the client says
        // nothing (keep-alive) or trickles the next request's headers
        // (slowloris): either way it may last the shorter of the two limits.
        let idle_limit = self
            .app
            .config
            .keep_alive
            .min(self.app.config.header_timeout);
        let mut closing = false;
        // Checks every quarter of the limit; four quiet checks in a row
        // (no request in flight, none finished since the check before) mean
        // it has been idle for at least the limit.
        let mut quiet_checks = 0;
        let mut finished = activity.finished();
        loop {
            tokio::select! {
                // The connection first: it is what wakes this task on almost
                // every poll, and an unbiased select draws a random order.
                biased;
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!("connection ended with an error: {err}");
                    }
                    return;
                }
                _ = self.stopping.changed(), if !closing => {
                    closing = true;
                    graceful_shutdown(connection.as_mut());
                }
                () = tokio::time::sleep(idle_limit / 4), if !closing => {
                    let now_finished = activity.finished();
                    if activity.in_flight() || now_finished != finished {
                        quiet_checks = 0;
                        finished = now_finished;
                    } else {
                        quiet_checks += 1;
                    }
                    if quiet_checks >= 4 {
                        // Closes an idle connection at once; one that is
                        // half-way through a request's headers waits for
                        // them, so it gets one more idle period, then is cut.
                        graceful_shutdown(connection.as_mut());
                        if tokio::time::timeout(idle_limit, connection.as_mut()).await.is_err() {
                            tracing::debug!("closed a connection that sent its headers too slowly");
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Whether a connection has a request in flight, and how many it finished.
/// A count rather than the time of the last one: a request then costs two
/// atomic adds, not a lock and a clock read.
struct Activity {
    in_flight: AtomicUsize,
    finished: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
