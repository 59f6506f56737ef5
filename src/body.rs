//! The one body type that flows through the proxy stack, both ways.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Error type carried through bodies and services: whatever failed, boxed.
///
/// Boundary errors (upstream connect, timeouts) are concrete types found again by walking the
/// source chain; the hot path never allocates one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body inside the proxy: streamed, type-erased, `Send`.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`, sent in one frame.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no data.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Erases the concrete type of any body whose error converts to [`BoxError`]. A body that
/// already is a [`ProxyBody`] is returned as is, not boxed twice.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(proxy_body) =
        (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<ProxyBody>>()
    {
        return proxy_body.take().expect("the body was just put here");
    }
    let body = slot.take().expect("the body was just put here");
    body.map_err(Into::into).boxed_unsync()
}
