//! Limits a stranger or an account can run into: REST rate limits keyed on the verified user or
//! the client address, login back-off, registrations per address, the password hashing pool,
//! HTTP timeouts and connection caps.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request with optional `Authorization` and `X-Forwarded-For`; (status, headers, body).
async fn call(
    n: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    xff: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = n.http.request(m, n.url(path));
    if let Some(t) = token {
        r = r.header("Authorization", t);
    }
    if let Some(x) = xff {
        r = r.header("X-Forwarded-For", x);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let res = r.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn login_body(user: &str, password: &str) -> Option<Value> {
    Some(json!({ "username": user, "password": password }))
}

/// Discord's 429: JSON `{message, retry_after, global, code}`, `Retry-After`, `X-RateLimit-*`.
fn assert_rate_limited(st: u16, h: &reqwest::header::HeaderMap, v: &Value, limit_named: &str) {
    assert_eq!(st, 429, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(limit_named),
        "{msg:?} should name {limit_named:?}"
    );
    assert!(v["retry_after"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["global"].is_boolean(), "{v}");
    assert_eq!(v["code"], 0, "{v}");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    assert_eq!(h["x-ratelimit-remaining"], "0");
    for k in [
        "x-ratelimit-limit",
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
    ] {
        assert!(h.contains_key(k), "missing {k}");
    }
}

fn random_token() -> String {
    let n: u128 = rand::random();
    format!("Bot {}.{n:x}", rand::random::<u32>())
}

#[tokio::test]
async fn made_up_tokens_do_not_escape_the_address_limit() {
    let n = node_with(|a| a.rate_limit_route = Some(5)).await;
    let mut limited = None;
    for i in 0..8 {
        let (st, h, v) = call(
            &n,
            "POST",
            "/auth/login",
            Some(&random_token()),
            None,
            login_body(&format!("nobody{i}"), "password-123"),
        )
        .await;
        if st == 429 {
            limited = Some((i, h, v));
            break;
        }
        assert_eq!(st, 400, "{v}");
    }
    let (i, h, v) = limited.expect("a fresh Authorization header per request was never limited");
    assert_eq!(i, 5, "the sixth request from the address is refused");
    assert_rate_limited(429, &h, &v, "limit");
    // The same with a route that needs a token: invalid tokens count against the address.
    let n = node_with(|a| a.rate_limit_route = Some(3)).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (st, h, v) = call(&n, "GET", "/users/@me", Some(&random_token()), None, None).await;
        if st == 429 {
            assert_rate_limited(st, &h, &v, "route limit");
        }
        statuses.push(st);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Failed token lookups are bounded per address whatever the route limits: past 10 a
    // second, token-bearing requests wait without reaching the store.
    let n = node_with(|a| {
        a.rate_limit_route = Some(1000);
        a.rate_limit_global = Some(1000);
    })
    .await;
    let (_, good) = n.user("alice").await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (st, h, v) = call(&n, "GET", "/users/@me", Some(&random_token()), None, None).await;
        if st == 429 {
            assert_rate_limited(st, &h, &v, "invalid tokens from this address");
        }
        statuses.push(st);
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10..], [429; 2]);
    // Requests without a token are not affected.
    let (st, _, _) = call(&n, "GET", "/users/@me", None, None, None).await;
    assert_eq!(st, 401);
    // A valid token from that address waits out the second, then works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, v) = call(&n, "GET", "/users/@me", Some(&good), None, None).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test]
async fn limits_follow_the_verified_user_not_the_token() {
    let n = node_with(|a| a.rate_limit_route = Some(3)).await;
    let (_, a1) = n.user("alice").await;
    let (_, b) = n.user("bobby").await;
    // A second token of the same user (another login) shares the user's limit.
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        None,
        login_body("alice", "password-123"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let a2 = v["token"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (st, _, v) = call(&n, "GET", "/users/@me", Some(&a1), None, None).await;
        assert_eq!(st, 200, "{v}");
    }
    let (st, h, v) = call(&n, "GET", "/users/@me", Some(&a2), None, None).await;
    assert_rate_limited(st, &h, &v, "route limit");
    // Another user from the same address is counted separately.
    for _ in 0..3 {
        let (st, _, v) = call(&n, "GET", "/users/@me", Some(&b), None, None).await;
        assert_eq!(st, 200, "{v}");
    }
    // And so is the address's unauthenticated traffic.
    let (st, _, v) = call(&n, "GET", "/users/@me", None, None, None).await;
    assert_eq!(st, 401, "{v}");
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // Without a trusted proxy the header is ignored: every request is 127.0.0.1's.
    let n = node_with(|a| a.rate_limit_route = Some(2)).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        let (st, _, _) = call(&n, "GET", "/users/@me", None, Some(&xff), None).await;
        statuses.push(st);
    }
    assert_eq!(statuses, [401, 401, 429]);

    // Behind a trusted proxy each forwarded address is its own caller.
    let n = node_with(|a| {
        a.rate_limit_route = Some(2);
        a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let mut statuses = Vec::new();
    for xff in ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"] {
        let (st, _, _) = call(&n, "GET", "/users/@me", None, Some(xff), None).await;
        statuses.push(st);
    }
    assert_eq!(statuses, [401, 401, 429, 401]);
    // A client cannot pick its address by prepending to the header: the rightmost untrusted
    // hop is the one the proxy saw.
    let (st, _, _) = call(
        &n,
        "GET",
        "/users/@me",
        None,
        Some("198.51.100.7, 203.0.113.1"),
        None,
    )
    .await;
    assert_eq!(st, 429);
}

#[tokio::test]
async fn login_back_off_grows_per_username_across_addresses() {
    let n = node_with(|a| a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()])).await;
    n.user("alice").await;
    let wrong = login_body("alice", "not-the-password");
    // Five failures, each from another address, are answered normally.
    for i in 0..5 {
        let xff = format!("198.51.100.{i}");
        let (st, _, v) = call(&n, "POST", "/auth/login", None, Some(&xff), wrong.clone()).await;
        assert_eq!(st, 400, "{v}");
    }
    // Then the username backs off (1 s), whichever address asks — even with the right password.
    let (st, h, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.50"),
        login_body("alice", "password-123"),
    )
    .await;
    assert_rate_limited(st, &h, &v, "login failures for this username");
    let first = v["retry_after"].as_f64().unwrap();
    assert!(first <= 1.0, "{v}");
    // Another username from that address is not affected.
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.50"),
        login_body("carol", "whatever-pw"),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    // One more failure after the wait doubles the back-off.
    tokio::time::sleep(Duration::from_secs_f64(first + 0.05)).await;
    let failed_at = Instant::now();
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.51"),
        wrong.clone(),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, h, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.52"),
        wrong.clone(),
    )
    .await;
    assert_rate_limited(st, &h, &v, "login failures for this username");
    let second = v["retry_after"].as_f64().unwrap();
    // 2 s from that failure (the hash in between took some of it).
    let since = failed_at.elapsed().as_secs_f64();
    assert!(second <= 2.0 && second + since >= 1.95, "{v} {since}");
    // The right password after the back-off logs in, and clears the username's record.
    tokio::time::sleep(Duration::from_secs_f64(second + 0.05)).await;
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.53"),
        login_body("alice", "password-123"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.54"),
        wrong,
    )
    .await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn login_back_off_per_address_across_usernames() {
    let n = node().await;
    for i in 0..5 {
        let (st, _, v) = call(
            &n,
            "POST",
            "/auth/login",
            None,
            None,
            login_body(&format!("ghost{i}"), "password-123"),
        )
        .await;
        assert_eq!(st, 400, "{v}");
    }
    let (st, h, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        None,
        login_body("ghost9", "password-123"),
    )
    .await;
    assert_rate_limited(st, &h, &v, "login failures from this address");
}

#[tokio::test]
async fn registrations_per_address_per_hour() {
    let n = node_with(|a| {
        a.registrations_per_ip_per_hour = Some(3);
        a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let reg = |name: &str| Some(json!({ "username": name, "password": "password-123" }));
    for name in ["reg1", "reg2", "reg3"] {
        let (st, _, v) = call(
            &n,
            "POST",
            "/auth/register",
            None,
            Some("192.0.2.1"),
            reg(name),
        )
        .await;
        assert_eq!(st, 201, "{v}");
    }
    let (st, h, v) = call(
        &n,
        "POST",
        "/auth/register",
        None,
        Some("192.0.2.1"),
        reg("reg4"),
    )
    .await;
    assert_rate_limited(st, &h, &v, "registrations from this address");
    assert!(v["retry_after"].as_f64().unwrap() > 3500.0, "{v}");
    // Nothing was created by the refused request.
    let (st, _, _) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("192.0.2.9"),
        login_body("reg4", "password-123"),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/register",
        None,
        Some("192.0.2.2"),
        reg("reg4"),
    )
    .await;
    assert_eq!(st, 201, "{v}");
}

#[tokio::test]
async fn a_saturated_hashing_pool_answers_503_with_retry_after() {
    let n = node_with(|a| {
        a.password_hash_concurrency = Some(1);
        a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    n.user("alice").await;
    let n = std::sync::Arc::new(n);
    // Fill the pool (1 running, its queue of 4) and more, with registrations from many addresses.
    let regs: Vec<_> = (0..12)
        .map(|i| {
            let n = n.clone();
            tokio::spawn(async move {
                call(
                    &n,
                    "POST",
                    "/auth/register",
                    None,
                    Some(&format!("192.0.2.{i}")),
                    Some(json!({ "username": format!("crowd{i}"), "password": "password-123" })),
                )
                .await
            })
        })
        .collect();
    // While hashes are still queued, a login is refused at once rather than queued.
    let mut login = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if n.run.as_ref().unwrap().state.store.passwords().refused() > 0 {
            login = Some(
                call(
                    &n,
                    "POST",
                    "/auth/login",
                    None,
                    Some("198.51.100.1"),
                    login_body("alice", "password-123"),
                )
                .await,
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (st, h, v) = login.expect("the pool never refused a registration");
    assert_eq!(st, 503, "{v}");
    assert_eq!(h["retry-after"], "1");
    assert!(
        v["message"].as_str().unwrap().contains("password hashing"),
        "{v}"
    );
    let mut created = 0;
    let mut busy = 0;
    for r in regs {
        let (st, h, v) = r.await.unwrap();
        match st {
            201 => created += 1,
            503 => {
                assert_eq!(h["retry-after"], "1");
                busy += 1;
            }
            _ => panic!("{st} {v}"),
        }
    }
    assert!(created >= 1 && busy >= 1, "created {created}, busy {busy}");
    // Once the pool drains, logins work again.
    let (st, _, v) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("198.51.100.2"),
        login_body("alice", "password-123"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
}

/// `#[tokio::test]` runs node and client on one thread: if a hash ran on it, nothing else could
/// run until the hash was done.
#[tokio::test]
async fn healthz_answers_while_a_password_hash_runs() {
    let n = node_with(|a| a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()])).await;
    n.user("alice").await;
    let n = std::sync::Arc::new(n);
    let store = n.run.as_ref().unwrap().state.store.clone();
    let logins = {
        let n = n.clone();
        tokio::spawn(async move {
            for i in 0..4 {
                let xff = format!("198.51.100.{i}");
                call(
                    &n,
                    "POST",
                    "/auth/login",
                    None,
                    Some(&xff),
                    login_body("alice", "nope-nope"),
                )
                .await;
            }
        })
    };
    let mut answered_during_a_hash = 0;
    while !logins.is_finished() {
        if store.passwords().running() > 0 {
            let r = n
                .http
                .get(format!("{}/healthz", n.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            if store.passwords().running() > 0 {
                answered_during_a_hash += 1;
            }
        }
        tokio::task::yield_now().await;
    }
    assert!(
        answered_during_a_hash >= 1,
        "/healthz never completed while a hash was running"
    );
}

#[tokio::test]
async fn unknown_usernames_and_wrong_passwords_both_verify() {
    let n = node_with(|a| a.trusted_proxy = Some(vec!["127.0.0.0/8".parse().unwrap()])).await;
    n.user("alice").await;
    let pw = n.run.as_ref().unwrap().state.store.clone();
    let before = pw.passwords().verifications();
    let (st, _, unknown) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("192.0.2.1"),
        login_body("nobody-here", "password-123"),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        pw.passwords().verifications(),
        before + 1,
        "unknown username verified"
    );
    let (st, _, wrong) = call(
        &n,
        "POST",
        "/auth/login",
        None,
        Some("192.0.2.2"),
        login_body("alice", "password-456"),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        pw.passwords().verifications(),
        before + 2,
        "wrong password verified"
    );
    assert_eq!(unknown, wrong, "the same answer for both");
}

// ---------- the HTTP server ----------

/// Read until the server closes the connection; `None` if it stays open past `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_half_sent_request_is_closed_at_the_header_timeout() {
    let n = node_with(|a| a.http_header_timeout_secs = Some(1)).await;
    let t0 = Instant::now();
    let mut s = TcpStream::connect(n.http_addr()).await.unwrap();
    s.write_all(b"GET /healthz HT").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(4))
            .await
            .is_some(),
        "half a request line kept the connection open"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // A connection that sends nothing is closed the same way.
    let mut s = TcpStream::connect(n.http_addr()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(4))
        .await
        .is_some());
    // A complete request on a kept-alive connection is answered; the idle connection then
    // lives for the idle timeout, not the header timeout.
    let mut s = TcpStream::connect(n.http_addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let k = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..k].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..k])
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(2))
            .await
            .is_none(),
        "an idle keep-alive connection was cut at the header timeout"
    );
    let stats = &n.run.as_ref().unwrap().state.http_stats;
    assert_eq!(
        stats
            .header_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let n = node_with(|a| a.http_idle_timeout_secs = Some(1)).await;
    let mut s = TcpStream::connect(n.http_addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let k = s.read(&mut buf).await.unwrap();
    assert!(buf[..k].starts_with(b"HTTP/1.1 200"));
    assert!(closed_within(&mut s, Duration::from_secs(4))
        .await
        .is_some());
}

async fn healthz_raw(from: &str, to: std::net::SocketAddr) -> Option<String> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let got = closed_within(&mut s, Duration::from_secs(5)).await?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn connections_over_the_caps_are_refused_and_the_node_stays_healthy() {
    let n = node_with(|a| {
        a.max_http_connections = Some(4);
        a.max_http_connections_per_ip = Some(2);
    })
    .await;
    let to = n.http_addr();
    // Two held connections from 127.0.0.1: its third is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(to).await.unwrap());
    }
    let r = healthz_raw("127.0.0.1", to)
        .await
        .expect("refused connections are closed");
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    // Another address is served.
    let r = healthz_raw("127.0.0.2", to).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Fill the node: two more from other addresses; then anyone is refused.
    for ip in ["127.0.0.3", "127.0.0.4"] {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        held.push(sock.connect(to).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = healthz_raw("127.0.0.5", to).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    let stats = &n.run.as_ref().unwrap().state.http_stats;
    assert!(
        stats
            .refused_node_cap
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(
        stats
            .refused_addr_cap
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Closed connections give their places back.
    drop(held);
    let t0 = Instant::now();
    loop {
        let r = healthz_raw("127.0.0.1", to).await.unwrap();
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refusals are counted by the limit's name.
    let metrics = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for limit in ["max_http_connections", "max_http_connections_per_ip"] {
        let line = format!("lodge_http_connections_closed_total{{limit=\"{limit}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // WebSockets still upgrade, and count while open.
    let (_, token) = n.user("alice").await;
    let open = || stats.open.load(std::sync::atomic::Ordering::Relaxed);
    let before = open();
    let (w, ready) = gateway(&n, &token).await;
    assert!(ready["session_id"].is_string());
    assert_eq!(open(), before + 1, "the upgraded socket holds its place");
    drop(w);
    let t0 = Instant::now();
    while open() != before {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the closed WebSocket kept its place"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
