//! CPU-heavy work a request asks for (Markdown rendering, the blameless
//! check, password hashing) runs here: on a few threads of its own, never on
//! the async workers that serve ingest, OFREP and the engine. A request that
//! cannot start within [`QUEUE_WAIT`] gets 503 with `Retry-After` instead of
//! queueing without bound.
//!
//! Own threads rather than tokio's blocking pool: the allocator keeps memory
//! per thread, and argon2 takes 19 MiB a hash, so hashes spread over the
//! blocking pool's many threads kept 19 MiB on each (96 guesses at once:
//! +361 MiB although only four ran at a time). A fixed set of threads keeps
//! that to the workers' count.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::ApiError;

/// Text work (render, lint) running at once, process-wide.
pub const TEXT_WORKERS: usize = 2;
/// Password hashes running at once, process-wide (argon2 takes about 19 MiB
/// and a few tens of milliseconds each).
pub const HASH_WORKERS: usize = 4;
/// How long a request waits for a free worker before 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);

static TEXT: LazyLock<Pool> = LazyLock::new(|| Pool::new("firebreak-text", TEXT_WORKERS));
static HASH: LazyLock<Pool> = LazyLock::new(|| Pool::new("firebreak-hash", HASH_WORKERS));

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads, and as many permits: a job holding a permit always
/// has a free thread.
struct Pool {
    permits: Semaphore,
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    fn new(name: &str, workers: usize) -> Pool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for n in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a {name} worker thread"),
            }
        }
        Pool {
            permits: Semaphore::new(started),
            jobs,
        }
    }
}

/// Runs text work (render, lint) off the async workers.
pub async fn text<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    run(&TEXT, "rendering and checking drafts", f).await
}

/// Runs a password hash or check off the async workers.
pub async fn hash<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    run(&HASH, "checking passwords", f).await
}

async fn run<T: Send + 'static>(
    pool: &'static LazyLock<Pool>,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let busy = || ApiError::Backlogged {
        retry_after: 2,
        message: format!("busy {what}: every worker is taken; send again in a few seconds"),
    };
    let pool: &Pool = pool;
    let permit = match tokio::time::timeout(QUEUE_WAIT, pool.permits.acquire()).await {
        Ok(Ok(p)) => p,
        _ => return Err(busy()),
    };
    let (done, result) = tokio::sync::oneshot::channel();
    // The permit goes with the job: it is released when the work ends, not
    // when the request does (a client that hangs up cannot queue more work).
    let job: Job = Box::new(move || {
        let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
        drop(permit);
    });
    pool.jobs.send(job).map_err(|_| busy())?;
    let out = match result.await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(_)) => Err(ApiError::Internal(format!("{what}: the work panicked"))),
        Err(_) => Err(ApiError::Internal(format!("{what}: the worker went away"))),
    };
    out
}
