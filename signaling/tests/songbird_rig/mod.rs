//! What the songbird tests share: the TLS terminator songbird needs (it always dials
//! `wss://{endpoint}`), a tone songbird can play, and a Goertzel check for a tone in decoded PCM.

#![allow(dead_code)]

use std::num::NonZeroU64;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use songbird::input::{Input, RawAdapter};
use tokio::net::{TcpListener, TcpStream};

/// A TLS terminator for `localhost` in front of `upstream`; returns its port and the CA's PEM.
pub async fn tls_proxy(upstream: std::net::SocketAddr) -> (u16, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Lodge songbird test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, ca_cert.pem())
}

/// Put a TLS terminator in front of `upstream` and make songbird trust it: its CA goes to a file
/// in `dir` that SSL_CERT_FILE names (rustls-native-certs reads it when songbird's WebSocket
/// client builds its roots). Returns the endpoint to hand songbird.
pub async fn trusted_tls_endpoint(upstream: std::net::SocketAddr, dir: &std::path::Path) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (port, ca) = tls_proxy(upstream).await;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    // Each songbird test is its own process with one test in it: nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("SSL_CERT_FILE", &ca_file) };
    format!("localhost:{port}")
}

/// Relative power of `hz` in mono `pcm` at 48 kHz (Goertzel), 0..1 of the signal's power.
pub fn tone_share(pcm: &[i16], hz: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * hz / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2, mut energy) = (0f32, 0f32, 0f32);
    for &x in pcm {
        let x = x as f32;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
        energy += x * x;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        return 0.0;
    }
    // A pure sine of N samples gives power ≈ energy · N / 2.
    power / (energy * pcm.len() as f32 / 2.0)
}

/// `seconds` of a stereo f32 sine of `hz` at peak `amp`, as songbird's raw input reads it.
pub fn tone(hz: f32, amp: f32, seconds: usize) -> Input {
    let mut bytes = Vec::with_capacity(48_000 * seconds * 8);
    for i in 0..48_000 * seconds {
        let v = amp * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin();
        for _ in 0..2 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let input: Input = RawAdapter::new(std::io::Cursor::new(bytes), 48_000, 2).into();
    let Input::Live(live, _) = input else {
        unreachable!("a raw adapter is a live input")
    };
    let parsed = live
        .promote(
            songbird::input::codecs::get_codec_registry(),
            songbird::input::codecs::get_probe(),
        )
        .expect("the tone parses");
    Input::Live(parsed, None)
}

pub fn id(s: &str) -> NonZeroU64 {
    s.parse().unwrap()
}
