//! HTTP basic auth as exporter-toolkit does it: `[server.basic_auth_users]` maps names to bcrypt
//! hashes; with any user configured, every endpoint but the probes (`/livez`, `/readyz`) needs
//! credentials, and a request without good ones gets 401 with a `Basic` challenge.
//!
//! bcrypt is slow on purpose (about 50 ms at cost 10), so it runs on the blocking pool, at most
//! [`CONCURRENT_CHECKS`] at a time, never on the engine's thread. An unknown user is checked
//! against a hash of the same cost, so a failed attempt costs what a good one does and the
//! answer's timing does not tell which names exist. A good pair is remembered (as a SHA-256 of
//! the password, compared in constant time) so a scrape every few seconds does not pay bcrypt
//! each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::input::web::BasicAuthUsers;

/// bcrypt checks running at once; more wait.
pub const CONCURRENT_CHECKS: usize = 2;

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
}

impl BasicAuth {
    /// `None` when no user is configured: everything is open.
    pub fn new(users: BasicAuthUsers) -> Option<Arc<Self>> {
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
        }))
    }

    /// Whether `user` and `password` are good.
    async fn check(self: &Arc<Self>, user: &str, password: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let remembered = crate::model::lock(&self.verified)
            .get(user)
            .is_some_and(|known| constant_time_eq(known, &digest));
        if remembered {
            return true;
        }
        let Ok(_turn) = self.checks.acquire().await else {
            return false;
        };
        let (known, hash) = match self.users.get(user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.decoy.clone()),
        };
        let password = password.to_string();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        let good = known && matched;
        if good {
            crate::model::lock(&self.verified).insert(user.to_string(), digest);
        }
        good
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
    let good = match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, password)) => auth.check(user, password).await,
        None => false,
    };
    if good {
        next.run(request).await
    } else {
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
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Arc<BasicAuth> {
        let hash = bcrypt::hash("right", 4).expect("hash");
        BasicAuth::new(BasicAuthUsers::from([("prometheus".to_string(), hash)])).expect("users")
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let auth = auth();
        assert!(auth.check("prometheus", "right").await);
        assert!(auth.check("prometheus", "right").await, "remembered");
        assert!(!auth.check("prometheus", "wrong").await);
        assert!(!auth.check("nobody", "right").await);
        assert_eq!(
            &auth.decoy[..7],
            "$2b$04$",
            "the decoy costs what the users' hashes do"
        );
    }

    #[test]
    fn no_users_means_no_auth() {
        assert!(BasicAuth::new(BasicAuthUsers::new()).is_none());
    }
}
