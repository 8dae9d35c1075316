//! TLS for the gateways and the REST API (`https://` and `wss://`): rustls with the public web
//! roots (webpki-roots, built in, so a game needs no system certificate store), plus the
//! certificates of a private CA when the server's certificate comes from one.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::ClientError;

/// How the client's connections are made: the TLS configuration for `https://` and `wss://`,
/// and whether plain connections are refused (the server's base was `https://`: a `ws://`
/// gateway URL it hands out would carry the token in clear).
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub required: bool,
}

impl Tls {
    /// For a server at `base` (`http://` or `https://`), trusting `extra_roots` too.
    pub fn for_base(base: &str, extra_roots: Option<&Path>) -> Result<Tls, ClientError> {
        let required = if base.starts_with("https://") {
            true
        } else if base.starts_with("http://") {
            false
        } else {
            return Err(ClientError::Protocol(format!(
                "{base} is not an http:// or https:// address"
            )));
        };
        Ok(Tls {
            config: client_config(extra_roots)?,
            required,
        })
    }

    /// The WebSocket scheme of the server's voice endpoints (which come without one).
    pub fn ws_scheme(&self) -> &'static str {
        if self.required {
            "wss"
        } else {
            "ws"
        }
    }

    /// Whether `url` may be dialled: with TLS required, only `wss://` and `https://`.
    pub fn check(&self, url: &str) -> Result<(), ClientError> {
        if self.required && !(url.starts_with("wss://") || url.starts_with("https://")) {
            return Err(ClientError::Tls(format!(
                "the https:// server handed out {url}, a plain address: refused (the token \
                 would travel in clear); set its public URL to https://"
            )));
        }
        Ok(())
    }
}

/// A client configuration trusting the public web roots and every certificate in the PEM
/// file `extra_roots` (a private CA's, for a server whose certificate no public CA signed).
pub fn client_config(extra_roots: Option<&Path>) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        let bad = |why: String| ClientError::Tls(format!("CA file {}: {why}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_by_name() {
        assert!(client_config(None).is_ok());
        let t = Tls::for_base("https://lodge.example.org", None).unwrap();
        assert_eq!(t.ws_scheme(), "wss");
        assert!(t.check("wss://lodge.example.org/?v=10").is_ok());
        let e = t
            .check("ws://lodge.example.org/?v=10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused"), "{e}");
        let plain = Tls::for_base("http://127.0.0.1:8080", None).unwrap();
        assert!(plain.check("ws://127.0.0.1:8080/?v=10").is_ok());
        assert!(Tls::for_base("ftp://x", None).is_err());
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = client_config(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
