//! HTTPS and WSS on the node's own HTTP listener (`--tls-cert`, `--tls-key`): rustls with the
//! ring provider, TLS 1.2 and 1.3, HTTP/1.1.
//!
//! The certificate lives behind a resolver ([`Certs`]) that every handshake asks, so a reload
//! (SIGHUP, [`watch_reload`]) swaps it for the handshakes that follow while connections
//! already open keep the one they started with. A reload that fails (a file missing, a key that
//! does not match) is logged and leaves the current certificate in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {err}")]
    Read {
        what: &'static str,
        path: PathBuf,
        err: String,
    },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the private key in {path} cannot be used: {err}")]
    Key { path: PathBuf, err: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {err}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        err: String,
    },
    #[error("TLS setup failed: {0}")]
    Config(String),
}

/// The certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Read and check a PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let read = |what, p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read {
            what,
            path: p.to_path_buf(),
            err: e.to_string(),
        })
    };
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            what: "certificate",
            path: files.cert.clone(),
            err: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        err: e.to_string(),
    })?;
    let signing = provider::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        err: e.to_string(),
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        err: e.to_string(),
    })?;
    Ok(ck)
}

/// The node's current certificate, swapped by reloads.
#[derive(Debug)]
pub struct Certs {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl Certs {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let ck = load(&files)?;
        Ok(Arc::new(Certs {
            files,
            current: RwLock::new(Arc::new(ck)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }))
    }

    /// Read the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.files) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// `lodge_tls_reloads_total{outcome}` for /metrics.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP lodge_tls_reloads_total Certificate reloads (SIGHUP) by outcome\n# TYPE lodge_tls_reloads_total counter"
        );
        for (k, v) in [
            ("ok", self.reloads_ok.load(Ordering::Relaxed)),
            ("failed", self.reloads_failed.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(out, "lodge_tls_reloads_total{{outcome=\"{k}\"}} {v}");
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A TLS acceptor that serves whatever `certs` holds at each handshake.
pub fn acceptor(certs: Arc<Certs>) -> Result<TlsAcceptor, TlsError> {
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Reload the certificate on every SIGHUP, logging the outcome (the old one stays on failure).
#[cfg(unix)]
pub async fn watch_reload(certs: Arc<Certs>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!(
                cert = %certs.files().cert.display(),
                "SIGHUP: TLS certificate reloaded; new connections use it"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: TLS certificate NOT reloaded; still serving the previous one"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let ck = rcgen::generate_simple_self_signed(vec!["lodge.test".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, ck.cert.pem()).unwrap();
        std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_matching_pair_loads_and_bad_ones_say_which_file_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let b = write_pair(dir.path(), "b");
        assert!(load(&a).is_ok());
        let crossed = TlsFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = load(&crossed).unwrap_err().to_string();
        assert!(e.contains("does not belong") && e.contains("b.key"), "{e}");
        let missing = TlsFiles {
            cert: dir.path().join("nope.crt"),
            key: a.key.clone(),
        };
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.crt"), "{e}");
        let swapped = TlsFiles {
            cert: a.key.clone(),
            key: a.cert.clone(),
        };
        let e = load(&swapped).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn a_failed_reload_keeps_the_current_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let certs = Certs::new(a.clone()).unwrap();
        let before = certs.current.read().unwrap().cert[0].clone();
        std::fs::write(&a.key, "not a key").unwrap();
        assert!(certs.reload().is_err());
        assert_eq!(certs.current.read().unwrap().cert[0], before);
        // A new pair at the same paths is picked up.
        let fresh = write_pair(dir.path(), "a");
        assert_eq!(fresh, a);
        certs.reload().unwrap();
        assert_ne!(certs.current.read().unwrap().cert[0], before);
        assert_eq!(certs.reloads_ok.load(Ordering::Relaxed), 1);
        assert_eq!(certs.reloads_failed.load(Ordering::Relaxed), 1);
    }
}
