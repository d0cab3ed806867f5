//! The small HTTP endpoint of the agent and the controller: `/healthz`, `/readyz` and
//! `/metrics` (OpenMetrics text), served with hyper.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

/// `/metrics` is in the OpenMetrics text format: what `prometheus-client` writes for both
/// the agent and the controller.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until the task is dropped. `ready` answers `/readyz`; `render` makes `/metrics`.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "health endpoint: accept failed");
                continue;
            }
        };
        let ready = ready.clone();
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &ready, render.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            // One request per connection: probes and scrapers open a new one each time.
            let served = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(error = %e, "health endpoint: connection failed");
            }
        });
    }
}

fn respond<B>(
    request: &Request<B>,
    ready: &AtomicBool,
    render: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, text, "ok\n".to_string()),
        "/readyz" if ready.load(Ordering::Relaxed) => (StatusCode::OK, text, "ok\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "not ready yet\n".to_string(),
        ),
        "/metrics" => (StatusCode::OK, OPENMETRICS, render()),
        _ => (StatusCode::NOT_FOUND, text, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}
