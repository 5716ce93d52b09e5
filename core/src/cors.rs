//! CORS for every route: tower-http's layer for the requests it has work to do on (those
//! with an `Origin`, and preflights), and for the rest (a backend's publish, a native
//! client) the fixed headers it would add, without its per-request header map.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// The CORS layer for `server.cors_origins` (`"*"`: any origin, mirrored).
pub(crate) fn layer(origins: &[String]) -> CorsGate {
    CorsGate::new(rules(origins))
}

/// tower-http's layer for `server.cors_origins`.
fn rules(origins: &[String]) -> CorsLayer {
    let cors = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_credentials(true);
    if origins.iter().any(|o| o == "*") {
        cors.allow_origin(AllowOrigin::mirror_request())
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        cors.allow_origin(list)
    }
}

/// Answers CORS as tower-http's [`CorsLayer`] does, skipping it where it would only add
/// fixed headers.
#[derive(Clone, Debug)]
pub(crate) struct CorsGate {
    rules: Arc<CorsLayer>,
    /// What the rules add to the answer to a request without an `Origin`.
    fixed: Arc<HeaderMap>,
}

impl CorsGate {
    fn new(rules: CorsLayer) -> Self {
        // Asked once here: without an `Origin`, what the rules add does not depend on the
        // request (a preflight, which may, always goes through them).
        let probe = rules.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let fixed = probe
            .oneshot(Request::new(()))
            .now_or_never()
            .and_then(Result::ok)
            .map(|r| r.headers().clone())
            .unwrap_or_default();
        CorsGate {
            rules: Arc::new(rules),
            fixed: Arc::new(fixed),
        }
    }
}

impl<S> Gated<S> {
    /// The headers added to the answer to a request without an `Origin` (not a preflight).
    pub(crate) fn fixed(&self) -> &HeaderMap {
        &self.gate.fixed
    }
}

impl<S: Clone> Layer<S> for CorsGate {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }
}

/// The service of [`CorsGate`]. Cloned per request by the router around it: it holds
/// only shared parts, and builds tower-http's service for the requests that need it.
#[derive(Clone, Debug)]
pub(crate) struct Gated<S> {
    gate: CorsGate,
    inner: S,
}

pin_project_lite::pin_project! {
    /// The answer to a request without an `Origin`, given the fixed headers once ready.
    pub(crate) struct Plain<F> {
        #[pin]
        inner: F,
        fixed: Arc<HeaderMap>,
    }
}

impl<F, B, E> Future for Plain<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        let headers = resp.headers_mut();
        headers.reserve(this.fixed.len());
        for (name, value) in this.fixed.iter() {
            // As tower-http does: `Vary` joins the answer's own, the rest replace theirs.
            if name == header::VARY {
                headers.append(name, value.clone());
            } else {
                headers.insert(name, value.clone());
            }
        }
        Poll::Ready(Ok(resp))
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Gated<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Either<tower_http::cors::ResponseFuture<S::Future>, Plain<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if req.method() == Method::OPTIONS || req.headers().contains_key(header::ORIGIN) {
            // tower-http's service around the inner service readied for this call (a clone
            // stays for the next).
            let next = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, next);
            let mut cors: Cors<S> = self.gate.rules.layer(ready);
            Either::Left(cors.call(req))
        } else {
            Either::Right(Plain {
                inner: self.inner.call(req),
                fixed: self.gate.fixed.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new().route("/a", get(|| async { "a" })).route(
            "/vary",
            post(|| async { ([(header::VARY, "accept-encoding")], "v") }),
        )
    }

    /// The status and every header of the answer to `req`.
    async fn answer(app: Router, req: Request<Body>) -> (u16, Vec<(String, String)>) {
        let resp = app.oneshot(req).await.map_err(|e| e.to_string());
        let Ok(resp) = resp else {
            return (0, Vec::new());
        };
        let mut headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        headers.sort();
        (resp.status().as_u16(), headers)
    }

    fn requests() -> Vec<Request<Body>> {
        let with = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut r = Request::builder().method(method).uri(path);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.body(Body::empty()).unwrap_or_default()
        };
        vec![
            with("GET", "/a", &[]),
            with("POST", "/vary", &[]),
            with("GET", "/missing", &[]),
            with("GET", "/a", &[("origin", "http://localhost:3000")]),
            with("GET", "/a", &[("origin", "http://evil.example")]),
            with("POST", "/vary", &[("origin", "http://localhost:3000")]),
            with(
                "OPTIONS",
                "/a",
                &[
                    ("origin", "http://localhost:3000"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
            ),
            with("OPTIONS", "/a", &[]),
        ]
    }

    #[tokio::test]
    async fn every_answer_is_tower_http_s_own() {
        for origins in [
            vec!["http://localhost:3000".to_owned()],
            vec!["*".to_owned()],
            vec![],
        ] {
            let theirs = rules(&origins);
            for (ours, reference) in requests().into_iter().zip(requests()) {
                let what = format!("{} {} {:?}", ours.method(), ours.uri(), ours.headers());
                let got = answer(app().layer(layer(&origins)), ours).await;
                let want = answer(app().layer(theirs.clone()), reference).await;
                assert_ne!(got.0, 0);
                assert_eq!(got, want, "{what} with origins {origins:?}");
            }
        }
    }
}
