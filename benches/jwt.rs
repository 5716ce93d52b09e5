//! JWT verification per connect: HS256 with a secret, RS256 with a PEM public key.
//!
//! Run by hand: `cargo bench --bench jwt`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchboard::auth_jwt::{JwtAuthenticator, JwtConfig};

const SECRET: &str = "bench-secret-0123456789-abcdefghijklmn";

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/auth-jwt/tests/keys")
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({"sub": "user-1", "email": "user-1@example.com", "role": "agent", "iat": now, "exp": now + 3600})
}

fn verify(c: &mut Criterion) {
    let hs = JwtAuthenticator::new(
        &JwtConfig {
            secret: Some(SECRET.into()),
            ..JwtConfig::default()
        },
        false,
    )
    .expect("hs config");
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign hs");

    let rs = JwtAuthenticator::new(
        &JwtConfig {
            algorithms: vec!["RS256".into()],
            public_key_file: Some(keys().join("rsa-a.pub")),
            ..JwtConfig::default()
        },
        false,
    )
    .expect("rs config");
    let pem = std::fs::read(keys().join("rsa-a.key")).expect("rsa key");
    let rs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(&pem).expect("rsa pem"),
    )
    .expect("sign rs");

    let mut g = c.benchmark_group("auth_jwt/verify");
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    g.bench_function("HS256", |b| {
        b.iter(|| hs.verify(black_box(&hs_token)).expect("valid"))
    });
    g.bench_function("RS256", |b| {
        b.iter(|| rs.verify(black_box(&rs_token)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
