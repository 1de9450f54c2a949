//! Certificates made with the `openssl` command, for the tests that speak TLS: a CA,
//! and leaves it signs for a server (localhost, 127.0.0.1) or a client.

use std::path::Path;
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (scripts/test.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA named `name` in `dir`: `name.pem`, `name.key`.
pub fn ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A certificate `name` signed by CA `ca` for `usage` (`serverAuth`: localhost and
/// 127.0.0.1; `clientAuth`).
pub fn leaf(dir: &Path, name: &str, ca: &str, usage: &str) {
    let ext = format!("{name}.ext");
    let san = if usage == "serverAuth" {
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join(&ext),
        format!("{san}extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}
