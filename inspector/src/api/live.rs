//! `/api/v1/stream`: Server-Sent Events with each new sample and stall event.
//!
//! Events: `hello` (once: the loops known now), `loop` (registered or closed),
//! `sample` (a [`SampleSummary`](crate::SampleSummary)), `stall` (a
//! [`StallEvent`](crate::StallEvent) when opened, when its stack arrives, when
//! closed). `?loop=ID` limits samples and stalls to one loop. Bounds: see
//! `stream.rs`; a client that falls behind is cut and should reconnect.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::{with_loop, ApiError, AppState, Params};
use crate::stream::Subscription;

type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// A comment line this often keeps proxies from closing an idle stream, and makes a
/// dead peer show up as a failed write.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/stream", get(stream))
}

async fn stream(State(state): State<AppState>, q: Q) -> Result<Response, ApiError> {
    let p = Params::from(q)?;
    let filter = p.u64("loop")?;
    if let Some(id) = filter {
        with_loop(&state, id, |_, _| ())?;
    }
    let loops: Vec<u64> = state.hub().read(|st| st.loops.keys().copied().collect());
    let sub = state.hub().stream.subscribe(filter).ok_or(ApiError::TooManyClients)?;
    let hello =
        Event::default().event("hello").data(json!({ "api": "v1", "loop": filter, "loops": loops }).to_string());
    let sse = Sse::new(Events { hello: Some(hello), sub }).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    // A stream's connection is never reused: when the stream ends (the client was
    // cut), the connection ends with it instead of idling as keep-alive.
    Ok(([(header::CONNECTION, "close")], sse).into_response())
}

/// The response body: `hello`, then whatever the hub publishes until the client is
/// cut or goes away.
pub(crate) struct Events {
    hello: Option<Event>,
    sub: Subscription,
}

impl futures_core::Stream for Events {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(hello) = this.hello.take() {
            return Poll::Ready(Some(Ok(hello)));
        }
        this.sub.poll_event(cx).map(|e| e.map(|e| Ok(Event::default().event(e.name).data(&e.data))))
    }
}
