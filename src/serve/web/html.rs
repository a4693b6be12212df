//! The page's HTML, written out by hand: everything interpolated goes through [`esc`], every
//! page has the same frame ([`page`]) and the same headers (no caching, a content security
//! policy that allows only this service's own script and style).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Text or an attribute value made safe for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One path segment, percent-encoded where it is not a plain character.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A moment in the service's time zone, to the minute.
pub fn when(t: Option<DateTime<Utc>>, tz: Tz) -> String {
    t.map_or_else(
        || "–".to_string(),
        |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string(),
    )
}

/// A byte count for people, or a dash when unknown.
pub fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "–".to_string(), crate::output::human_bytes)
}

/// The hidden field every form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// Who is signed in, for the page's header.
pub struct Header<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
}

/// A whole page: title, header (with sign-out when signed in) and `body` (already HTML).
pub fn page(status: StatusCode, title: &str, who: Option<Header<'_>>, body: &str) -> Response {
    let account = match who {
        Some(h) => format!(
            r#"<form class="account" method="post" action="/ui/sign-out">{}<span>{}</span> <button type="submit" class="link">Sign out</button></form>"#,
            csrf_field(h.csrf),
            esc(h.user)
        ),
        None => String::new(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · mxsnap</title>
<link rel="stylesheet" href="/ui/static/app.css">
<script src="/ui/static/app.js" defer></script>
</head>
<body>
<header class="top"><a class="brand" href="/ui/">mxsnap · Backups</a>{account}</header>
<main id="main">
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    resp
}

/// What every page and asset is sent with.
pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// A message page: what went wrong (or right) and where to go next.
pub fn message(
    status: StatusCode,
    title: &str,
    who: Option<Header<'_>>,
    text: &str,
    back: &str,
) -> Response {
    let role = if status.is_success() {
        "status"
    } else {
        "alert"
    };
    let class = if status.is_success() {
        "notice"
    } else {
        "error"
    };
    page(
        status,
        title,
        who,
        &format!(
            r#"<h1>{}</h1><p class="{class}" role="{role}">{}</p><p><a href="{}">Back</a></p>"#,
            esc(title),
            esc(text),
            esc(back)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_paths_are_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(seg("Test env/../x?"), "Test%20env%2F..%2Fx%3F");
        assert_eq!(size(Some(512)), "512 B");
        assert_eq!(size(Some(1536)), "1.5 KiB");
        assert_eq!(size(None), "–");
    }
}
