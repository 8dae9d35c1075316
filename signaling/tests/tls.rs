//! HTTPS and WSS on the node's own listener (`--tls-cert`/`--tls-key`), with a CA made here,
//! and the certificate reloaded on SIGHUP while a WSS connection stays open.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A CA (its PEM) that signed a certificate for `localhost` written to `dir`.
fn issue(dir: &Path, cn: &str) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("Lodge test CA {cn}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("node.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls(port: u16, ca: &str) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    connector(ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// GET over HTTPS; (status, body).
async fn get(port: u16, ca: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tls(port, ca).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost:{port}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `lodge serve` with HTTPS on a free port and waits until `/readyz` answers over TLS.
/// The port is picked here and released before the node binds it, so another test can take it
/// in between: a node that exits saying it cannot bind is started again on a new port. Its
/// output goes to a file in `dir`, printed if it never becomes ready.
async fn start(dir: &Path, certs: &Path, ca: &str) -> (Node, u16) {
    let log_path = dir.join("lodge.log");
    for attempt in 1..=3 {
        let http = common::free_port();
        let log = std::fs::File::create(&log_path).unwrap();
        let mut node = Node(
            Command::new(env!("CARGO_BIN_EXE_lodge"))
                .args(["serve", "--data-dir"])
                .arg(dir.join("data"))
                .args(["--http-listen", &format!("127.0.0.1:{http}")])
                // Port 0: each media worker binds a free port of its own.
                .args(["--media-listen", "127.0.0.1:0"])
                .args(["--public-url", &format!("https://localhost:{http}")])
                .arg("--tls-cert")
                .arg(certs.join("node.crt"))
                .arg("--tls-key")
                .arg(certs.join("node.key"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start lodge"),
        );
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            // A bounded probe: whoever else holds the port may accept and never answer.
            let probe = tokio::time::timeout(Duration::from_secs(2), get(http, ca, "/readyz"));
            if matches!(probe.await, Ok(Ok((200, _)))) {
                return (node, http);
            }
            let output = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = node.0.try_wait().unwrap() {
                let out = output();
                if out.contains("cannot bind HTTP") && attempt < 3 {
                    break;
                }
                panic!("lodge exited ({status}) before it became ready; its output:\n{out}");
            }
            assert!(
                Instant::now() < until,
                "lodge did not become ready over HTTPS in 30 s; its output:\n{}",
                output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    unreachable!("the loop returns or panics on its last attempt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_with_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca1 = issue(&certs, "one");
    let (node, http) = start(dir.path(), &certs, &ca1).await;

    // REST over HTTPS: the gateway URL it hands out is wss://.
    let (st, body) = get(http, &ca1, "/api/v10/gateway").await.unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["url"].as_str().unwrap().starts_with("wss://localhost:"),
        "{v}"
    );

    // The gateway over WSS: Hello arrives, and a heartbeat is acknowledged.
    let stream = tls(http, &ca1).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{http}/gateway?v=10&encoding=json"),
        stream,
    )
    .await
    .unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["op"], 10, "{hello}");

    // Plain HTTP on the HTTPS port gets no answer and is counted.
    let mut plain = TcpStream::connect(("127.0.0.1", http)).await.unwrap();
    plain
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    let (_, metrics) = get(http, &ca1, "/metrics").await.unwrap();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lodge_tls_handshake_failures_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("lodge_tls_handshake_failures_total on /metrics");
    assert!(failures >= 1, "{failures}");

    // A new certificate from another CA at the same paths, then SIGHUP.
    let ca2 = issue(&certs, "two");
    let pid = node.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(get(http, &ca2, "/readyz").await, Ok((200, _))) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new certificate was not served after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New handshakes no longer present the old certificate...
    assert!(
        get(http, &ca1, "/readyz").await.is_err(),
        "a client trusting only the old CA still connected"
    );
    // ...while the connection opened before the reload is still served.
    ws.send(Message::text(r#"{"op":1,"d":null}"#))
        .await
        .unwrap();
    let ack = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the open WSS connection went quiet after the reload")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["op"] == 11 {
                break v;
            }
        }
    };
    assert_eq!(ack["op"], 11);
    let (_, metrics) = get(http, &ca2, "/metrics").await.unwrap();
    assert!(
        metrics.contains("lodge_tls_reloads_total{outcome=\"ok\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("tls"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
