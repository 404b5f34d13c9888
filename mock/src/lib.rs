//! etlify-mock: an in-memory emulation of the HubSpot CRM v3 objects API and v4
//! associations (plus `/__mock` admin endpoints) for etlify's end-to-end tests, demo and
//! benchmarks.
//!
//! Run it as the `etlify-mock` binary, or in-process with [`MockServer::start`].

pub mod admin;
mod association_store;
mod associations;
mod batch;
mod clock;
mod control;
pub mod errors;
pub mod faults;
mod hubspot;
mod query;
mod ratelimit;
mod render;
mod reqlog;
mod search;
mod server;
mod state;

use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use axum::Router;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use hubspot::MAX_BATCH_INPUTS;

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// When set, only this bearer token is accepted; otherwise any non-empty one.
    pub token: Option<String>,
    /// Enforced rolling limit `(max, interval_ms)`; `None` only reports headers (190/10 s).
    pub rate_limit: Option<(u64, u64)>,
    /// Log every API request to stderr.
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            token: None,
            rate_limit: None,
            verbose: false,
        }
    }
}

/// Shared server state. The store and the control plane have separate locks so admission
/// bookkeeping never waits behind a batch write, and both are held only briefly.
pub struct App {
    store: Mutex<state::Store>,
    control: Mutex<control::Control>,
    inflight: AtomicU64,
    token: Option<String>,
    verbose: bool,
}

impl App {
    pub fn new(config: &Config) -> Self {
        let limit = match config.rate_limit {
            Some((max, interval_ms)) => ratelimit::Limit {
                max,
                interval_ms: interval_ms.max(1),
                enforced: true,
                daily: None,
            },
            None => ratelimit::Limit::default(),
        };
        App {
            store: Mutex::new(state::Store::default()),
            control: Mutex::new(control::Control::new(limit)),
            inflight: AtomicU64::new(0),
            token: config.token.clone().filter(|t| !t.is_empty()),
            verbose: config.verbose,
        }
    }
}

/// Locks, shrugging off poisoning: a panicked handler must not take the whole mock down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/__mock/health", get(admin::health))
        .route("/__mock/reset", post(admin::reset))
        .route("/__mock/objects/{t}", get(admin::objects))
        .route("/__mock/associations/{from}/{to}", get(admin::associations))
        .route("/__mock/requests", get(admin::requests))
        .route("/__mock/stats", get(admin::stats))
        .route(
            "/__mock/faults",
            put(admin::put_faults).get(admin::get_faults),
        )
        .fallback(server::api)
        .with_state(app)
}

/// The runtime the mock runs on: two workers, as the benchmarks box has two cores.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("etlify-mock")
        .enable_all()
        .build()
}

/// Serves until `shutdown` resolves. TCP_NODELAY is set on every accepted socket: without it
/// small keep-alive responses can sit ~40 ms in Nagle/delayed-ACK and cap throughput.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Arc::new(App::new(config));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = shutdown => {}
    }
    // Graceful shutdown waits for open connections; idle keep-alive clients or an injected
    // hang could hold it forever, so allow a short grace period and then stop regardless.
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    Ok(())
}

/// A mock running in-process on its own thread and runtime; stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    pub fn start(config: Config) -> io::Result<MockServer> {
        let listener = std::net::TcpListener::bind((config.bind, config.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = runtime()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("etlify-mock-main".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("listener from std");
                    let _ = serve(listener, &config, async {
                        let _ = stopped.await;
                    })
                    .await;
                });
            })?;
        Ok(MockServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
