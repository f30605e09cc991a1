//! `[server.tls]` and `[server.basic_auth_users]` through the flowwatch binary, with certificates
//! from a test CA (rcgen): a real Prometheus scrapes over TLS with basic auth (`up` 1) and with
//! a wrong password (`up` 0); the probes stay open; client certificates are required when
//! `client_ca_file` is set; a rotated certificate is served without a restart. Needs
//! `prometheus` and `curl` (`bash .ci/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flowwatch_fake::FakeServer;
use flowwatch_testkit::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::process::{Child, Command};

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// A CA, and certificates it signs, written as PEM files into a workspace.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(ws: &Workspace) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "flowwatch test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        ws.write("ca.pem", &ca.pem());
        Self { ca }
    }

    /// A certificate named `name` (its common name), for the server at 127.0.0.1 or for a
    /// client; returns the paths of its certificate and key.
    fn issue(&self, ws: &Workspace, name: &str, client: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        if client {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        (
            ws.write(&format!("{name}.crt"), &cert.pem()),
            ws.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }
}

/// One running execution: what the fake serves and the daemon's watchlist lists.
fn script() -> flowwatch_fake::Scenario {
    scenario(vec![scripted("daily-orders", 1, &[(0, "IN_PROGRESS")])])
}

async fn one_execution() -> FakeServer {
    FakeServer::start(script()).await.expect("fake")
}

/// `htpasswd -nBC 10` prints `$2y$` hashes; bcrypt writes `$2b$`, the same algorithm.
fn htpasswd_hash(password: &str) -> String {
    bcrypt::hash(password, 10)
        .expect("hash")
        .replacen("$2b$", "$2y$", 1)
}

/// Starts flowwatch with `web` (its `[server.tls]` and users) on `port`, and waits until
/// `/livez` answers a client that passes `client` to curl.
async fn flowwatch(
    ws: &Workspace,
    fake: &FakeServer,
    port: u16,
    web: &str,
    client: &[&str],
) -> Child {
    let config = ws.config(&fake.endpoint_url(), POLLING, &script());
    let text = std::fs::read_to_string(&config).expect("config");
    ws.write("flowwatch.toml", &format!("{text}\n{web}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowwatch"));
    cmd.args(["run", "--config", &config.to_string_lossy()])
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("FLOWWATCH_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(ws.path("flowwatch.log")).expect("log"),
        ))
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn flowwatch");
    // Up once the probe answers over TLS.
    for _ in 0..100 {
        if curl(ws, port, "/livez", client).await.0 == 200 {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "flowwatch never answered over TLS:\n{}",
        std::fs::read_to_string(ws.path("flowwatch.log")).unwrap_or_default()
    );
}

/// `curl` against https://127.0.0.1:`port``path`, trusting the test CA: the HTTP status (0 when
/// no answer) and what curl printed (its `-v` lines included).
async fn curl(ws: &Workspace, port: u16, path: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "5", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .arg("--cacert")
        .arg(ws.path("ca.pem"))
        .args(args)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .await
        .expect("curl is installed (bash .ci/test installs it)");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn web(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}\n[server.basic_auth_users]\n{USER} = \"{}\"\n",
        cert.display(),
        key.display(),
        htpasswd_hash(PASSWORD)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_is_down() {
    let fake = one_execution().await;
    let ws = Workspace::new();
    let pki = Pki::new(&ws);
    let (cert, key) = pki.issue(&ws, "flowwatch", false);
    let port = free_port();
    let _flowwatch = flowwatch(&ws, &fake, port, &web(&cert, &key, ""), &[]).await;

    // The probes stay open; the rest needs credentials.
    assert_eq!(curl(&ws, port, "/readyz", &[]).await.0, 200);
    let (code, verbose) = curl(&ws, port, "/metrics", &[]).await;
    assert_eq!(code, 401);
    assert!(
        verbose.contains("www-authenticate: Basic realm=\"flowwatch\""),
        "{verbose}"
    );
    let good = format!("{USER}:{PASSWORD}");
    assert_eq!(curl(&ws, port, "/metrics", &["-u", &good]).await.0, 200);
    assert_eq!(curl(&ws, port, "/", &["-u", &good]).await.0, 200);
    assert_eq!(
        curl(&ws, port, "/metrics", &["-u", "prometheus:wrong"])
            .await
            .0,
        401
    );
    assert_eq!(
        curl(
            &ws,
            port,
            "/metrics",
            &["-u", &format!("nobody:{PASSWORD}")]
        )
        .await
        .0,
        401
    );

    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: {USER}\n      password: '{password}'\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            ca = ws.path("ca.pem").display()
        )
    };
    let (_prometheus, prometheus) = spawn_prometheus(
        &ws,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
            job("flowwatch", PASSWORD),
            job("wrong-password", "not it")
        ),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let up = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tokio::net::TcpStream::connect(prometheus).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never listened"
            );
            continue;
        }
        let (_, body) = http(prometheus, "GET", "/api/v1/query?query=up").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let up: Vec<(String, String)> = doc["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["metric"]["job"].as_str().unwrap_or_default().to_string(),
                    r["value"][1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if up.len() == 2 {
            break up;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not scrape both jobs: {body}\n{}",
            std::fs::read_to_string(ws.path("prometheus.log")).unwrap_or_default()
        );
    };
    assert!(
        up.contains(&("flowwatch".to_string(), "1".to_string())),
        "{up:?}"
    );
    assert!(
        up.contains(&("wrong-password".to_string(), "0".to_string())),
        "{up:?}"
    );
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_a_client_ca_and_a_rotated_certificate_is_served() {
    let fake = one_execution().await;
    let ws = Workspace::new();
    let pki = Pki::new(&ws);
    let (cert, key) = pki.issue(&ws, "flowwatch", false);
    let (client_cert, client_key) = pki.issue(&ws, "scraper", true);
    let client_ca = format!("client_ca_file = \"{}\"", ws.path("ca.pem").display());
    let port = free_port();
    let with_client = [
        "--cert".to_string(),
        client_cert.display().to_string(),
        "--key".to_string(),
        client_key.display().to_string(),
    ];
    let with_client: Vec<&str> = with_client.iter().map(String::as_str).collect();

    // Probes need a client certificate too: the TLS layer asks for it before any HTTP.
    let _flowwatch = flowwatch(
        &ws,
        &fake,
        port,
        &web(&cert, &key, &client_ca),
        &with_client,
    )
    .await;
    let (code, _) = curl(&ws, port, "/livez", &[]).await;
    assert_eq!(code, 0, "no client certificate, no connection");

    // cert-manager rotates the files in place: new connections get the new certificate.
    let (rotated_cert, rotated_key) = pki.issue(&ws, "rotated", false);
    std::fs::copy(&rotated_key, &key).expect("key");
    std::fs::copy(&rotated_cert, &cert).expect("cert");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, verbose) = curl(&ws, port, "/livez", &with_client).await;
        if code == 200 && verbose.contains("CN=rotated") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate is never served: {verbose}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    fake.stop().await;
}
