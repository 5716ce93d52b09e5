//! A certificate authority made by the test, for TLS between the gateway and Redis: a CA,
//! a server certificate for `127.0.0.1` and `localhost`, and a client certificate, as PEM
//! files in a folder of the test's own.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A test CA and the certificates it signed, written to a scratch folder (removed on drop).
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

impl TestCa {
    /// Makes a CA and signs a server certificate (`127.0.0.1`, `localhost`) and a client
    /// certificate with it: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
    /// Panics on failure: this is for tests only.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-ca-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for the test CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchboard test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        write(&dir, "ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(ca_params, ca_key);
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec!["switchboard-client".to_owned()]),
        ] {
            let key = KeyPair::generate().expect("a key");
            let params = CertificateParams::new(sans).expect("params");
            let cert = params.signed_by(&key, &issuer).expect("a certificate");
            write(&dir, &format!("{name}.pem"), &cert.pem());
            write(&dir, &format!("{name}.key"), &key.serialize_pem());
        }
        TestCa { dir }
    }

    /// The path of one of the files (`ca.pem`, `server.key`, …).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path of one of the files, as a string for command lines and configs.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
