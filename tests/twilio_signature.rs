//! `X-Twilio-Signature` against every test vector of Twilio's webhook security docs, plus the port
//! quirk, parameter order and repetition, tampering and the `bodySHA256` variant.

use voxmachina::config::Secret;
use voxmachina::twilio::signature::{
    body_sha256_hex, parse_form, sign, validate, validate_body_sha256, validate_websocket,
};

fn token() -> Secret {
    Secret::new("12345")
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The example of <https://www.twilio.com/docs/usage/security>.
fn docs_params() -> Vec<(String, String)> {
    params(&[
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675310"),
        ("Digits", "1234"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
    ])
}

/// twilio-python's `tests/unit/test_request_validator.py` (deliberately not in sorted order).
fn python_params() -> Vec<(String, String)> {
    params(&[
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Caller", "+14158675309"),
    ])
}

const PY_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

#[test]
fn docs_example_vector() {
    let url = "https://example.com/myapp.php?foo=1&bar=2";
    assert_eq!(
        sign(&token(), url, &docs_params()),
        "L/OH5YylLD5NRKLltdqwSvS0BnU="
    );
    assert!(validate(
        &token(),
        url,
        &docs_params(),
        "L/OH5YylLD5NRKLltdqwSvS0BnU="
    ));
}

#[test]
fn twilio_python_vectors_sign_exactly() {
    let cases = [
        (PY_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            "kvajT1Ptam85bY51eRf/AJRuM3w=",
        ),
        (
            "http://mycompany.com:80/myapp.php?foo=1&bar=2",
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        ),
        (
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        ),
    ];
    for (url, sig) in cases {
        assert_eq!(sign(&token(), url, &python_params()), sig, "{url}");
        assert!(validate(&token(), url, &python_params(), sig), "{url}");
    }
}

#[test]
fn port_is_removed_when_twilio_signed_without_it() {
    // Our configured URL carries :443, Twilio signed the URL without the port.
    assert!(validate(
        &token(),
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        &python_params(),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    ));
    // A non-default port is removed too (twilio-python remove_port).
    assert!(validate(
        &token(),
        "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
        &python_params(),
        &sign(
            &token(),
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &python_params()
        )
    ));
}

#[test]
fn default_port_is_added_when_twilio_signed_with_it() {
    assert!(validate(
        &token(),
        PY_URL,
        &python_params(),
        "kvajT1Ptam85bY51eRf/AJRuM3w="
    ));
    assert!(validate(
        &token(),
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        &python_params(),
        "0ZXoZLH/DfblKGATFgpif+LLRf4="
    ));
}

#[test]
fn only_the_default_port_is_added() {
    // Signed with :1234; validating the port-less URL only tries :80, so it must fail.
    assert!(!validate(
        &token(),
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        &python_params(),
        "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
    ));
    // https with :80 is not a default: the http vector does not validate on https.
    assert!(!validate(
        &token(),
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        &python_params(),
        "0ZXoZLH/DfblKGATFgpif+LLRf4="
    ));
}

#[test]
fn credentials_in_the_url_are_dropped() {
    assert!(validate(
        &token(),
        "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2",
        &python_params(),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    ));
}

#[test]
fn parameter_order_does_not_matter() {
    let mut p = python_params();
    p.reverse();
    assert!(validate(
        &token(),
        PY_URL,
        &p,
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    ));
    p.rotate_left(2);
    assert_eq!(sign(&token(), PY_URL, &p), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
}

#[test]
fn repeated_params_vector() {
    let p = params(&[
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]);
    assert_eq!(sign(&token(), PY_URL, &p), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    assert!(validate(
        &token(),
        PY_URL,
        &p,
        "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    ));
    // The duplicate value contributes once: dropping it changes nothing.
    let deduped = params(&[
        ("Digits", "1234"),
        ("Digits", "5678"),
        ("SidAccount", "AC123"),
        ("Sid", "CA123"),
    ]);
    assert!(validate(
        &token(),
        PY_URL,
        &deduped,
        "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    ));
    // But a missing distinct value does.
    let missing = params(&[
        ("Digits", "1234"),
        ("SidAccount", "AC123"),
        ("Sid", "CA123"),
    ]);
    assert!(!validate(
        &token(),
        PY_URL,
        &missing,
        "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    ));
}

#[test]
fn wrong_token_fails() {
    assert!(!validate(
        &Secret::new("54321"),
        PY_URL,
        &python_params(),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    ));
}

#[test]
fn tampering_fails() {
    let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    let mut p = python_params();
    p[1].1 = "1235".into();
    assert!(!validate(&token(), PY_URL, &p, sig), "tampered value");
    let mut p = python_params();
    p.push(("Extra".into(), "1".into()));
    assert!(!validate(&token(), PY_URL, &p, sig), "added param");
    let mut p = python_params();
    p.pop();
    assert!(!validate(&token(), PY_URL, &p, sig), "removed param");
    assert!(
        !validate(
            &token(),
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &python_params(),
            sig
        ),
        "tampered query"
    );
    assert!(
        !validate(
            &token(),
            "https://mycompany.com/myapp.php?bar=2&foo=1",
            &python_params(),
            sig
        ),
        "query is not re-sorted"
    );
    assert!(
        !validate(&token(), PY_URL, &python_params(), ""),
        "empty header"
    );
    assert!(
        !validate(
            &token(),
            PY_URL,
            &python_params(),
            "rsoydt4t1cutdk1pdd93/vvr8b8="
        ),
        "case matters"
    );
    // Name and value are concatenated without delimiters, so moving a character across the
    // boundary keeps the signature: documented Twilio behaviour, pinned here.
    let shifted = params(&[
        ("CallSid", "CA1234567890ABCDE"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Calle", "r+14158675309"),
    ]);
    assert!(validate(&token(), PY_URL, &shifted, sig));
}

#[test]
fn body_sha256_vector() {
    let body = br#"{"property": "value", "boolean": true}"#;
    let hash = body_sha256_hex(body);
    assert_eq!(
        hash,
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    );
    let url = format!("{PY_URL}&bodySHA256={hash}");
    assert_eq!(sign(&token(), &url, &[]), "a9nBmqA0ju/hNViExpshrM61xv4=");
    assert!(validate_body_sha256(
        &token(),
        &url,
        body,
        "a9nBmqA0ju/hNViExpshrM61xv4="
    ));
    // Port variants apply as for form webhooks.
    let with_port = url.replace("mycompany.com/", "mycompany.com:443/");
    assert!(validate_body_sha256(
        &token(),
        &with_port,
        body,
        "a9nBmqA0ju/hNViExpshrM61xv4="
    ));
}

#[test]
fn body_sha256_rejects_tampering() {
    let body = br#"{"property": "value", "boolean": true}"#;
    let url = format!("{PY_URL}&bodySHA256={}", body_sha256_hex(body));
    let sig = "a9nBmqA0ju/hNViExpshrM61xv4=";
    assert!(
        !validate_body_sha256(
            &token(),
            &url,
            br#"{"property": "value", "boolean": false}"#,
            sig
        ),
        "body changed, URL and signature intact"
    );
    assert!(
        !validate_body_sha256(&Secret::new("x"), &url, body, sig),
        "wrong token"
    );
    assert!(
        !validate_body_sha256(&token(), PY_URL, body, &sign(&token(), PY_URL, &[])),
        "no bodySHA256 in the URL"
    );
    // A forged body with a matching hash but the original signature fails on the signature.
    let forged = b"{}";
    let forged_url = format!("{PY_URL}&bodySHA256={}", body_sha256_hex(forged));
    assert!(!validate_body_sha256(&token(), &forged_url, forged, sig));
}

#[test]
fn websocket_upgrade_vector_and_trailing_slash() {
    let sig = "7PR3qMkpDyEJtMrVOY/LDyNq8J8=";
    assert_eq!(sign(&token(), "wss://example.com/media", &[]), sig);
    assert!(validate_websocket(&token(), "wss://example.com/media", sig));
    assert!(validate_websocket(
        &token(),
        "wss://example.com:443/media",
        sig
    ));
    // Twilio signed with a trailing slash the configured URL lacks.
    let slash_sig = sign(&token(), "wss://example.com/media/", &[]);
    assert!(validate_websocket(
        &token(),
        "wss://example.com/media",
        &slash_sig
    ));
    assert!(!validate(
        &token(),
        "wss://example.com/media",
        &[],
        &slash_sig
    ));
    assert!(!validate_websocket(
        &token(),
        "wss://example.com/other",
        sig
    ));
    assert!(!validate_websocket(
        &Secret::new("1234"),
        "wss://example.com/media",
        sig
    ));
}

#[test]
fn parse_form_keeps_order_repeats_and_whitespace() {
    let form = parse_form(b"To=%2B18005551212&Digits=1&Digits=2&Body=+hi+there+&Empty=");
    assert_eq!(
        form,
        params(&[
            ("To", "+18005551212"),
            ("Digits", "1"),
            ("Digits", "2"),
            ("Body", " hi there "),
            ("Empty", ""),
        ])
    );
}

/// The oracle for HMAC-SHA256 shared-key signatures: the `twilio` Python library's
/// `RequestValidator.compute_signature(url, params, "HMAC_SHA256")` when the contract venv
/// (`target/contract-venv`, `tools/setup.d/30-contract-venv.sh`) has a `twilio` that knows the
/// algorithm, else Python's own `hmac`/`hashlib`/`base64` over the same string (URL plus sorted
/// name+value pairs). Returns the signature and which oracle produced it; `None` without
/// python3 at all.
fn python_sha256_signature(
    key: &str,
    url: &str,
    params: &[(String, String)],
) -> Option<(String, &'static str)> {
    let script = r#"
import base64, hashlib, hmac, json, sys
a = json.loads(sys.stdin.read())
params = {}
for n, v in a["params"]:
    params.setdefault(n, []).append(v)
class Multi(dict):
    def getlist(self, k):
        return self[k]
try:
    from twilio.request_validator import RequestValidator, HMAC_SHA256
    sig = RequestValidator(a["key"]).compute_signature(a["url"], Multi(params), HMAC_SHA256)
    print("twilio " + sig)
except ImportError:
    s = a["url"] + "".join(n + v for n in sorted(params) for v in sorted(set(params[n])))
    mac = hmac.new(a["key"].encode(), s.encode(), hashlib.sha256).digest()
    print("hmac " + base64.b64encode(mac).decode())
"#;
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/contract-venv/bin/python");
    let python = if venv.exists() {
        venv.into_os_string()
    } else {
        "python3".into()
    };
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let input = serde_json::json!({ "key": key, "url": url, "params": params });
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (oracle, sig) = text.trim().split_once(' ').unwrap();
    let oracle = if oracle == "twilio" {
        "twilio RequestValidator"
    } else {
        "python hmac"
    };
    Some((sig.to_string(), oracle))
}

#[test]
fn hmac_sha256_shared_key_signatures_match_the_reference() {
    use voxmachina::twilio::signature::{Algorithm, Scheme, sign_with, validate_with};
    let key = Secret::new("shared-key-secret-0123456789abcdef");
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let mut cases = vec![docs_params(), python_params(), Vec::new()];
    cases.push(params(&[("b", "2"), ("a", "é ü"), ("b", "1"), ("b", "2")]));
    let mut checked = 0;
    for p in &cases {
        let ours = sign_with(Algorithm::HmacSha256, &key, url, p);
        assert_eq!(ours.len(), 44);
        if let Some((theirs, oracle)) = python_sha256_signature(key.expose(), url, p) {
            assert_eq!(ours, theirs, "{oracle} disagrees for {p:?}");
            eprintln!("HMAC-SHA256 vector checked against {oracle}");
            checked += 1;
        }
        assert!(validate_with(Algorithm::HmacSha256, &key, url, p, &ours));
        // Port quirk as for SHA-1: signed with :443, validated without.
        let with_port = sign_with(
            Algorithm::HmacSha256,
            &key,
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            p,
        );
        assert!(validate_with(
            Algorithm::HmacSha256,
            &key,
            url,
            p,
            &with_port
        ));
        // Neither the SHA-1 check nor another key accepts it.
        assert!(!validate_with(Algorithm::HmacSha1, &key, url, p, &ours));
        assert!(!validate_with(
            Algorithm::HmacSha256,
            &token(),
            url,
            p,
            &ours
        ));
        let auth = token();
        let scheme = Scheme::for_request(
            Some("key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"),
            &auth,
            Some(&key),
        )
        .unwrap();
        assert!(scheme.validate(url, p, &ours));
    }
    assert!(
        checked > 0 || which_python_missing(),
        "no python3 to compute reference vectors"
    );
}

fn which_python_missing() -> bool {
    std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
}

#[test]
fn signature_settings_header_picks_key_and_algorithm() {
    use voxmachina::twilio::signature::{Algorithm, Scheme, SchemeError};
    let auth = token();
    let shared = Secret::new("shared");
    let pick = |h: Option<&str>, k: Option<&Secret>| {
        Scheme::for_request(h, &auth, k).map(|s| (s.key.expose().to_string(), s.algorithm))
    };
    assert_eq!(
        pick(None, Some(&shared)),
        Ok(("12345".into(), Algorithm::HmacSha1))
    );
    assert_eq!(
        pick(Some("  "), Some(&shared)),
        Ok(("12345".into(), Algorithm::HmacSha1))
    );
    assert_eq!(
        pick(Some("key=k1,algorithm=HMAC_SHA256"), Some(&shared)),
        Ok(("shared".into(), Algorithm::HmacSha256))
    );
    assert_eq!(
        pick(Some(" algorithm = hmac_sha256 , key=k1"), Some(&shared)),
        Ok(("shared".into(), Algorithm::HmacSha256))
    );
    assert_eq!(
        pick(Some("key=k1"), Some(&shared)),
        Ok(("shared".into(), Algorithm::HmacSha1)),
        "no algorithm= means HMAC_SHA1 (twilio-python get_signature_algorithm)"
    );
    assert_eq!(
        pick(Some("key=k1,algorithm=HMAC_SHA512"), Some(&shared)),
        Err(SchemeError::UnsupportedAlgorithm("HMAC_SHA512".into()))
    );
    assert_eq!(
        pick(Some("key=k1,algorithm=HMAC_SHA256"), None),
        Err(SchemeError::NoSharedKey)
    );
    assert_eq!(
        pick(
            Some("key=k1,algorithm=HMAC_SHA256"),
            Some(&Secret::new(" "))
        ),
        Err(SchemeError::NoSharedKey),
        "a blank key never verifies"
    );
}
