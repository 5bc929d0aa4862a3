//! Certificates for tests over TLS, shared by the unit tests (`src/lib.rs`) and the
//! integration tests (`tests/it`): a CA of the test's own, and a certificate it signs for
//! 127.0.0.1, written as PEM files.

use std::path::{Path, PathBuf};

/// The PEM files [`write`] made.
pub struct Certs {
    /// The CA's certificate, what a client trusts (`upstream.ca_file`).
    pub ca: PathBuf,
    /// The server's certificate and its key (`glmgate mock --tls-cert --tls-key`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it, and writes them into `dir`.
pub fn write(dir: &Path) -> Certs {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let file = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write");
        path
    };
    Certs {
        ca: file("ca.pem", ca.pem()),
        cert: file("cert.pem", cert.pem()),
        key: file("key.pem", key.serialize_pem()),
    }
}
