//! `X-Twilio-Signature`: validating Twilio's webhooks and Media Streams upgrades, and signing
//! requests the way Twilio does (for the test fakes).
//!
//! Sources: <https://www.twilio.com/docs/usage/webhooks/webhooks-security> and
//! <https://www.twilio.com/docs/usage/security> (algorithm, URL normalisation, test vectors),
//! "Sign webhooks with shared keys" (<https://www.twilio.com/docs/usage/webhooks/webhook-shared-keys>),
//! twilio-python `twilio/request_validator.py` (`RequestValidator`, `get_signature_algorithm`,
//! 9.13.0) and twilio-node `src/webhooks/webhooks.ts` (the official libraries' port and
//! `bodySHA256` quirks), and <https://www.twilio.com/docs/voice/twiml/stream> (the WebSocket
//! upgrade is signed too).
//!
//! The signature is `base64(HMAC-SHA1(auth_token, data))` (standard alphabet, padded), where
//! `data` is the full URL Twilio requested (scheme, host, path and query string, exactly as
//! configured) followed, for a form-encoded POST, by every parameter as `name + value` with no
//! delimiters, sorted by name in byte order. A name sent several times contributes each of its
//! *distinct* values once, in sorted order (twilio-python `compute_signature`,
//! `sorted(set(values))`; twilio-node `Array.from(new Set(values)).sort()`).
//!
//! Validation follows twilio-python and twilio-node: Twilio's back end is inconsistent
//! about the port, so the signature is accepted if it matches the URL **without** the port, or
//! **with** the scheme's default port added (`:443` for `https`/`wss`, `:80` for `http`/`ws`) when
//! the URL has none. `user:pass@` credentials are dropped before signing. The URL is never
//! re-serialised: path and query are used byte for byte as given, so there is no
//! "legacy querystring" variant to try (twilio-node's third and fourth URLs exist only because it
//! re-encodes the query). Comparison is constant time ([`subtle`]).
//!
//! Build the URL from a configured public base URL plus the request's path and query, not from
//! the `Host` header: proxies and TLS terminators change scheme, host or port.
//!
//! **Shared-key signing (HMAC-SHA256).** An account can make Twilio sign a webhook with a
//! SharedKey it created instead of the Auth Token (a Webhook Setting applied by a Webhook Rule,
//! Twilio's Webhooks configuration API, public beta). Such a request carries
//! [`SETTINGS_HEADER`] `X-Twilio-Webhooks-Signature-Settings: key=<SharedKey id>,algorithm=HMAC_SHA256`,
//! and `X-Twilio-Signature` is then `base64(HMAC-<algorithm>(shared key secret, data))` over the
//! same `data` (URL plus sorted parameters; only the hash and the key change). Twilio's pages do
//! not spell out the header grammar, so [`Scheme::for_request`] does what the `twilio` Python
//! library (`get_signature_algorithm`, `RequestValidator.validate(..., algorithm)`) and
//! twilio-node (`getSignatureAlgorithm`, `webhook({sharedKeySecret})`) do: the header absent or
//! empty means the Auth Token with HMAC-SHA1; present, it means the shared key with the
//! `algorithm=` it names (`HMAC_SHA1` when it names none; case-insensitive), and an unknown
//! algorithm fails. Unlike twilio-node (which answers 500), a header that arrives while no shared
//! key is configured fails validation (fail closed, 403).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Name of the HTTP header carrying the signature (case-insensitive on the wire).
pub const HEADER: &str = "X-Twilio-Signature";

/// Header Twilio adds to webhooks signed with a SharedKey: `key=<SharedKey id>,algorithm=<name>`
/// (twilio-python `SIGNATURE_SETTINGS_HEADER`).
pub const SETTINGS_HEADER: &str = "X-Twilio-Webhooks-Signature-Settings";

/// The HMAC of a signature (the `algorithm=` of [`SETTINGS_HEADER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `HMAC_SHA1`: the classic Auth Token signature, 20-byte digest (28 base64 characters).
    HmacSha1,
    /// `HMAC_SHA256`: shared-key signing, 32-byte digest (44 base64 characters).
    HmacSha256,
}

impl Algorithm {
    /// The name Twilio uses in [`SETTINGS_HEADER`].
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "HMAC_SHA1",
            Algorithm::HmacSha256 => "HMAC_SHA256",
        }
    }
}

/// Why a request's signature scheme cannot be checked (the request must be refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// [`SETTINGS_HEADER`] names an algorithm we do not know (the name, at most 32 characters).
    #[error("unsupported webhook signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// [`SETTINGS_HEADER`] is present but no shared key is configured.
    #[error("{SETTINGS_HEADER} present but no Twilio webhook shared key is configured")]
    NoSharedKey,
}

/// The key and HMAC a request was signed with.
#[derive(Debug, Clone, Copy)]
pub struct Scheme<'a> {
    /// The Auth Token or the shared key secret.
    pub key: &'a Secret,
    /// The HMAC.
    pub algorithm: Algorithm,
}

impl<'a> Scheme<'a> {
    /// The scheme for a request whose [`SETTINGS_HEADER`] value is `settings` (`None` when
    /// absent): absent or blank, the Auth Token with HMAC-SHA1; otherwise the shared key with the
    /// header's `algorithm=` (default `HMAC_SHA1`, names compared case-insensitively, other
    /// `name=value` parts such as `key=` ignored).
    ///
    /// # Errors
    /// [`SchemeError::NoSharedKey`] when the header is present and `shared_key` is `None` (or
    /// blank), [`SchemeError::UnsupportedAlgorithm`] for an algorithm other than `HMAC_SHA1` and
    /// `HMAC_SHA256`.
    pub fn for_request(
        settings: Option<&str>,
        auth_token: &'a Secret,
        shared_key: Option<&'a Secret>,
    ) -> Result<Self, SchemeError> {
        let Some(settings) = settings.filter(|s| !s.trim().is_empty()) else {
            return Ok(Self {
                key: auth_token,
                algorithm: Algorithm::HmacSha1,
            });
        };
        let name = settings
            .split(',')
            .filter_map(|part| part.split_once('='))
            .find(|(n, v)| n.trim() == "algorithm" && !v.trim().is_empty())
            .map_or("HMAC_SHA1", |(_, v)| v.trim());
        let algorithm = if name.eq_ignore_ascii_case("HMAC_SHA1") {
            Algorithm::HmacSha1
        } else if name.eq_ignore_ascii_case("HMAC_SHA256") {
            Algorithm::HmacSha256
        } else {
            return Err(SchemeError::UnsupportedAlgorithm(
                name.chars().take(32).collect(),
            ));
        };
        let key = shared_key
            .filter(|k| !k.expose().trim().is_empty())
            .ok_or(SchemeError::NoSharedKey)?;
        Ok(Self { key, algorithm })
    }

    /// [`validate_with`] under this scheme.
    pub fn validate(&self, url: &str, params: &[(String, String)], signature: &str) -> bool {
        validate_with(self.algorithm, self.key, url, params, signature)
    }

    /// [`validate_websocket_with`] under this scheme.
    pub fn validate_websocket(&self, url: &str, signature: &str) -> bool {
        validate_websocket_with(self.algorithm, self.key, url, signature)
    }
}

/// Name of the query parameter Twilio adds to JSON-bodied webhooks: the lowercase hex SHA-256 of
/// the raw body.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// The `X-Twilio-Signature` value Twilio would send for `url` (used exactly as given: no port or
/// credential normalisation) and the form parameters `params` (in any order; repeated names
/// allowed).
///
/// For a GET, a JSON-bodied POST (the URL then carries `bodySHA256`) or a WebSocket upgrade, pass
/// no params. Returns base64 of the 20-byte HMAC-SHA1 digest (28 characters).
pub fn sign(auth_token: &Secret, url: &str, params: &[(String, String)]) -> String {
    sign_with(Algorithm::HmacSha1, auth_token, url, params)
}

/// Like [`sign`] with the HMAC `algorithm` and `key` (the Auth Token, or the shared key secret
/// for [`Algorithm::HmacSha256`] / shared-key signing). Base64 of the digest: 28 characters for
/// SHA-1, 44 for SHA-256.
pub fn sign_with(
    algorithm: Algorithm,
    key: &Secret,
    url: &str,
    params: &[(String, String)],
) -> String {
    fn digest<M: Mac + hmac::digest::KeyInit>(
        key: &Secret,
        url: &str,
        params: &[(String, String)],
    ) -> String {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes any key");
        mac.update(url.as_bytes());
        for (name, value) in canonical_params(params) {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
        B64.encode(mac.finalize().into_bytes())
    }
    match algorithm {
        Algorithm::HmacSha1 => digest::<HmacSha1>(key, url, params),
        Algorithm::HmacSha256 => digest::<HmacSha256>(key, url, params),
    }
}

/// The parameters in signing order: names sorted in byte order; each name's distinct values
/// sorted in byte order (duplicates dropped,  "Multi-valued params").
fn canonical_params(params: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Validates a form-encoded webhook (or a GET, with no params): true if `signature` (the
/// `X-Twilio-Signature` header value) matches `url` without its port or with the default port
/// added, and `params` (all received POST parameters, never a fixed list, ).
///
/// `url` must be the full public URL Twilio requested, query string included. Constant time per
/// candidate URL.
pub fn validate(
    auth_token: &Secret,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    validate_with(Algorithm::HmacSha1, auth_token, url, params, signature)
}

/// Like [`validate`] with the HMAC `algorithm` and `key` ([`Scheme::for_request`] picks them).
pub fn validate_with(
    algorithm: Algorithm,
    key: &Secret,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let mut ok = false;
    for candidate in url_candidates(url) {
        // No short-circuit: every candidate is computed and compared.
        ok |= constant_time_eq(&sign_with(algorithm, key, &candidate, params), signature);
    }
    ok
}

/// Validates a JSON-bodied webhook (): `url` must carry the `bodySHA256` query
/// parameter; it must equal the lowercase hex SHA-256 of `body` (the raw bytes as received), and
/// `signature` must match `url` (port variants as in [`validate`]) with **no** parameters
/// appended.
///
/// False when `bodySHA256` is absent from the query, as twilio-python treats such a request.
pub fn validate_body_sha256(auth_token: &Secret, url: &str, body: &[u8], signature: &str) -> bool {
    let Some(expected) = query_param(url, BODY_SHA256_PARAM) else {
        return false;
    };
    let body_ok = constant_time_eq(&body_sha256_hex(body), &expected);
    let sig_ok = validate(auth_token, url, &[], signature);
    body_ok & sig_ok
}

/// Validates the signature on a Media Streams WebSocket upgrade (a GET; ): computed over the
/// `wss://` URL exactly as written in the TwiML `<Stream url>`, with no params and no body.
/// Twilio's security page adds: if that fails, try again with a trailing `/` appended, which this
/// does (port variants as in [`validate`] for both).
pub fn validate_websocket(auth_token: &Secret, url: &str, signature: &str) -> bool {
    validate_websocket_with(Algorithm::HmacSha1, auth_token, url, signature)
}

/// Like [`validate_websocket`] with the HMAC `algorithm` and `key`.
pub fn validate_websocket_with(
    algorithm: Algorithm,
    key: &Secret,
    url: &str,
    signature: &str,
) -> bool {
    let mut ok = validate_with(algorithm, key, url, &[], signature);
    if !url.ends_with('/') {
        ok |= validate_with(algorithm, key, &format!("{url}/"), &[], signature);
    }
    ok
}

/// Lowercase hex SHA-256 of `body`: the value Twilio puts in `bodySHA256` (64 characters).
pub fn body_sha256_hex(body: &[u8]) -> String {
    to_hex(&Sha256::digest(body))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Domain separation of [`call_sid_binding`]: the MAC of a `CallSid` can never equal a MAC of
/// anything else keyed with the Auth Token.
const CALL_SID_BINDING_CONTEXT: &[u8] = b"voxmachina twilio CallSid binding v1\n";

/// Our binding of a Twilio `CallSid`: lowercase hex (64 characters) of
/// `HMAC-SHA256(auth_token, "voxmachina twilio CallSid binding v1\n" + call_sid)` (RFC 2104,
/// FIPS 180-4). Only the holder of the Auth Token can produce it; the `<Dial><Sip>` URI we
/// generate carries it next to the `CallSid`
/// ([`crate::escalation::twilio_dial::dial_sip_twiml`]). `None` when the key is empty or blank
/// (fail closed: no binding is made with an empty key).
pub fn call_sid_binding(auth_token: &Secret, call_sid: &str) -> Option<String> {
    if auth_token.expose().trim().is_empty() {
        return None;
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(auth_token.expose().as_bytes()).expect("HMAC takes any key");
    mac.update(CALL_SID_BINDING_CONTEXT);
    mac.update(call_sid.as_bytes());
    Some(to_hex(&mac.finalize().into_bytes()))
}

/// True when `binding` is [`call_sid_binding`] of `call_sid` (constant-time comparison; false
/// for an empty key).
pub fn verify_call_sid_binding(auth_token: &Secret, call_sid: &str, binding: &str) -> bool {
    call_sid_binding(auth_token, call_sid).is_some_and(|want| constant_time_eq(&want, binding))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Decodes an `application/x-www-form-urlencoded` body into name/value pairs in wire order,
/// repeated names kept, values not trimmed ( warns about frameworks that trim). Feed the
/// result to [`validate`].
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// First value of query parameter `name` in `url` (percent-decoded), if any.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The URLs a signature is checked against, without duplicates: the URL without credentials and
/// port, then with the scheme's default port added when it had none (twilio-python
/// `remove_port`/`add_port`). A URL that does not parse as `scheme://authority...` is tried only
/// as given.
pub fn url_candidates(url: &str) -> Vec<String> {
    let Some(parts) = UrlParts::split(url) else {
        return vec![url.to_string()];
    };
    let without_port = format!("{}://{}{}", parts.scheme, parts.host, parts.rest);
    let port = parts.port.or_else(|| default_port(parts.scheme));
    let mut out = vec![without_port];
    if let Some(port) = port {
        let with_port = format!("{}://{}:{}{}", parts.scheme, parts.host, port, parts.rest);
        if !out.contains(&with_port) {
            out.push(with_port);
        }
    }
    out
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some("443"),
        "http" | "ws" => Some("80"),
        _ => None,
    }
}

/// `scheme://[userinfo@]host[:port]rest`, sliced without re-encoding anything.
struct UrlParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<&'a str>,
    /// Path, query and fragment exactly as given (may be empty).
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> Option<Self> {
        let (scheme, after) = url.split_once("://")?;
        if scheme.is_empty() {
            return None;
        }
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, port) = if hostport.starts_with('[') {
            // IPv6 literal: `[::1]` or `[::1]:8443`.
            let close = hostport.find(']')?;
            let (host, tail) = hostport.split_at(close + 1);
            (host, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            Some("") | None => None,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p),
            Some(_) => return None,
        };
        Some(Self {
            scheme,
            host,
            port,
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sid_binding_is_keyed_and_fails_closed() {
        let key = Secret::new("12345");
        let sid = "CA0123456789abcdef0123456789abcdef";
        let mac = call_sid_binding(&key, sid).unwrap();
        assert_eq!(mac.len(), 64);
        assert!(
            mac.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(verify_call_sid_binding(&key, sid, &mac));
        assert!(!verify_call_sid_binding(
            &key,
            "CA0123456789abcdef0123456789abcdee",
            &mac
        ));
        assert!(!verify_call_sid_binding(&Secret::new("12346"), sid, &mac));
        assert!(!verify_call_sid_binding(&key, sid, &mac[..63]));
        assert!(!verify_call_sid_binding(&key, sid, &mac.to_uppercase()));
        assert!(!verify_call_sid_binding(&key, sid, ""));
        // Not a bare HMAC of the CallSid: the context separates it.
        let mut bare = Hmac::<Sha256>::new_from_slice(b"12345").unwrap();
        bare.update(sid.as_bytes());
        assert_ne!(to_hex(&bare.finalize().into_bytes()), mac);
        for empty in ["", "  \t"] {
            let k = Secret::new(empty);
            assert_eq!(call_sid_binding(&k, sid), None);
            assert!(!verify_call_sid_binding(&k, sid, ""));
        }
    }

    #[test]
    fn candidates_add_and_remove_ports() {
        assert_eq!(
            url_candidates("https://example.com/a?b=1"),
            ["https://example.com/a?b=1", "https://example.com:443/a?b=1"]
        );
        assert_eq!(
            url_candidates("http://example.com:1234/a"),
            ["http://example.com/a", "http://example.com:1234/a"]
        );
        assert_eq!(
            url_candidates("wss://u:p@example.com"),
            ["wss://example.com", "wss://example.com:443"]
        );
        assert_eq!(
            url_candidates("https://[::1]:8443/x"),
            ["https://[::1]/x", "https://[::1]:8443/x"]
        );
        assert_eq!(url_candidates("not a url"), ["not a url"]);
        assert_eq!(url_candidates("ftp://h/x"), ["ftp://h/x"]);
    }

    #[test]
    fn query_param_is_found_and_decoded() {
        assert_eq!(
            query_param("https://h/p?a=1&bodySHA256=ab%63#frag", "bodySHA256").as_deref(),
            Some("abc")
        );
        assert_eq!(query_param("https://h/p", "bodySHA256"), None);
    }

    #[test]
    fn canonical_order_dedupes_values_per_name() {
        let p = |n: &str, v: &str| (n.to_string(), v.to_string());
        let params = [
            p("b", "2"),
            p("a", "9"),
            p("b", "1"),
            p("b", "2"),
            p("B", "0"),
        ];
        assert_eq!(
            canonical_params(&params),
            [("B", "0"), ("a", "9"), ("b", "1"), ("b", "2")]
        );
    }
}
