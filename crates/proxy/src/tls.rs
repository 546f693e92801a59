//! TLS on an application's listener, with rustls (its `ring` provider: no C toolchain beyond
//! what the workspace already needs).
//!
//! An application whose configuration has `tls: {certFile, keyFile}` is served over TLS only,
//! offering HTTP/2 and HTTP/1.1 by ALPN (in that order). The PEM files are read each time a
//! configuration is prepared, so pushing the same configuration again after renewing the files
//! serves the new certificate to new connections; connections already open keep theirs. A file
//! that cannot be read or parsed, or a key that does not go with the certificate, rejects the
//! whole configuration with a [`ConfigError`] naming the application and the field
//! (`tls.certFile` or `tls.keyFile`), and the previous configuration keeps serving.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, Problem, TlsFiles};

/// The protocols offered by ALPN, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The configuration field of the certificate chain file.
pub const CERT_FIELD: &str = "tls.certFile";
/// The configuration field of the private key file.
pub const KEY_FIELD: &str = "tls.keyFile";

/// Why a certificate and key cannot serve TLS, and in which of the two files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("no PEM certificate (`-----BEGIN CERTIFICATE-----`) found")]
    NoCertificate,
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey,
    #[error("not valid PEM: {0}")]
    Pem(String),
    #[error("rustls refused the certificate and key: {0}")]
    Rejected(String),
}

/// Reads `files` and builds the acceptor for application `app`. Every problem names `app` and
/// the field it is in.
pub async fn acceptor(app: &str, files: &TlsFiles) -> Result<TlsAcceptor, Vec<ConfigError>> {
    let error = |field: &str, what: String| ConfigError {
        app: app.to_string(),
        field: field.to_string(),
        problem: Problem::Tls(what),
    };
    let cert = read(&files.cert_file).await;
    let key = read(&files.key_file).await;
    let (cert, key) = match (cert, key) {
        (Ok(cert), Ok(key)) => (cert, key),
        (cert, key) => {
            let mut errors = Vec::new();
            if let Err(e) = cert {
                errors.push(error(CERT_FIELD, e));
            }
            if let Err(e) = key {
                errors.push(error(KEY_FIELD, e));
            }
            return Err(errors);
        }
    };
    server_config(&cert, &key)
        .map(|config| TlsAcceptor::from(Arc::new(config)))
        .map_err(|(in_key, problem)| {
            let (field, path) = if in_key {
                (KEY_FIELD, &files.key_file)
            } else {
                (CERT_FIELD, &files.cert_file)
            };
            vec![error(field, format!("{}: {problem}", path.display()))]
        })
}

async fn read(path: &Path) -> Result<Vec<u8>, String> {
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A rustls server configuration from a PEM certificate chain (leaf first) and a PEM private
/// key, with ALPN `h2` and `http/1.1`. On error, `true` says the problem is in the key.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, (bool, TlsProblem)> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| (false, TlsProblem::Pem(e.to_string())))?;
    if chain.is_empty() {
        return Err((false, TlsProblem::NoCertificate));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => (true, TlsProblem::NoKey),
        e => (true, TlsProblem::Pem(e.to_string())),
    })?;
    let rejected = |e: rustls::Error| (true, TlsProblem::Rejected(e.to_string()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(rejected)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_a_problem_in_the_certificate() {
        let found = server_config(b"just text\n", b"").unwrap_err();
        assert_eq!(found, (false, TlsProblem::NoCertificate));
    }

    #[test]
    fn a_broken_pem_section_is_reported_as_invalid_pem() {
        let cert = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
        let (in_key, problem) = server_config(cert, b"").unwrap_err();
        assert!(!in_key);
        assert!(matches!(problem, TlsProblem::Pem(_)), "{problem:?}");
    }

    #[test]
    fn a_certificate_without_a_key_is_a_problem_in_the_key() {
        // Syntactically a certificate section: rustls only looks inside once a key is there.
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let found = server_config(cert, b"no key here").unwrap_err();
        assert_eq!(found, (true, TlsProblem::NoKey));
    }

    #[tokio::test]
    async fn unreadable_files_name_the_app_and_both_fields() {
        let files = TlsFiles {
            cert_file: "/nonexistent/gauntlet/cert.pem".into(),
            key_file: "/nonexistent/gauntlet/key.pem".into(),
        };
        let errors = acceptor("web", &files).await.err().expect("missing files");
        let fields: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.app.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(fields, [("web", CERT_FIELD), ("web", KEY_FIELD)]);
        assert!(
            errors[0]
                .to_string()
                .contains("/nonexistent/gauntlet/cert.pem"),
            "{}",
            errors[0]
        );
    }
}
