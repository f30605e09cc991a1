//! HTTP basic auth as exporter-toolkit does it: `[server.basic_auth_users]` maps names to bcrypt
//! hashes; with any user configured, every endpoint but the probes (`/livez`, `/readyz`) needs
//! credentials, and a request without good ones gets 401 with a `Basic` challenge.
//!
//! bcrypt is slow on purpose (about 50 ms at cost 10), so it runs on the blocking pool, at most
//! [`CONCURRENT_CHECKS`] at a time, never on the engine's thread, with at most [`WAITING_CHECKS`]
//! more waiting: past that a request gets 503 at once, so a flood of bad passwords cannot queue
//! a real login out past a scrape timeout. An unknown user is checked against a hash of the same
//! cost, so a failed attempt costs what a good one does and the answer's timing does not tell
//! which names exist. A good pair is remembered (as a SHA-256 of the password, compared in
//! constant time) and checked before any queue, so a known scraper never waits behind
//! strangers. Every refusal is counted in `flowwatch_http_auth_rejected_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::input::web::BasicAuthUsers;
use crate::output::metrics::Metrics;

/// bcrypt checks running at once; more wait.
pub const CONCURRENT_CHECKS: usize = 2;
/// bcrypt checks waiting for their turn at most; past it a request is answered 503 at once.
/// With [`CONCURRENT_CHECKS`] at 50 ms each, the last of them waits about 0.5 s.
pub const WAITING_CHECKS: usize = 16;

/// Endpoints open without credentials: the probes.
const OPEN_PATHS: [&str; 2] = ["/livez", "/readyz"];

pub struct BasicAuth {
    users: BasicAuthUsers,
    /// A hash of a random password, at the highest cost of the users' hashes: unknown users are
    /// checked against it, so they cost as much as known ones.
    decoy: String,
    /// SHA-256 of the last good password of each user.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    checks: Semaphore,
    /// Checks running or waiting for a turn.
    queued: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// What a check of credentials found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Good,
    Bad,
    /// Too many checks under way: not checked.
    Busy,
}

impl BasicAuth {
    /// `None` when no user is configured: everything is open.
    pub fn new(users: BasicAuthUsers, metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        let cost = users
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max()?;
        let secret = format!("{:032x}", fastrand::u128(..));
        let decoy = bcrypt::hash(secret, cost).ok()?;
        Some(Arc::new(Self {
            users,
            decoy,
            verified: Mutex::new(HashMap::new()),
            checks: Semaphore::new(CONCURRENT_CHECKS),
            queued: AtomicUsize::new(0),
            metrics,
        }))
    }

    /// Whether `user` and `password` are good: remembered, or checked with bcrypt when a turn
    /// is free or can be waited for.
    async fn check(self: &Arc<Self>, user: &str, password: &str) -> Verdict {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let remembered = crate::model::lock(&self.verified)
            .get(user)
            .is_some_and(|known| constant_time_eq(known, &digest));
        if remembered {
            return Verdict::Good;
        }
        let Some(_place) = Place::take(&self.queued, CONCURRENT_CHECKS + WAITING_CHECKS) else {
            return Verdict::Busy;
        };
        let Ok(_turn) = self.checks.acquire().await else {
            return Verdict::Bad;
        };
        let (known, hash) = match self.users.get(user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.decoy.clone()),
        };
        let password = password.to_string();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if known && matched {
            crate::model::lock(&self.verified).insert(user.to_string(), digest);
            Verdict::Good
        } else {
            Verdict::Bad
        }
    }
}

/// A place among the checks running or waiting, given back when dropped (also when the request
/// is cancelled while it waits).
struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    fn take(queued: &'a AtomicUsize, bound: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(queued))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The middleware: the probes pass; anything else needs a good `Authorization: Basic` header.
pub async fn require(auth: Arc<BasicAuth>, request: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let credentials = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| aws_smithy_types::base64::decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let verdict = match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, password)) => auth.check(user, password).await,
        None => Verdict::Bad,
    };
    match verdict {
        Verdict::Good => next.run(request).await,
        Verdict::Bad => {
            auth.metrics.auth_rejected("credentials");
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"flowwatch\", charset=\"UTF-8\"",
                )],
                "credentials required\n",
            )
                .into_response()
        }
        Verdict::Busy => {
            auth.metrics.auth_rejected("busy");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many password checks under way: try again\n",
            )
                .into_response()
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_at_cost(cost: u32) -> Arc<BasicAuth> {
        let hash = bcrypt::hash("right", cost).expect("hash");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        BasicAuth::new(
            BasicAuthUsers::from([("prometheus".to_string(), hash)]),
            metrics,
        )
        .expect("users")
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let auth = auth_at_cost(4);
        assert_eq!(auth.check("prometheus", "right").await, Verdict::Good);
        assert_eq!(
            auth.check("prometheus", "right").await,
            Verdict::Good,
            "remembered"
        );
        assert_eq!(auth.check("prometheus", "wrong").await, Verdict::Bad);
        assert_eq!(auth.check("nobody", "right").await, Verdict::Bad);
        assert_eq!(
            &auth.decoy[..7],
            "$2b$04$",
            "the decoy costs what the users' hashes do"
        );
    }

    #[tokio::test]
    async fn with_every_turn_taken_a_stranger_is_turned_away_and_a_remembered_login_passes() {
        let auth = auth_at_cost(4);
        assert_eq!(auth.check("prometheus", "right").await, Verdict::Good);
        // As a flood leaves it: both turns taken, every waiting place filled.
        let turns = auth
            .checks
            .acquire_many(CONCURRENT_CHECKS as u32)
            .await
            .expect("turns");
        auth.queued
            .store(CONCURRENT_CHECKS + WAITING_CHECKS, Ordering::Release);
        assert_eq!(
            auth.check("prometheus", "right").await,
            Verdict::Good,
            "a remembered scraper never queues"
        );
        assert_eq!(auth.check("prometheus", "guess").await, Verdict::Busy);
        assert_eq!(auth.check("mallory", "guess").await, Verdict::Busy);
        auth.queued.store(0, Ordering::Release);
        drop(turns);
        assert_eq!(auth.check("mallory", "guess").await, Verdict::Bad);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_bad_passwords_is_bounded_and_gives_every_place_back() {
        let auth = auth_at_cost(6);
        let flood: Vec<_> = (0..300)
            .map(|n| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.check("prometheus", &format!("bad{n}")).await })
            })
            .collect();
        let mut verdicts = Vec::new();
        for task in flood {
            verdicts.push(task.await.expect("task"));
        }
        let busy = verdicts.iter().filter(|v| **v == Verdict::Busy).count();
        let bad = verdicts.iter().filter(|v| **v == Verdict::Bad).count();
        assert_eq!(busy + bad, 300, "no bad password passes");
        assert!(busy > 0, "past the bound they are turned away at once");
        assert_eq!(
            auth.queued.load(Ordering::Acquire),
            0,
            "every place given back"
        );
    }

    #[test]
    fn no_users_means_no_auth() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        assert!(BasicAuth::new(BasicAuthUsers::new(), metrics).is_none());
    }
}
