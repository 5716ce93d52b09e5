//! The HTTP API's two middlewares as plain tower layers: each request counted by its
//! declared route and status, and the API key checked. (A closure middleware boxes the
//! rest of the stack and its future on every request; these do not.)

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::ApiError;
use crate::runtime::Gateway;

/// Counts each request by its declared route and its status
/// (`switchboard_http_requests_total`).
#[derive(Clone)]
pub(super) struct CountLayer(pub(super) Gateway);

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;
    fn layer(&self, inner: S) -> Count<S> {
        Count {
            gw: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`CountLayer`].
#[derive(Clone)]
pub(super) struct Count<S> {
    gw: Gateway,
    inner: S,
}

impl<S> Service<Request> for Count<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Counted<S::Future> {
        let route = req.extensions().get::<MatchedPath>().cloned();
        Counted {
            inner: self.inner.call(req),
            gw: Some(self.gw.clone()),
            route,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response, counted once it is ready.
    pub(super) struct Counted<F> {
        #[pin]
        inner: F,
        gw: Option<Gateway>,
        route: Option<MatchedPath>,
    }
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Some(gw), Ok(resp)) = (this.gw.take(), &out) {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            gw.metrics().count_http(route, resp.status().as_u16());
        }
        Poll::Ready(out)
    }
}

/// Lets through only requests with one of `api.keys` (or `admin.keys`, with the admin
/// page on) as a bearer token; 401 otherwise.
#[derive(Clone)]
pub(super) struct KeyLayer(pub(super) Gateway);

impl<S> Layer<S> for KeyLayer {
    type Service = RequireKey<S>;
    fn layer(&self, inner: S) -> RequireKey<S> {
        RequireKey {
            gw: self.0.clone(),
            inner,
        }
    }
}

/// The service of [`KeyLayer`].
#[derive(Clone)]
pub(super) struct RequireKey<S> {
    gw: Gateway,
    inner: S,
}

impl<S> Service<Request> for RequireKey<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> <Self as Service<Request>>::Future {
        match check_key(&self.gw, &req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => Either::Left(ready(Ok(e.into_response()))),
        }
    }
}

/// Whether the request carries a key this node accepts.
pub(super) fn check_key(gw: &Gateway, req: &Request) -> Result<(), ApiError> {
    let authorization = req.headers().get(header::AUTHORIZATION);
    check_authorization(gw, authorization.map(|v| v.as_bytes()))
}

/// Whether an `Authorization` header's value carries a key this node accepts.
pub(super) fn check_authorization(gw: &Gateway, value: Option<&[u8]>) -> Result<(), ApiError> {
    let presented = value
        .filter(|v| super::visible_ascii(v))
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    let Some(key) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Missing API key: send Authorization: Bearer <key>",
        ));
    };
    // Compare against every key in constant time, without stopping at the first match.
    let mut ok = false;
    let config = gw.config();
    let admin: &[String] = if config.admin.enabled {
        &config.admin.keys
    } else {
        &[]
    };
    for k in config
        .api
        .keys
        .iter()
        .chain(admin)
        .filter(|k| !k.is_empty())
    {
        ok |= constant_time_eq::constant_time_eq(k.as_bytes(), key);
    }
    if ok {
        Ok(())
    } else {
        gw.metrics()
            .error_with("api_unauthorized", "a call with an invalid API key");
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key"))
    }
}
