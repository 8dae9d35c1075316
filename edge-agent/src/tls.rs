//! The trunk's TLS (1.3, inside QUIC). The origin proves who it is with its certificate, which
//! edges pin by SHA-256 fingerprint (no CA to run, nothing to trust but the one key); edges prove
//! who they are with the cluster token in their hello. Both are needed for a trunk.
//!
//! rustls gets its crypto provider (ring) passed explicitly: the node binary also links str0m's
//! aws-lc-rs, and a process-wide default would be ambiguous.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::EdgeError;

/// ALPN of the trunk protocol.
pub const ALPN: &[u8] = b"lodge-trunk/1";
/// The name edges use for the origin in TLS (the pin, not the name, is what is checked).
pub const SERVER_NAME: &str = "lodge-origin";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls(e: impl std::fmt::Display) -> EdgeError {
    EdgeError::Tls(e.to_string())
}

/// A node's trunk identity: a self-signed certificate and its key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh identity (ECDSA P-256).
    pub fn generate() -> Result<Identity, EdgeError> {
        Ok(Self::generate_with_pem()?.0)
    }

    /// A fresh identity and its (certificate, key) PEM text.
    fn generate_with_pem() -> Result<(Identity, String, String), EdgeError> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).map_err(tls)?;
        let id = Identity {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        };
        Ok((id, ck.cert.pem(), ck.signing_key.serialize_pem()))
    }

    /// Load `trunk-cert.pem` and `trunk-key.pem` from `dir`, creating them on first use, so a
    /// node keeps its fingerprint across restarts.
    pub fn load_or_create(dir: &Path) -> Result<Identity, EdgeError> {
        let (cp, kp) = (dir.join("trunk-cert.pem"), dir.join("trunk-key.pem"));
        if cp.exists() && kp.exists() {
            let cert = CertificateDer::from_pem_file(&cp)
                .map_err(|e| tls(format!("reading {}: {e}", cp.display())))?;
            let key = PrivatePkcs8KeyDer::from_pem_file(&kp)
                .map_err(|e| tls(format!("reading {}: {e}", kp.display())))?;
            return Ok(Identity { cert, key });
        }
        let (id, cert_pem, key_pem) = Identity::generate_with_pem()?;
        create_private_dir(dir)?;
        write_private(&kp, key_pem.as_bytes())?;
        std::fs::write(&cp, cert_pem)?;
        Ok(id)
    }

    /// `sha256:` and the certificate's SHA-256 in hex: what edges pin.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(self.cert.as_ref())
    }
}

/// Create `dir` (and missing parents) for the owner only (0700 on Unix); an existing
/// directory keeps its mode.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Write a secret to a new file that is 0600 from its creation: never readable by others, not
/// even between a write and a chmod. A stale file of that name (a start that died between
/// the key and the certificate) is replaced, not reused with its old mode.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

fn fingerprint_of(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Parse a pinned fingerprint (`sha256:` + 64 hex digits; colons allowed).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], EdgeError> {
    let hex: String = s
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bad = || {
        EdgeError::Tls(format!(
            "pinned fingerprint {s:?} is not sha256: followed by 64 hex digits (the origin prints its own at start-up)"
        ))
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Accepts exactly the pinned certificate (and checks the handshake signatures made with it).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if d.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the origin's certificate ({}) is not the pinned one",
                fingerprint_of(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// QUIC transport settings for trunks: keepalives every second, a dead peer noticed after
/// 3 s of silence, room for a burst of datagrams, one control stream.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(3)).expect("3 s fits"),
    ));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    Arc::new(t)
}

/// Short (4-byte) connection ids: each byte is paid on every trunk datagram.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut e = quinn::EndpointConfig::default();
    e.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(4)));
    e
}

pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, EdgeError> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )
        .map_err(tls)?;
    c.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(c).map_err(tls)?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(q));
    s.transport_config(transport());
    Ok(s)
}

pub fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig, EdgeError> {
    let p = provider();
    let algs = p.signature_verification_algorithms;
    let mut c = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pin, algs }))
        .with_no_client_auth();
    c.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(c).map_err(tls)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(q));
    cc.transport_config(transport());
    Ok(cc)
}

/// Compare secrets without leaking where they differ through timing.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_key_and_its_directory_are_private_from_creation() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("lodge-edge-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("data");
        Identity::load_or_create(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "data directory");
        assert_eq!(mode(&base), 0o700, "missing parents too");
        assert_eq!(mode(&dir.join("trunk-key.pem")), 0o600, "key");
        // A stale key left world-readable by a start that died before the certificate is
        // replaced by a new 0600 file, not rewritten in place with its old mode.
        std::fs::remove_file(dir.join("trunk-cert.pem")).unwrap();
        let kp = dir.join("trunk-key.pem");
        std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o644)).unwrap();
        Identity::load_or_create(&dir).unwrap();
        assert_eq!(mode(&kp), 0o600);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn identities_persist_and_fingerprints_parse() {
        let dir = std::env::temp_dir().join(format!("lodge-edge-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&dir).unwrap();
        let b = Identity::load_or_create(&dir).unwrap();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "same identity after a restart"
        );
        assert_ne!(a.fingerprint(), Identity::generate().unwrap().fingerprint());
        let fp = a.fingerprint();
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64);
        let hex = &fp[7..];
        let with_colons: String = (0..32)
            .map(|i| &hex[2 * i..2 * i + 2])
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            parse_fingerprint(&fp).unwrap(),
            parse_fingerprint(&with_colons).unwrap()
        );
        assert!(parse_fingerprint("sha256:1234").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("cluster-token-1", "cluster-token-1"));
        assert!(!same_secret("cluster-token-1", "cluster-token-2"));
        assert!(!same_secret("cluster-token", "cluster-token-1"));
        assert!(!same_secret("", "x"));
    }
}
