//! `nginx/voxmachina.conf` end to end: a real nginx (started by the test on free loopback ports,
//! with a throw-away self-signed certificate) in front of the real controller, which talks to the
//! OpenAI emulator.
//!
//! The site file is rendered with exact string replacements (ports, certificate paths, upstream
//! address, allowlist); each replacement must match, so editing the shipped file in a way the
//! test no longer covers fails here rather than silently testing something else.
//!
//! Needs `nginx` and `openssl` (`tools/setup.d/20-nginx.sh` installs them). Without them the test
//! fails when `CI` is set and otherwise prints a skip notice and passes.

mod media_bridge_common;
mod support;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Certificate, Client, StatusCode, redirect, tls};
use support::harness::{ADMIN_TOKEN, Harness, webhook_secret};
use voxmachina::calls::record::CallState;
use voxmachina::webhook::signature::Verifier;
use voxmachina_emulator::{EmuCallStatus, Script, WEBHOOK_USER_AGENT};

const SITE: &str = include_str!("../nginx/voxmachina.conf");

/// Caller asks a question, then for a person; the REFER takes.
const QUESTION_THEN_HUMAN: &str = r#"
[call]
from = '"Ada Lovelace" <sip:+14155550123@pstn.twilio.com>;tag=9fxced76sl'
to = "<sip:+18005550100@sip.api.openai.com>"
[agent]
replies = ["We are open nine to five."]
[[turn]]
caller = "Hi, what are your opening hours?"
[[turn]]
caller = "Thanks. Can I speak to a real person please?"
"#;

/// The nginx binary: `$VOXMACHINA_NGINX`, `nginx` on `PATH`, or `/usr/sbin/nginx`.
fn find_nginx() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VOXMACHINA_NGINX").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.is_file().then_some(p)
    })
}

fn has_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces every occurrence of `from`, which must occur.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "nginx/voxmachina.conf no longer contains {from:?}; update the test's rendering"
    );
    text.replace(from, to)
}

/// The shipped site with the test's ports, certificate, upstream and allowlist (127.0.0.2
/// only, so requests from 127.0.0.1 must be refused).
fn render_site(https: u16, http: u16, cert: &Path, key: &Path, upstream: &str) -> String {
    let mut s = SITE.to_string();
    s = replace(
        &s,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{https} ssl;"),
    );
    s = replace(&s, "listen [::]:443 ssl;", "");
    s = replace(&s, "listen 80;", &format!("listen 127.0.0.1:{http};"));
    s = replace(&s, "listen [::]:80;", "");
    s = replace(
        &s,
        "/etc/letsencrypt/live/voice.example.com/fullchain.pem",
        cert.to_str().unwrap(),
    );
    s = replace(
        &s,
        "/etc/letsencrypt/live/voice.example.com/privkey.pem",
        key.to_str().unwrap(),
    );
    s = replace(&s, "server 127.0.0.1:8080;", &format!("server {upstream};"));
    replace(&s, "allow 127.0.0.1;", "allow 127.0.0.2;")
}

/// nginx in the foreground, one process, killed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

fn start_nginx(bin: &Path, dir: &Path, site: &str, https: u16) -> Nginx {
    std::fs::write(dir.join("voxmachina.conf"), site).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/client_body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  include {d}/voxmachina.conf;\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let mut nginx = Nginx {
        child,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", https)).is_err() {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!("nginx exited with {status}:\n{}", nginx.error_log());
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not listen:\n{}",
            nginx.error_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    nginx
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // An end-entity certificate (webpki refuses a CA certificate as the server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn client(cert: &Path, source: Option<IpAddr>) -> Client {
    let pem = std::fs::read(cert).unwrap();
    Client::builder()
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .redirect(redirect::Policy::none())
        .no_proxy()
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Signs `body` as OpenAI does and POSTs it with OpenAI's headers (what
/// `Emulator::deliver` does, but with a client that trusts the test certificate).
async fn deliver(
    http: &Client,
    url: &str,
    webhook_id: &str,
    signed: &[u8],
    sent: &[u8],
) -> StatusCode {
    let ts = chrono::Utc::now().timestamp().to_string();
    let signature = Verifier::new(&webhook_secret(), 300)
        .unwrap()
        .sign(webhook_id, &ts, signed);
    http.post(url)
        .header("user-agent", WEBHOOK_USER_AGENT)
        .header("content-type", "application/json")
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .body(sent.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_site_terminates_tls_and_proxies_signed_webhooks() {
    let Some(nginx_bin) = find_nginx().filter(|_| has_openssl()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx or openssl missing on CI: tools/setup.d/20-nginx.sh should have installed them"
        );
        eprintln!(
            "SKIPPED deploy_nginx: nginx or openssl not installed (apt-get install nginx openssl)"
        );
        return;
    };
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (https, http) = (free_port(), free_port());
    let site = render_site(https, http, &cert, &key, &h.server.addr.to_string());
    let nginx = start_nginx(&nginx_bin, dir.path(), &site, https);
    let base = format!("https://127.0.0.1:{https}");
    let web = client(&cert, None);

    // TLS: health through the proxy, HSTS, TLS 1.2 refused (Mozilla modern = TLS 1.3 only).
    let resp = web.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", nginx.error_log());
    assert!(
        resp.headers()
            .get("strict-transport-security")
            .is_some_and(|v| v.to_str().unwrap().starts_with("max-age=")),
        "HSTS header: {:?}",
        resp.headers()
    );
    assert_eq!(resp.text().await.unwrap(), "ok\n");
    let tls12 = Client::builder()
        .add_root_certificate(Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap())
        .tls_version_max(tls::Version::TLS_1_2)
        .no_proxy()
        .build()
        .unwrap();
    let err = tls12
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect_err("a TLS 1.2-only client must not get through");
    assert!(err.is_connect(), "handshake failure expected: {err:?}");

    // Port 80: everything redirects to https.
    let resp = web
        .get(format!("http://127.0.0.1:{http}/openai/webhook?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        resp.headers()["location"],
        "https://127.0.0.1/openai/webhook?x=1"
    );

    // A signed webhook through nginx is verified by the controller (headers and body arrive
    // byte for byte), the call is accepted once and runs to its transfer.
    let url = format!("{base}/openai/webhook");
    let pending = h
        .emulator
        .new_call(Script::from_toml_str(QUESTION_THEN_HUMAN).unwrap());
    let status = deliver(&web, &url, "wh_through_nginx", &pending.body, &pending.body).await;
    assert_eq!(status, StatusCode::OK, "{}", nginx.error_log());
    let record = h.wait_final(&pending.call_id).await;
    assert_eq!(record.state, CallState::Transferred, "{record:#?}");
    let view = h.emulator.call(&pending.call_id).unwrap();
    assert_eq!(view.accept_count, 1);
    assert!(matches!(view.status, EmuCallStatus::Transferred { .. }));

    // One byte changed after signing: still refused behind the proxy.
    let other = h
        .emulator
        .new_call(Script::from_toml_str(QUESTION_THEN_HUMAN).unwrap());
    let mut tampered = other.body.to_vec();
    let i = tampered.len() - 3;
    tampered[i] ^= 1;
    let status = deliver(&web, &url, "wh_tampered", &other.body, &tampered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.emulator.call(&other.call_id).unwrap().accept_count, 0);

    // Only POST reaches the webhook; nginx refuses bodies above 64 KiB itself.
    let resp = web.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = web
        .post(&url)
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown paths are not proxied.
    let resp = web.get(format!("{base}/etc/passwd")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Operator surfaces: refused from 127.0.0.1 (not on the test allowlist) even with the admin
    // token; served to 127.0.0.2 (on it).
    for path in ["/metrics", "/v1/calls"] {
        let resp = web
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let ops = client(&cert, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    let resp = ops.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("voxmachina_webhooks_total")
    );
    let resp = ops
        .get(format!("{base}/v1/calls/{}", pending.call_id))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = ops.get(format!("{base}/v1/calls")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the allowlist does not replace the token"
    );

    // Rate limit (10/s, burst 20, no delay): of a burst of 60 requests from one address at
    // most 21 + 10/s of elapsed time pass; the rest get 429.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let (web, u) = (web.clone(), format!("{base}/readyz"));
        tasks.push(tokio::spawn(async move {
            web.get(u).send().await.unwrap().status()
        }));
    }
    let (mut passed, mut limited) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            StatusCode::OK => passed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let allowance = 21 + 10 * (started.elapsed().as_secs() + 1);
    assert!(limited > 0, "no request was rate limited ({passed} passed)");
    assert!(
        passed <= allowance,
        "{passed} passed, at most {allowance} allowed"
    );
    drop(nginx);
}

/// A TLS connector for the phone's `wss://` upgrade that trusts only the test certificate.
fn wss_connector(cert: &Path) -> tokio_tungstenite::Connector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config))
}

/// The Twilio path through nginx: the voice webhook and the Media Streams WebSocket upgrade
/// (`wss://`), both signed over the public URL that the controller rebuilds from nginx's
/// `X-Forwarded-Proto` / `X-Forwarded-Host` (no `[twilio] public_url` here); then audio flows both
/// ways through the proxy and the call ends cleanly. An upgrade signed for another URL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_site_upgrades_the_twilio_media_websocket() {
    use media_bridge_common::{CALLER, PCMU_LINE, call_sid};
    use voxmachina_emulator::phone::{Phone, PhoneConfig, stream_of_twiml};

    let Some(nginx_bin) = find_nginx().filter(|_| has_openssl()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx or openssl missing on CI: tools/setup.d/20-nginx.sh should have installed them"
        );
        eprintln!("SKIPPED deploy_nginx: nginx or openssl not installed");
        return;
    };
    let m = media_bridge_common::start(|c| c.twilio.public_url = String::new()).await;
    m.h.emulator.push_model_script(
        Script::new()
            .greeting("Hello, you are through the proxy.")
            .caller("Thanks, bye."),
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (https, http) = (free_port(), free_port());
    let site = render_site(https, http, &cert, &key, &m.h.server.addr.to_string());
    let nginx = start_nginx(&nginx_bin, dir.path(), &site, https);
    let web = client(&cert, None);
    // What Twilio signs: the public URL, which has no port (nginx's `$host` drops it, as a
    // public site on 443 has none).
    let public = "https://127.0.0.1";

    let sid = call_sid(77);
    let params = m.twilio.voice_params(&sid, CALLER, PCMU_LINE);
    let signature = voxmachina::twilio::signature::sign(
        &m.twilio.auth_token(),
        &format!("{public}/twilio/voice"),
        &params,
    );
    let resp = web
        .post(format!("https://127.0.0.1:{https}/twilio/voice"))
        .header("x-twilio-signature", signature)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", nginx.error_log());
    let twiml = resp.text().await.unwrap();
    let (stream_url, parameters) = stream_of_twiml(&twiml).expect("<Connect><Stream> TwiML");
    assert_eq!(stream_url, "wss://127.0.0.1/twilio/media", "{twiml}");

    let phone_config = |signed_url: &str| PhoneConfig {
        url: format!("wss://127.0.0.1:{https}/twilio/media"),
        signed_url: signed_url.to_string(),
        auth_token: m.twilio.auth_token(),
        account_sid: support::fake_twilio::ACCOUNT_SID.to_string(),
        call_sid: sid.clone(),
        parameters: parameters.clone(),
    };
    // Signed for the controller's own address instead of the public one: refused (HTTP 403
    // from the controller, passed through nginx).
    let refused = Phone::connect_with(
        phone_config(&format!("ws://{}/twilio/media", m.h.server.addr)),
        Some(wss_connector(&cert)),
    )
    .await
    .err()
    .expect("an upgrade signed for another URL must be refused");
    assert!(refused.to_string().contains("403"), "{refused}");

    let phone = Phone::connect_with(phone_config(&stream_url), Some(wss_connector(&cert)))
        .await
        .unwrap_or_else(|e| panic!("upgrade through nginx: {e}\n{}", nginx.error_log()));
    let session = m.session(1).await;
    let log = phone
        .wait_until(Duration::from_secs(10), |l| {
            !l.frames.is_empty() && !l.marks_echoed.is_empty()
        })
        .await
        .expect("agent audio and marks through the proxy");
    assert!(log.invalid.is_empty(), "{:?}", log.invalid);
    // Caller audio reaches the model through the proxy.
    phone.say(&media_bridge_common::fixture_speech());
    m.h.emulator
        .wait_for(&session, Duration::from_secs(10), |v| {
            v.caller_lines.len() == 1
        })
        .await
        .expect("the model heard the caller");
    assert!(m.h.emulator.media(&session).unwrap().appends > 0);
    phone.stop();
    let record = m.h.wait_final(&sid).await;
    assert_eq!(record.state, CallState::Ended, "{record:#?}");
    assert_eq!(
        record.media.unwrap().stream_sid.as_deref(),
        Some(log.stream_sid.as_str())
    );
    drop(nginx);
}
