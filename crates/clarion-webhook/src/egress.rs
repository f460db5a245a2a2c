//! How a webhook target's connections leave the host: straight to the receiver, or
//! through the proxy the daemon's environment names, read as curl reads it
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and their lower-case forms, minus the
//! hosts in `NO_PROXY`). reqwest, which this channel used before, did the same, and
//! a host whose only way out is a proxy must keep working.
//!
//! The route is chosen once, when the target is built: a target has one URL.
//! - `https://` through a proxy: an HTTP `CONNECT` tunnel, then TLS to the receiver
//!   inside it (the proxy sees only the host and port).
//! - `http://` through a proxy: the request goes to the proxy in absolute form.
//!
//! Credentials in the proxy URL (`http://user:password@proxy:3128`) become
//! `Proxy-Authorization: Basic …`. Nothing here prints more of a proxy URL than its
//! scheme, host and port.

use hyper::Uri;
use hyper::header::HeaderValue;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy a request to `uri` goes through, as `(proxy URL, Proxy-Authorization)`,
/// or `None` for a direct connection. Refuses a proxy it cannot speak to; the
/// reason names the proxy by scheme, host and port only.
pub(crate) fn proxy_for(
    matcher: &Matcher,
    uri: &Uri,
) -> Result<Option<(Uri, Option<HeaderValue>)>, String> {
    let Some(intercept) = matcher.intercept(uri) else {
        return Ok(None);
    };
    let proxy = intercept.uri().clone();
    if proxy.scheme_str() != Some("http") || proxy.host().is_none() {
        return Err(format!(
            "the environment's proxy setting names {}, which webhook targets cannot use: give an http:// proxy, or list the host in NO_PROXY",
            shown(&proxy)
        ));
    }
    let auth = intercept.basic_auth().cloned().map(|mut v| {
        v.set_sensitive(true);
        v
    });
    Ok(Some((proxy, auth)))
}

/// A proxy's URL as logs and errors may show it: scheme, host and port, never its
/// credentials.
pub(crate) fn shown(proxy: &Uri) -> String {
    let (scheme, host) = (
        proxy.scheme_str().unwrap_or("http"),
        proxy.host().unwrap_or("?"),
    );
    match proxy.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// A connector that follows the route chosen for the target.
#[derive(Clone)]
pub(crate) struct Egress {
    http: HttpConnector,
    route: Route,
}

#[derive(Clone)]
enum Route {
    Direct,
    /// `CONNECT` through the proxy, for `https://` receivers.
    Tunnel(Tunnel<HttpConnector>),
    /// Requests in absolute form to this proxy, for `http://` receivers.
    Forward(Uri),
}

impl Egress {
    pub(crate) fn direct(http: HttpConnector) -> Egress {
        Egress {
            http,
            route: Route::Direct,
        }
    }

    /// Through `proxy` to a receiver whose scheme is `https` (tunnelled) or not.
    pub(crate) fn via(
        http: HttpConnector,
        https: bool,
        proxy: Uri,
        auth: Option<HeaderValue>,
    ) -> Egress {
        let route = if https {
            let tunnel = Tunnel::new(proxy, http.clone());
            Route::Tunnel(match auth {
                Some(auth) => tunnel.with_auth(auth),
                None => tunnel,
            })
        } else {
            Route::Forward(proxy)
        };
        Egress { http, route }
    }
}

impl Service<Uri> for Egress {
    type Response = Io;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each route readies its own connector in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match &self.route {
            Route::Direct => Box::pin(connect(self.http.clone(), dst, false)),
            Route::Tunnel(tunnel) => Box::pin(connect(tunnel.clone(), dst, false)),
            Route::Forward(proxy) => Box::pin(connect(self.http.clone(), proxy.clone(), true)),
        }
    }
}

/// One connection through `connector` to `dst`.
async fn connect<C>(mut connector: C, dst: Uri, forwarded: bool) -> Result<Io, BoxError>
where
    C: Service<Uri, Response = TokioIo<TcpStream>>,
    C::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let inner = connector.call(dst).await.map_err(Into::into)?;
    Ok(Io { inner, forwarded })
}

/// A connection, marked as going through a forward proxy when it does: hyper then
/// writes requests in absolute form (`POST http://host/path`).
pub(crate) struct Io {
    inner: TokioIo<TcpStream>,
    forwarded: bool,
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        self.inner.connected().proxy(self.forwarded)
    }
}

impl Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(matcher: Matcher, url: &str) -> Result<Option<(Uri, Option<HeaderValue>)>, String> {
        proxy_for(&matcher, &url.parse().expect("uri"))
    }

    #[test]
    fn the_proxy_is_chosen_per_scheme_and_no_proxy_hosts_go_direct() {
        let matcher = || {
            Matcher::builder()
                .https("http://ops:s3cr3t@proxy.internal:3128")
                .http("http://plain-proxy.internal:8080")
                .no("status.internal")
                .build()
        };
        let (proxy, auth) = route(matcher(), "https://hooks.example.com/x")
            .expect("usable")
            .expect("proxied");
        assert_eq!(proxy.host(), Some("proxy.internal"));
        let auth = auth.expect("credentials");
        assert!(auth.is_sensitive());
        assert_eq!(auth, "Basic b3BzOnMzY3IzdA==");
        let (proxy, auth) = route(matcher(), "http://hooks.example.com/x")
            .expect("usable")
            .expect("proxied");
        assert_eq!(proxy.host(), Some("plain-proxy.internal"));
        assert!(auth.is_none());
        assert!(
            route(matcher(), "https://status.internal/x")
                .expect("usable")
                .is_none()
        );
        assert!(
            route(Matcher::builder().build(), "https://hooks.example.com/x")
                .expect("usable")
                .is_none()
        );
    }

    #[test]
    fn a_proxy_webhooks_cannot_use_is_refused_without_its_credentials() {
        for proxy in [
            "socks5://ops:s3cr3t@proxy.internal:1080",
            "https://ops:s3cr3t@proxy.internal:3129",
        ] {
            let matcher = Matcher::builder().all(proxy).build();
            let e = route(matcher, "https://hooks.example.com/x").expect_err("refused");
            assert!(e.contains("proxy.internal"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
