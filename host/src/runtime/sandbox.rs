//! What a guest can reach: nothing but its own memory, clocks and randomness.
//!
//! Each store gets a WASI context with no preopened directories, no
//! environment, no arguments and no sockets (wasmtime-wasi denies network
//! access unless it is granted). Its stdout and stderr are captured into a
//! bounded buffer that the host drains into its own log after every call,
//! tagged with the instance id, so a chatty or hostile guest can neither flood
//! the host log nor trap because its output pipe was full.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Most bytes of guest output kept per stream between two drains.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// Most lines of guest output logged per stream per call: a guest that
/// writes 16 KiB of newlines must not make 16,384 log events.
pub const OUTPUT_LINES: usize = 64;

/// The data every guest store carries.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub memory: MemoryCap,
    pub stdout: GuestOutput,
    pub stderr: GuestOutput,
    /// When the current call must stop; read by the epoch callback.
    pub deadline: std::time::Instant,
    /// When the guest last got a thread back after yielding at an epoch
    /// tick (or its call began); written by the yield's future.
    pub resumed: Arc<Moment>,
}

impl GuestState {
    pub fn new(memory_limit: usize) -> Self {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        GuestState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap::new(memory_limit),
            stdout,
            stderr,
            deadline: Instant::now(),
            resumed: Arc::new(Moment::at(Instant::now())),
        }
    }
}

/// An `Instant` that can be set and read through a shared reference without a
/// lock: nanoseconds since the first `Moment` was made. Every call sets one,
/// and an uncontended mutex per call was measurable.
#[derive(Debug, Default)]
pub struct Moment(AtomicU64);

impl Moment {
    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    pub fn at(at: Instant) -> Moment {
        let moment = Moment::default();
        moment.set(at);
        moment
    }

    pub fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(Self::base()).as_nanos();
        self.0
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn get(&self) -> Instant {
        Self::base() + std::time::Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The per-instance memory cap. It counts every linear memory of the instance
/// and remembers that the cap was hit, because a Rust guest that cannot grow
/// its memory aborts with an ordinary `unreachable` trap: without this flag an
/// out-of-memory guest would look like any other crash instead of a 507.
#[derive(Debug)]
pub struct MemoryCap {
    pub limit: usize,
    in_use: usize,
    pub hit: bool,
}

impl MemoryCap {
    fn new(limit: usize) -> Self {
        MemoryCap {
            limit,
            in_use: 0,
            hit: false,
        }
    }

    /// Bytes of linear memory the instance holds now.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.in_use - current + desired;
        if after > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A guest's stdout or stderr: a bounded buffer that drops what does not fit
/// and counts what it dropped.
#[derive(Clone, Default)]
pub struct GuestOutput(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// Whether `captured` may hold anything: the host drains both streams
    /// after every call, and almost every call prints nothing, so the drain
    /// reads this flag instead of taking two locks per request.
    written: AtomicBool,
    captured: Mutex<Captured>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl GuestOutput {
    /// Takes what the guest wrote since the last call: the text kept and how
    /// many bytes were dropped past [`OUTPUT_LIMIT`].
    pub fn take(&self) -> Option<(String, usize)> {
        // The guest writes on the thread that runs its call, which has
        // returned by the time the host drains; Acquire pairs with the
        // Release below for the case where it ran on another thread.
        if !self.0.written.load(Ordering::Acquire) {
            return None;
        }
        let mut captured = self.0.captured.lock().unwrap();
        self.0.written.store(false, Ordering::Relaxed);
        if captured.bytes.is_empty() && captured.dropped == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&captured.bytes).into_owned();
        let dropped = std::mem::take(&mut captured.dropped);
        captured.bytes.clear();
        Some((text, dropped))
    }

    fn write(&self, bytes: &[u8]) {
        let mut captured = self.0.captured.lock().unwrap();
        let room = OUTPUT_LIMIT.saturating_sub(captured.bytes.len());
        let kept = bytes.len().min(room);
        captured.bytes.extend_from_slice(&bytes[..kept]);
        captured.dropped += bytes.len() - kept;
        self.0.written.store(true, Ordering::Release);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    // A direct stream: the default adapter would spawn a task per stream.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: overflow is dropped, never reported as a failure the
        // guest would turn into a panic.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
