//! Liveness of the worker loops, for `GET /live`.
//!
//! Each loop ([`crate::every`]) records when it last finished a step,
//! whether the step succeeded or failed: a failing step (a store that
//! answers with an error) still shows a loop that turns. A loop is stalled
//! when no step has finished for longer than two of its intervals plus
//! `WORKER_STEP_TIMEOUT_SECONDS`: longer than a healthy loop can take, since
//! a step is abandoned at that timeout and the next tick follows at most an
//! interval later. Stalled loops (a store that accepts commands and never
//! answers, a task blocked, a loop that ended) make `/live` answer 503
//! naming them, so the orchestrator restarts the process.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

/// One loop's record.
pub struct Heartbeat {
    name: &'static str,
    /// How long the loop may go without finishing a step.
    allowed: Duration,
    origin: Instant,
    /// When the last step finished, in milliseconds since `origin`.
    last_ms: AtomicU64,
}

impl Heartbeat {
    /// A step finished now.
    pub fn beat(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last step finished (or since the loop started).
    fn silent_for(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Every loop of the process.
#[derive(Default)]
pub struct Heartbeats {
    loops: Mutex<Vec<Arc<Heartbeat>>>,
}

/// A loop that has not finished a step in time.
#[derive(Debug, PartialEq, Eq)]
pub struct Stalled {
    pub worker: &'static str,
    pub silent_for: Duration,
}

impl Heartbeats {
    /// Registers the loop `name`, stepping every `every`, each step
    /// abandoned after `limit`; counts from now.
    pub fn add(&self, name: &'static str, every: Duration, limit: Duration) -> Arc<Heartbeat> {
        let beat = Arc::new(Heartbeat {
            name,
            allowed: every * 2 + limit,
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        if let Ok(mut loops) = self.loops.lock() {
            loops.push(beat.clone());
        }
        beat
    }

    /// The loops that have not finished a step in time.
    pub fn stalled(&self) -> Vec<Stalled> {
        let Ok(loops) = self.loops.lock() else {
            return Vec::new();
        };
        loops
            .iter()
            .filter_map(|b| {
                let silent_for = b.silent_for();
                (silent_for > b.allowed).then_some(Stalled {
                    worker: b.name,
                    silent_for,
                })
            })
            .collect()
    }

    /// `200 {"status": "live"}`, or `503` with a problem+json body naming
    /// each stalled loop.
    pub fn response(&self) -> Response {
        let stalled = self.stalled();
        if stalled.is_empty() {
            return axum::Json(serde_json::json!({ "status": "live" })).into_response();
        }
        let names: Vec<&str> = stalled.iter().map(|s| s.worker).collect();
        let body = serde_json::json!({
            "type": "/problems/worker_stalled",
            "title": "Service Unavailable",
            "status": 503,
            "code": "worker_stalled",
            "detail": format!("no step finished in time: {}", names.join(", ")),
            "stalled": stalled
                .iter()
                .map(|s| serde_json::json!({
                    "worker": s.worker,
                    "silent_seconds": s.silent_for.as_secs(),
                }))
                .collect::<Vec<_>>(),
        });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}
