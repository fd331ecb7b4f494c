//! The buyer's queue as server-sent events: the status at once, then on
//! every change, until a final one (admitted, sold out, expired). The
//! following itself, and why it costs Redis one call per sale rather than
//! one per buyer, is [`crate::push`].

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::header,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use chrono::Utc;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    or_frozen,
    queue::{render, QueueStatus},
    AppState, AuthUser, ClientAddr, Path,
};
use crate::{
    error::{ApiError, ApiResult, Problem},
    ids::SaleId,
    limits::Action,
    push::{self, Follower, Refresh, StreamSlot},
    queue::{self, Standing},
    tokens::Identity,
};

/// A comment line this often keeps proxies and load balancers from closing
/// a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// The buyer's queue status as a stream of `status` events (the body of
/// `GET .../queue` each): at once, then whenever it changes (a new position
/// every two to three seconds), admission within one release tick with its
/// queue pass. The stream ends after a final status (admitted, sold out,
/// expired), when the buyer leaves the line, and when the server stops;
/// keep-alive comments flow while nothing changes. Refusals come before
/// the stream starts, as for `GET .../queue`.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/queue/events", tag = "queue",
    params(("sale_id" = String, Path, description = "The sale's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`text/event-stream` of `status` events, each a QueueStatus", body = QueueStatus, content_type = "text/event-stream"),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_in_queue`, `sale_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable` (also when the process holds `MAX_EVENT_STREAMS` streams: poll instead), `sale_frozen`", body = Problem, content_type = "application/problem+json"),
    ))]
async fn events(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ClientAddr(addr): ClientAddr,
    Path(sale): Path<SaleId>,
) -> ApiResult<Response> {
    state
        .limits
        .check(Action::Poll, Some(&who.user_id), addr)
        .await?;
    if state.push.stopping() {
        return Err(ApiError::Unavailable {
            what: "the event stream (the server is stopping)",
        });
    }
    let slot = state.push.open_stream().ok_or(ApiError::Unavailable {
        what: "event streams (this server holds as many as it may; poll instead)",
    })?;
    let read = queue::status_in_line(
        &state.redis,
        &state.scripts,
        sale,
        &who.user_id,
        state.seen_refresh_ms,
    )
    .await;
    let (standing, in_line) = or_frozen(&state, sale, read).await?;
    let now = Utc::now();
    // A reconnecting page waits about as long as a polling one would.
    let retry = standing
        .poll_after_ms(now, state.max_poll_after_ms)
        .unwrap_or(state.max_poll_after_ms);
    let first =
        event(&render(&state, sale, &who, standing.clone())?)?.retry(Duration::from_millis(retry));
    metrics::counter!("flashsale_queue_events_total").increment(1);
    let follower = (!push::is_final(&standing)).then(|| {
        Follower::new(
            &state.push,
            sale,
            who.user_id.clone(),
            Refresh {
                seen_refresh_ms: state.seen_refresh_ms,
                max_poll_after_ms: state.max_poll_after_ms,
            },
            standing,
            in_line,
        )
    });
    let telling = Telling {
        state,
        sale,
        who,
        follower,
        _slot: slot,
    };
    let rest = futures::stream::unfold(telling, |mut t| async move {
        let next = t.follower.as_mut()?.next().await?;
        let event = t.event(next)?;
        metrics::counter!("flashsale_queue_events_total").increment(1);
        Some((Ok::<_, Infallible>(event), t))
    });
    let stream = futures::StreamExt::chain(
        futures::stream::once(std::future::ready(Ok::<_, Infallible>(first))),
        rest,
    );
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            // nginx (and ingress-nginx) pass the stream on as it comes
            // instead of buffering it.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    )
        .into_response())
}

/// One stream's state between events.
struct Telling {
    state: AppState,
    sale: SaleId,
    who: Identity,
    /// None when the first status was already final.
    follower: Option<Follower>,
    _slot: StreamSlot,
}

impl Telling {
    fn event(&self, standing: Standing) -> Option<Event> {
        let told =
            render(&self.state, self.sale, &self.who, standing).and_then(|status| event(&status));
        match told {
            Ok(event) => Some(event),
            Err(err) => {
                tracing::warn!(sale.id = %self.sale, error = %err, "ending an event stream");
                None
            }
        }
    }
}

fn event(status: &QueueStatus) -> ApiResult<Event> {
    let json = serde_json::to_string(status).map_err(ApiError::internal)?;
    Ok(Event::default().event("status").data(json))
}
