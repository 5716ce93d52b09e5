//! `auth.jwt.jwks_url` against a real HTTP server on loopback that rotates its keys, goes
//! down and answers garbage.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::json;
use switchboard_auth_jwt::{JwtAuthenticator, JwtConfig};
use switchboard_core::{AuthError, Authenticator, Dur, RefusalReason};

fn read(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name);
    std::fs::read(path).expect("test key")
}

/// A signing key of the fixtures, with the kid and algorithm it is published under.
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn rsa(kid: &'static str, file: &str) -> Self {
        Signer {
            kid,
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&read(file)).expect("rsa key"),
        }
    }

    fn ec() -> Self {
        Signer {
            kid: "ec",
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&read("ec.key")).expect("ec key"),
        }
    }

    fn ed() -> Self {
        Signer {
            kid: "ed",
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(&read("ed.key")).expect("ed key"),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).expect("public jwk");
        jwk.common.key_id = Some(self.kid.to_owned());
        jwk
    }

    fn token(&self, sub: &str) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 600;
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp}), &self.key).expect("sign")
    }
}

/// What the provider answers.
#[derive(Clone)]
enum Answer {
    Keys(Vec<Jwk>),
    Down,
    Garbage,
}

/// A JWKS provider on 127.0.0.1 whose answer the test changes; it counts requests.
struct Provider {
    answer: Mutex<Answer>,
    max_age: u64,
    hits: AtomicUsize,
}

async fn jwks(State(p): State<Arc<Provider>>) -> Response {
    p.hits.fetch_add(1, Ordering::SeqCst);
    let answer = p.answer.lock().clone();
    match answer {
        Answer::Keys(keys) => (
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (
                    header::CACHE_CONTROL,
                    format!("public, max-age={}", p.max_age),
                ),
            ],
            serde_json::to_string(&JwkSet { keys }).expect("json"),
        )
            .into_response(),
        Answer::Down => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Answer::Garbage => {
            ([(header::CONTENT_TYPE, "text/html")], "<html>oops</html>").into_response()
        }
    }
}

async fn provider(answer: Answer) -> (Arc<Provider>, String) {
    let p = Arc::new(Provider {
        answer: Mutex::new(answer),
        max_age: 1,
        hits: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/.well-known/jwks.json", axum::routing::get(jwks))
        .with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (p, format!("http://{addr}/.well-known/jwks.json"))
}

fn authenticator(url: &str) -> JwtAuthenticator {
    let cfg = JwtConfig {
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        jwks_url: Some(url.to_owned()),
        jwks_cache_min: Dur::secs(1),
        leeway: Dur::secs(0),
        ..JwtConfig::default()
    };
    JwtAuthenticator::new(&cfg, false).expect("starts whether or not the provider answers")
}

/// Polls `f` until it is true; fails after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn rotated_keys_verify_without_restart_and_removed_ones_expire() {
    let (a, ec, ed) = (Signer::rsa("a", "rsa-a.key"), Signer::ec(), Signer::ed());
    let (p, url) = provider(Answer::Keys(vec![a.jwk(), ec.jwk(), ed.jwk()])).await;
    let auth = authenticator(&url);

    // The first handshake waits for the first fetch; RS, ES and EdDSA keys all verify.
    for s in [&a, &ec, &ed] {
        let id = auth.verify_token(&s.token("u1")).await.expect(s.kid);
        assert_eq!(id.user_id, "u1");
    }

    // Rotation: key b joins the set. A token of b verifies without a restart, through
    // the fetch its unknown kid causes (at most once per jwks_cache_min).
    let b = Signer::rsa("b", "rsa-b.key");
    *p.answer.lock() = Answer::Keys(vec![a.jwk(), b.jwk()]);
    let token_b = b.token("u2");
    eventually("a token of the new key verifies", WITHIN, || async {
        auth.verify_token(&token_b).await.is_ok()
    })
    .await;

    // Key a leaves the set: once the cached set expires, its tokens are refused.
    *p.answer.lock() = Answer::Keys(vec![b.jwk()]);
    let token_a = a.token("u1");
    eventually("a token of the removed key is refused", WITHIN, || async {
        auth.verify_token(&token_a).await == Err(AuthError::InvalidToken)
    })
    .await;
    assert!(auth.refused_count(RefusalReason::UnknownKid) >= 1);
    assert!(auth.verify_token(&token_b).await.is_ok());
}

#[tokio::test]
async fn the_last_good_keys_serve_while_the_provider_is_down_or_answers_garbage() {
    let a = Signer::rsa("a", "rsa-a.key");
    let (p, url) = provider(Answer::Keys(vec![a.jwk()])).await;
    let auth = authenticator(&url);
    let token = a.token("u1");
    assert!(auth.verify_token(&token).await.is_ok());

    for answer in [Answer::Down, Answer::Garbage] {
        *p.answer.lock() = answer;
        let before = p.hits.load(Ordering::SeqCst);
        // Two refreshes that failed (the set's max-age is 1 s), and the keys still serve.
        eventually("two refreshes failed", WITHIN, || async {
            p.hits.load(Ordering::SeqCst) >= before + 2
        })
        .await;
        assert!(auth.verify_token(&token).await.is_ok());
    }

    // An unknown kid meanwhile is refused, and the known one still serves.
    let stranger = Signer::rsa("c", "rsa-b.key");
    assert_eq!(
        auth.verify_token(&stranger.token("u3")).await,
        Err(AuthError::InvalidToken)
    );
    assert!(auth.verify_token(&token).await.is_ok());
}

#[tokio::test]
async fn with_the_provider_down_at_start_tokens_are_refused_until_it_answers() {
    let (p, url) = provider(Answer::Down).await;
    let auth = authenticator(&url);
    let a = Signer::rsa("a", "rsa-a.key");
    let token = a.token("u1");
    assert_eq!(
        auth.verify_token(&token).await,
        Err(AuthError::InvalidToken)
    );
    assert!(auth.refused_count(RefusalReason::KeysUnavailable) >= 1);

    // It keeps retrying in the background: once the provider answers, the token verifies.
    *p.answer.lock() = Answer::Keys(vec![a.jwk()]);
    eventually(
        "the token verifies once the provider is up",
        WITHIN,
        || async { auth.verify_token(&token).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn a_key_published_for_one_algorithm_refuses_another() {
    // rsa-a published as RS256; a PS256 token under the same kid is refused.
    let a = Signer::rsa("a", "rsa-a.key");
    let (_p, url) = provider(Answer::Keys(vec![a.jwk()])).await;
    let cfg = JwtConfig {
        algorithms: vec!["RS256".into(), "PS256".into()],
        jwks_url: Some(url),
        jwks_cache_min: Dur::secs(1),
        ..JwtConfig::default()
    };
    let auth = JwtAuthenticator::new(&cfg, false).expect("config");
    assert!(auth.verify_token(&a.token("u1")).await.is_ok());
    let ps = Signer {
        kid: "a",
        alg: Algorithm::PS256,
        key: EncodingKey::from_rsa_pem(&read("rsa-a.key")).expect("rsa key"),
    };
    assert_eq!(
        auth.verify_token(&ps.token("u1")).await,
        Err(AuthError::InvalidToken)
    );
    assert_eq!(auth.refused_count(RefusalReason::AlgorithmNotAccepted), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_fetches_the_set_at_most_once_per_jwks_cache_min() {
    let a = Signer::rsa("a", "rsa-a.key");
    let (p, url) = provider(Answer::Keys(vec![a.jwk()])).await;
    // A minimum far longer than the test: any fetch after the first would be one the limit
    // let through (an unknown kid fetches at once only when the last attempt is older).
    let cfg = JwtConfig {
        algorithms: vec!["RS256".into()],
        jwks_url: Some(url),
        jwks_cache_min: Dur::secs(600),
        jwks_cache_max: Dur::secs(3600),
        leeway: Dur::secs(0),
        ..JwtConfig::default()
    };
    let auth = Arc::new(JwtAuthenticator::new(&cfg, false).expect("config"));
    let token = a.token("u1");
    assert!(auth.verify_token(&token).await.is_ok());
    assert_eq!(
        p.hits.load(Ordering::SeqCst),
        1,
        "the first handshake fetched the set"
    );

    // Tokens of a key the set lacks, each under its own kid, all at once and then one by one.
    let rogue = EncodingKey::from_rsa_pem(&read("rsa-b.key")).expect("rsa key");
    let forged = |kid: String| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid);
        jsonwebtoken::encode(
            &header,
            &json!({"sub": "mallory", "exp": 4_000_000_000u64}),
            &rogue,
        )
        .expect("sign")
    };
    let at_once: Vec<_> = (0..200)
        .map(|i| {
            let (auth, token) = (auth.clone(), forged(format!("rogue-{i}")));
            tokio::spawn(async move { auth.verify_token(&token).await })
        })
        .collect();
    for t in at_once {
        assert_eq!(t.await.expect("task"), Err(AuthError::InvalidToken));
    }
    for i in 200..300 {
        assert_eq!(
            auth.verify_token(&forged(format!("rogue-{i}"))).await,
            Err(AuthError::InvalidToken)
        );
    }
    assert_eq!(
        p.hits.load(Ordering::SeqCst),
        1,
        "300 unknown kids within jwks_cache_min of the last fetch fetched nothing"
    );
    assert!(auth.refused_count(RefusalReason::UnknownKid) >= 300);
    // The known key is not disturbed.
    assert!(auth.verify_token(&token).await.is_ok());
}
