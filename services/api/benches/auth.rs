//! The cost of checking a bearer token on the request path (the ingest
//! path's budget is 0.1 ms at p99): hashing the presented token and finding
//! it among the verified ones, or among the configured ones.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use firebreak_api::auth::{Auth, AuthConfig, StaticToken};
use firebreak_api::Secret;
use firebreak_domain::access::Scope;
use firebreak_store::credentials::sha256;

fn token_check(c: &mut Criterion) {
    let mut config = AuthConfig::default();
    for i in 0..4 {
        config.static_tokens.push(StaticToken {
            name: format!("static-{i}"),
            secret: Secret::new(format!("static-token-number-{i}-0123456789abcdef")),
            scopes: vec![Scope::Ingest],
        });
    }
    let auth = Auth::new(config, None);
    let presented = "static-token-number-3-0123456789abcdef";
    c.bench_function("auth/static token: hash + match (4 configured)", |b| {
        b.iter(|| {
            let key = sha256(black_box(presented).as_bytes());
            black_box(auth.known(&key, presented))
        })
    });
    let unknown = "fbk_0123456789ab_".to_string() + &"f".repeat(64);
    c.bench_function("auth/unknown token: hash + miss (then the store)", |b| {
        b.iter(|| {
            let key = sha256(black_box(&unknown).as_bytes());
            black_box(auth.known(&key, &unknown))
        })
    });
}

criterion_group!(benches, token_check);
criterion_main!(benches);
