//! The pages: the buyer's (`/`, `/login`, `/register`, `/sales/{id}`) and
//! the organizer's console (`/console`), plain HTML, CSS and small ES
//! modules from `web/`, embedded in the binary so a deployment is one file.
//!
//! The pages are clients of the public API and nothing else: every action
//! goes through the same routes and checks as any client's, with the
//! session cookie and its CSRF header (`web/api.js`). Every page is served
//! with a Content-Security-Policy that allows this origin only, so a page
//! cannot load, or send anything, to another host.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use sha2::{Digest, Sha256};

use super::AppState;

/// One embedded file and how it is served.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! web {
    ($file:literal, $type:expr) => {
        Asset {
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
            content_type: $type,
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The pages, by the route that serves them.
fn pages() -> [(&'static str, Asset); 5] {
    [
        ("/", web!("index.html", HTML)),
        ("/login", web!("login.html", HTML)),
        ("/register", web!("register.html", HTML)),
        ("/sales/{sale_id}", web!("sale.html", HTML)),
        ("/console", web!("console.html", HTML)),
    ]
}

/// What the pages load, under `/assets/`.
fn assets() -> Vec<(&'static str, Asset)> {
    vec![
        ("app.css", web!("app.css", CSS)),
        ("api.js", web!("api.js", JS)),
        ("index.js", web!("index.js", JS)),
        ("account.js", web!("account.js", JS)),
        ("sale.js", web!("sale.js", JS)),
        ("console.js", web!("console.js", JS)),
        ("icon.svg", web!("icon.svg", "image/svg+xml")),
    ]
}

/// This origin only, for everything; no inline script. Styles may be set
/// from script (`element.style`), which the progress bar does.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (route, asset) in pages() {
        router = router.route(route, get(serve(asset)));
    }
    for (name, asset) in assets() {
        router = router.route(&format!("/assets/{name}"), get(serve(asset)));
    }
    router
}

/// A handler that answers the asset, or 304 when the browser's copy is
/// current (its ETag is the content's hash, so a new binary's pages are
/// never served stale from a cache).
fn serve(
    asset: Asset,
) -> impl Fn(HeaderMap) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(asset.body))[..16]);
    let etag = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    let content_type = HeaderValue::from_static(asset.content_type);
    let body = asset.body;
    move |headers: HeaderMap| {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|tags| tags.as_bytes() == etag.as_bytes());
        let common = [
            (header::ETAG, etag.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        std::future::ready(if fresh {
            (StatusCode::NOT_MODIFIED, common).into_response()
        } else {
            (common, [(header::CONTENT_TYPE, content_type.clone())], body).into_response()
        })
    }
}
