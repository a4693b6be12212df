//! Signed-in browsers. A session is a random token in a cookie that is HttpOnly (no script
//! reads it) and SameSite=Strict (no other site's page sends it), known only to this process:
//! a restart signs everyone out. Each session has its own CSRF token, which every form carries
//! and every POST must give back. The sign-in form, before there is a session, is tied to a
//! short-lived cookie of its own by an HMAC with the service's secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::serve::download::{constant_time_eq, signature};

/// The session cookie's name.
pub const COOKIE: &str = "mxsnap_session";
/// The sign-in form's cookie.
pub const SIGN_IN_COOKIE: &str = "mxsnap_sign_in";
/// A session unused this long is signed out.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions live at once; the longest idle goes first.
const MAX_SESSIONS: usize = 10_000;

struct Entry {
    user: String,
    csrf: String,
    last_seen: Instant,
}

/// A signed-in browser: who, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: String,
    pub csrf: String,
    pub token: String,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

/// 256 random bits as hex (from the OS's generator, through uuid v4's).
pub fn random_token() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `user` in: the new session's token and CSRF token.
    pub fn open(&self, user: &str) -> Signed {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| now.duration_since(e.last_seen) < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let signed = Signed {
            user: user.to_string(),
            csrf: random_token(),
            token: random_token(),
        };
        map.insert(
            signed.token.clone(),
            Entry {
                user: signed.user.clone(),
                csrf: signed.csrf.clone(),
                last_seen: now,
            },
        );
        signed
    }

    /// The session the request's cookie names, while it lives.
    pub fn get(&self, headers: &HeaderMap) -> Option<Signed> {
        let token = cookie(headers, COOKIE)?;
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.get_mut(&token)?;
        if now.duration_since(entry.last_seen) >= IDLE {
            map.remove(&token);
            return None;
        }
        entry.last_seen = now;
        Some(Signed {
            user: entry.user.clone(),
            csrf: entry.csrf.clone(),
            token,
        })
    }

    pub fn close(&self, token: &str) {
        self.lock().remove(token);
    }
}

impl Signed {
    /// Whether a form's token is this session's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        constant_time_eq(self.csrf.as_bytes(), given.as_bytes())
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value: HttpOnly and SameSite=Strict always, Secure behind https.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The sign-in form's CSRF token for the sign-in cookie `nonce`.
pub fn sign_in_token(secret: &[u8; 32], nonce: &str) -> String {
    signature(secret, &format!("sign-in:{nonce}"))
}

pub fn sign_in_ok(secret: &[u8; 32], headers: &HeaderMap, given: &str) -> bool {
    cookie(headers, SIGN_IN_COOKIE).is_some_and(|nonce| {
        constant_time_eq(sign_in_token(secret, &nonce).as_bytes(), given.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_gone_once_closed() {
        let sessions = Sessions::default();
        let s = sessions.open("alice");
        let h = with_cookie(&format!("other=1; {COOKIE}={}", s.token));
        let found = sessions.get(&h).unwrap();
        assert_eq!(found.user, "alice");
        assert!(found.csrf_ok(&s.csrf));
        assert!(!found.csrf_ok(&random_token()));
        assert!(!found.csrf_ok(""));
        sessions.close(&s.token);
        assert!(sessions.get(&h).is_none());
        assert!(
            sessions
                .get(&with_cookie(&format!("{COOKIE}=nope")))
                .is_none()
        );
    }

    #[test]
    fn the_sign_in_token_is_bound_to_its_cookie() {
        let secret = [7u8; 32];
        let token = sign_in_token(&secret, "abc");
        assert!(sign_in_ok(
            &secret,
            &with_cookie(&format!("{SIGN_IN_COOKIE}=abc")),
            &token
        ));
        assert!(!sign_in_ok(
            &secret,
            &with_cookie(&format!("{SIGN_IN_COOKIE}=abd")),
            &token
        ));
        assert!(!sign_in_ok(&secret, &HeaderMap::new(), &token));
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = set_cookie(COOKIE, "t", true, Some(60));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(COOKIE, "t", false, None).contains("Secure"));
    }
}
