//! Asymmetric keys: choice by `kid`, JWKS, reload on change, and no HS/RS confusion.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use switchboard_auth_jwt::{JwtAuthenticator, JwtConfig};
use switchboard_core::{AuthError, Dur, RefusalReason};

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(key(name)).expect("test key")
}

fn claims() -> serde_json::Value {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 60;
    json!({"sub": "u1", "exp": exp})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, &claims(), key).expect("sign")
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(name)).expect("rsa key")
}

fn cfg(algs: &[&str]) -> JwtConfig {
    JwtConfig {
        algorithms: algs.iter().map(|s| (*s).to_owned()).collect(),
        leeway: Dur::secs(0),
        ..JwtConfig::default()
    }
}

#[test]
fn keys_are_chosen_by_kid() {
    let c = JwtConfig {
        public_keys: BTreeMap::from([
            ("a".into(), key("rsa-a.pub")),
            ("b".into(), key("rsa-b.pub")),
        ]),
        ..cfg(&["RS256"])
    };
    let auth = JwtAuthenticator::new(&c, false).expect("config");
    assert!(
        auth.verify(&sign(Algorithm::RS256, Some("a"), &rsa("rsa-a.key")))
            .is_ok()
    );
    assert!(
        auth.verify(&sign(Algorithm::RS256, Some("b"), &rsa("rsa-b.key")))
            .is_ok()
    );
    for (t, reason) in [
        (
            sign(Algorithm::RS256, Some("b"), &rsa("rsa-a.key")),
            RefusalReason::BadSignature,
        ),
        (
            sign(Algorithm::RS256, Some("zz"), &rsa("rsa-a.key")),
            RefusalReason::UnknownKid,
        ),
        (
            sign(Algorithm::RS256, None, &rsa("rsa-a.key")),
            RefusalReason::UnknownKid,
        ),
    ] {
        assert_eq!(auth.verify(&t), Err(AuthError::InvalidToken));
        assert_eq!(auth.check(&t).map_err(|r| r.reason), Err(reason));
    }
}

#[test]
fn ec_and_ed_keys_verify() {
    let es = JwtAuthenticator::new(
        &JwtConfig {
            public_key_file: Some(key("ec.pub")),
            ..cfg(&["ES256"])
        },
        false,
    )
    .expect("config");
    let ec = EncodingKey::from_ec_pem(&read("ec.key")).expect("ec");
    assert!(es.verify(&sign(Algorithm::ES256, None, &ec)).is_ok());
    let ed_auth = JwtAuthenticator::new(
        &JwtConfig {
            public_key_file: Some(key("ed.pub")),
            ..cfg(&["EdDSA"])
        },
        false,
    )
    .expect("config");
    let ed = EncodingKey::from_ed_pem(&read("ed.key")).expect("ed");
    assert!(ed_auth.verify(&sign(Algorithm::EdDSA, None, &ed)).is_ok());
    assert_eq!(
        ed_auth.verify(&sign(Algorithm::ES256, None, &ec)),
        Err(AuthError::InvalidToken)
    );
}

#[test]
fn hs_token_signed_with_the_public_key_is_refused() {
    let c = JwtConfig {
        secret: Some("the-real-hmac-secret-0123456789-abcdef".into()),
        public_key_file: Some(key("rsa-a.pub")),
        ..cfg(&["RS256", "HS256"])
    };
    let auth = JwtAuthenticator::new(&c, false).expect("config");
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&read("rsa-a.pub")),
    );
    assert_eq!(auth.verify(&forged), Err(AuthError::InvalidToken));
    assert_eq!(
        auth.check(&forged).map_err(|r| r.reason),
        Err(RefusalReason::BadSignature)
    );
    let rs_only = JwtAuthenticator::new(
        &JwtConfig {
            public_key_file: Some(key("rsa-a.pub")),
            ..cfg(&["RS256"])
        },
        false,
    )
    .expect("config");
    assert_eq!(rs_only.verify(&forged), Err(AuthError::InvalidToken));
    assert_eq!(
        rs_only.check(&forged).map_err(|r| r.reason),
        Err(RefusalReason::AlgorithmNotAccepted)
    );
    assert!(
        rs_only
            .verify(&sign(Algorithm::RS256, None, &rsa("rsa-a.key")))
            .is_ok()
    );
    // The other way round: a gateway that accepts HS256 alone (its fastest path) refuses a
    // token of any other algorithm, however validly signed.
    let hs_only = JwtAuthenticator::new(
        &JwtConfig {
            secret: Some("the-real-hmac-secret-0123456789-abcdef".into()),
            ..cfg(&["HS256"])
        },
        false,
    )
    .expect("config");
    assert_eq!(
        hs_only.verify(&sign(Algorithm::RS256, None, &rsa("rsa-a.key"))),
        Err(AuthError::InvalidToken)
    );
    let hs384 = sign(
        Algorithm::HS384,
        None,
        &EncodingKey::from_secret(b"the-real-hmac-secret-0123456789-abcdef"),
    );
    assert_eq!(hs_only.verify(&hs384), Err(AuthError::InvalidToken));
    assert!(
        hs_only
            .verify(&sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"the-real-hmac-secret-0123456789-abcdef"),
            ))
            .is_ok()
    );
}

#[test]
fn jwks_file_is_read_and_reloaded() {
    let dir = std::env::temp_dir().join(format!("sb-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("jwks.json");
    let jwk = |name: &str, kid: &str| {
        let mut j = Jwk::from_encoding_key(&rsa(name), Algorithm::RS256).expect("jwk");
        j.common.key_id = Some(kid.to_owned());
        j
    };
    let write = |keys: Vec<Jwk>| {
        std::fs::write(&path, serde_json::to_vec(&JwkSet { keys }).expect("json")).expect("write");
    };
    write(vec![jwk("rsa-a.key", "a")]);
    let c = JwtConfig {
        jwks_file: Some(path.clone()),
        reload_interval: Dur::millis(0),
        ..cfg(&["RS256"])
    };
    let auth = JwtAuthenticator::new(&c, false).expect("config");
    let token_b = sign(Algorithm::RS256, Some("b"), &rsa("rsa-b.key"));
    assert!(
        auth.verify(&sign(Algorithm::RS256, Some("a"), &rsa("rsa-a.key")))
            .is_ok()
    );
    assert_eq!(auth.verify(&token_b), Err(AuthError::InvalidToken));

    // Rotate: add key b. File times have a coarse resolution on some systems; wait it out.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(vec![jwk("rsa-a.key", "a"), jwk("rsa-b.key", "b")]);
    assert!(auth.verify(&token_b).is_ok(), "the new key is picked up");

    // A broken file keeps the previous keys.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&path, b"not json").expect("write");
    assert!(auth.verify(&token_b).is_ok(), "previous keys still serve");
    let _ = std::fs::remove_dir_all(&dir);
}
