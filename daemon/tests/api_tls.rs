//! The API over TLS (rustls), checked with an independent client (`curl`) against a
//! certificate made by `openssl`: the console answers, login cookies are `Secure`, the
//! audit log sees the client's address, and a plain-HTTP client is refused without
//! disturbing the listener.

use parkguard::api::testing::TestApp;
use parkguard::auth::{AuthService, AuthSettings, Role};
use std::process::Command;
use std::sync::Arc;

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (Debian package curl)");
    let mut s = String::from_utf8_lossy(&out.stdout).to_string();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_tls_with_secure_cookies() {
    let app = TestApp::new(&[("eng", Role::Engineer, "engineer-pass-123")]).expect("app");
    let dir = app.dir.path().to_path_buf();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=parkguard-test",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let mut state = app.state.clone();
    let settings = AuthSettings {
        tls: true,
        ..Default::default()
    };
    state.auth = Arc::new(AuthService::from_file(&dir.join("users.toml"), settings).expect("auth"));
    let acceptor = parkguard::api::tls::acceptor(&cert, &key).expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(parkguard::api::tls::serve_tls(
        listener,
        parkguard::api::router(state),
        acceptor,
        cancel.clone(),
    ));
    let base = format!("https://127.0.0.1:{port}");
    let cert_s = cert.to_string_lossy().to_string();

    let result = tokio::task::spawn_blocking(move || {
        // Plain HTTP to the TLS port fails, and the listener keeps serving.
        let (plain_ok, _) = curl(&[&format!("http://127.0.0.1:{port}/healthz")]);
        assert!(!plain_ok, "plain HTTP must not be served on the TLS port");
        // Without trusting the certificate, curl refuses.
        let (untrusted, msg) = curl(&[&format!("{base}/healthz")]);
        assert!(!untrusted, "{msg}");
        let (ok, body) = curl(&["--cacert", &cert_s, &format!("{base}/healthz")]);
        assert!(ok, "{body}");
        assert!(body.contains("alive"), "{body}");
        let (ok, headers) = curl(&[
            "--cacert",
            &cert_s,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"username":"eng","password":"engineer-pass-123"}"#,
            &format!("{base}/api/v1/session/login"),
        ]);
        assert!(ok, "{headers}");
        let cookies: Vec<&str> = headers
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .collect();
        assert_eq!(cookies.len(), 2, "{headers}");
        for c in &cookies {
            assert!(c.contains("; Secure"), "{c}");
            assert!(c.contains("SameSite=Strict"), "{c}");
        }
    })
    .await;
    // The audit log saw the client's real address through TLS.
    let entries = app.state.audit.list(10, None).expect("audit");
    cancel.cancel();
    let _ = server.await;
    result.expect("client checks");
    let login = entries
        .iter()
        .find(|e| e.action == "session.login")
        .expect("login audited");
    assert_eq!(login.ip, "127.0.0.1");
}
