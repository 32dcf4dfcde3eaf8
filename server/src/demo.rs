//! The demo page (README, "Try it"): a board of the built-in example app in the
//! browser, built with the TypeScript client and the module generated from that app
//! (`clients/typescript/demo`, bundled into `server/demo/demo.js` by
//! `npm run build:demo`). Served on the WebSocket listener, beside `/ws`, only with
//! `--demo` (on by default for the built-in app): a real app's listener serves nothing
//! but `/ws`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{self, HeaderValue};

use crate::gateway::HttpResponse;

const INDEX: &str = include_str!("../demo/index.html");
const SCRIPT: &str = include_str!("../demo/demo.js");

/// The demo's file at `path`, if it is one.
pub fn page(path: &str) -> Option<HttpResponse> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/demo.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}
