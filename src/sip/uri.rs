//! `sip:`/`sips:` URIs (RFC 3261 §19.1, §25.1), `tel:` URIs (RFC 3966 §3) and name-addrs
//! (RFC 3261 §20.10).

use std::net::Ipv6Addr;

use super::SipError;
use super::number::{E164, is_visual_separator, normalize_number};

/// A parameter list: `(name, value)` in input order; `None` for a flag parameter such as `;lr`.
/// Names keep their case; quoted header-parameter values are unquoted.
pub type Params = Vec<(String, Option<String>)>;

/// A parsed URI from a SIP header: SIP/SIPS (RFC 3261 §19.1) or telephone (RFC 3966).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipUri {
    /// `sip:` or `sips:` (`secure = true`).
    Sip {
        /// `true` for `sips:`.
        secure: bool,
        /// The user part, percent-decoded (RFC 3261 §19.1.4); the password, if any, is dropped.
        /// For `;user=phone` URIs it may carry telephone-subscriber parameters
        /// (`+1-212-555-1212;postd=pp22`).
        user: Option<String>,
        /// Host name, IPv4 address or IPv6 reference (with its brackets), as written.
        host: String,
        /// Port, when written.
        port: Option<u16>,
        /// URI parameters (`;transport=tls`, `;user=phone`, ...), text as written.
        params: Params,
    },
    /// `tel:` (RFC 3966).
    Tel {
        /// The number with visual separators removed; a global number keeps its leading `+`
        /// (`+14155550123`), a local one does not (`5550123`).
        number: String,
        /// `true` for a global number (`+...`), `false` for a local one (which has a
        /// `phone-context` parameter).
        global: bool,
        /// The parameters (`phone-context`, `ext`, `isub`, ...), text as written.
        params: Params,
    },
}

impl SipUri {
    /// Parses `sip:`, `sips:` or `tel:` (scheme case-insensitive). Surrounding whitespace is
    /// ignored; angle brackets are not accepted here (see [`parse_name_addr`]).
    ///
    /// SIP URIs go through `rsip::Uri` for the host, port and parameters. rsip 0.4 mis-parses
    /// user parts containing `.` or `;` and cannot read IPv6 references, and it silently ignores
    /// trailing input, so the user part, `?headers` and IPv6 hosts are split off here first and
    /// every character is checked against RFC 3261 §25.1. URI headers (`?subject=...`) are
    /// accepted and dropped. `tel:` URIs, which rsip cannot parse at all, use a parser for the
    /// RFC 3966 §3 grammar: a local number must carry `phone-context` (RFC 3966 §5.1.5).
    ///
    /// # Errors
    /// [`SipError::UnsupportedScheme`] for any other scheme; [`SipError::InvalidUri`] for a
    /// malformed URI.
    pub fn parse(s: &str) -> Result<SipUri, SipError> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| SipError::UnsupportedScheme {
                input: s.to_owned(),
            })?;
        let err = |reason: String| SipError::InvalidUri {
            input: s.to_owned(),
            reason,
        };
        if scheme.eq_ignore_ascii_case("sip") {
            parse_sip(false, rest).map_err(err)
        } else if scheme.eq_ignore_ascii_case("sips") {
            parse_sip(true, rest).map_err(err)
        } else if scheme.eq_ignore_ascii_case("tel") {
            parse_tel(rest).map_err(err)
        } else {
            Err(SipError::UnsupportedScheme {
                input: s.to_owned(),
            })
        }
    }

    /// The E.164 number this URI names, if any:
    /// - `tel:`: the global number (`None` for local numbers);
    /// - `sip:`/`sips:` with `;user=phone`: the user part read as an RFC 3966
    ///   telephone-subscriber, falling back to [`normalize_number`];
    /// - other `sip:`/`sips:`: the user part (up to any `;`) through [`normalize_number`].
    pub fn e164(&self) -> Option<E164> {
        match self {
            SipUri::Tel {
                number,
                global: true,
                ..
            } => E164::parse(number).ok(),
            SipUri::Tel { global: false, .. } => None,
            SipUri::Sip { user, params, .. } => {
                let user = user.as_deref()?;
                let phone = params.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("user")
                        && v.as_deref()
                            .is_some_and(|v| v.eq_ignore_ascii_case("phone"))
                });
                if phone {
                    if let Ok(SipUri::Tel {
                        number,
                        global: true,
                        ..
                    }) = parse_tel(user)
                    {
                        if let Ok(n) = E164::parse(&number) {
                            return Some(n);
                        }
                    }
                }
                let number_part = user.split(';').next().unwrap_or(user);
                normalize_number(number_part)
            }
        }
    }

    /// The URI parameter `name` (case-insensitive): `Some(Some(v))`, `Some(None)` for a flag,
    /// `None` when absent.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        let params = match self {
            SipUri::Sip { params, .. } | SipUri::Tel { params, .. } => params,
        };
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// RFC 3261 §25.1 `unreserved` (alphanum / mark).
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// RFC 3261 §25.1 `user` characters (unreserved / escaped / user-unreserved). `#` is also
/// allowed: carriers put unescaped `*67#`-style strings in user parts.
fn is_user_char(c: char) -> bool {
    is_unreserved(c) || "%&=+$,;?/#".contains(c)
}

/// RFC 3261 §25.1 `paramchar` (param-unreserved / unreserved / escaped).
fn is_paramchar(c: char) -> bool {
    is_unreserved(c) || "[]/:&+$%".contains(c)
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Decodes `%XX` escapes; `Err` on a truncated or non-hex escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("percent escapes in {s:?} are not UTF-8"))
}

/// Splits `;a=b;c` (the leading `;` already removed by the caller or not) into URI params,
/// checking RFC 3261 `paramchar`s. Empty input gives no params.
fn parse_uri_params(s: &str) -> Result<Params, String> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for part in s.split(';') {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (part, None),
        };
        if name.is_empty() || !name.chars().all(is_paramchar) {
            return Err(format!("bad parameter name {name:?}"));
        }
        if let Some(v) = value {
            if v.is_empty() || !v.chars().all(is_paramchar) {
                return Err(format!("bad value for parameter {name:?}"));
            }
        }
        out.push((name.to_owned(), value.map(str::to_owned)));
    }
    Ok(out)
}

/// Parses what follows `sip:`/`sips:`.
fn parse_sip(secure: bool, rest: &str) -> Result<SipUri, String> {
    if rest.is_empty() {
        return Err("nothing after the scheme".into());
    }
    if let Some(c) = rest
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(*c))
    {
        return Err(format!("character {c:?} is not allowed in a SIP URI"));
    }
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let user = match userinfo {
        None => None,
        Some(ui) => {
            let user = ui.split_once(':').map_or(ui, |(u, _password)| u);
            if user.is_empty() {
                return Err("empty user part before '@'".into());
            }
            if let Some(c) = user.chars().find(|&c| !is_user_char(c)) {
                return Err(format!("character {c:?} is not allowed in the user part"));
            }
            Some(percent_decode(user)?)
        }
    };
    // URI headers (`?name=value&...`) are allowed by RFC 3261 but mean nothing here.
    let hostpart = hostpart.split_once('?').map_or(hostpart, |(h, _headers)| h);
    let (hostport, params_str) = hostpart.split_once(';').unwrap_or((hostpart, ""));
    let params = parse_uri_params(params_str)?;

    let (host, port) = if hostport.starts_with('[') {
        // rsip 0.4 splits host and port at the first ':', so IPv6 references are done here.
        let end = hostport
            .find(']')
            .ok_or_else(|| "unterminated IPv6 reference".to_string())?;
        let addr = &hostport[1..end];
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("bad IPv6 address {addr:?}"))?;
        let port = match &hostport[end + 1..] {
            "" => None,
            p => Some(parse_port(
                p.strip_prefix(':').ok_or("junk after IPv6 reference")?,
            )?),
        };
        (hostport[..=end].to_owned(), port)
    } else {
        let (host, port_str) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(format!("character {c:?} is not allowed in a host name"));
        }
        let port = port_str.map(parse_port).transpose()?;
        // Host, port and parameters through rsip (the user part is already split off because
        // rsip's user tokenizer stops at the first '.').
        let scheme = if secure { "sips" } else { "sip" };
        let mut for_rsip = format!("{scheme}:{hostport}");
        if !params_str.is_empty() {
            for_rsip.push(';');
            for_rsip.push_str(params_str);
        }
        let parsed = rsip::Uri::try_from(for_rsip.as_str()).map_err(|e| format!("rsip: {e}"))?;
        let rsip_host = parsed.host().to_string();
        if !rsip_host.eq_ignore_ascii_case(host) || parsed.params.len() != params.len() {
            return Err(format!(
                "rsip read host {rsip_host:?} with {} parameter(s)",
                parsed.params.len()
            ));
        }
        let rsip_port = parsed.port().map(|p| *p.value());
        if rsip_port != port {
            return Err(format!("rsip read port {rsip_port:?}"));
        }
        (host.to_owned(), port)
    };
    Ok(SipUri::Sip {
        secure,
        user,
        host,
        port,
        params,
    })
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port {p:?}"));
    }
    p.parse::<u16>()
        .map_err(|_| format!("port {p} out of range"))
}

/// Parses what follows `tel:` (RFC 3966 §3 `telephone-subscriber`).
fn parse_tel(rest: &str) -> Result<SipUri, String> {
    let (number_part, params_str) = rest.split_once(';').unwrap_or((rest, ""));
    let params = if params_str.is_empty() {
        Vec::new()
    } else {
        let mut out = Vec::new();
        for part in params_str.split(';') {
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (part, None),
            };
            // pname = 1*( alphanum / "-" ); pvalue = 1*paramchar
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("bad tel parameter name {name:?}"));
            }
            if let Some(v) = value {
                if v.is_empty() || !v.chars().all(is_paramchar) {
                    return Err(format!("bad value for tel parameter {name:?}"));
                }
            }
            out.push((name.to_owned(), value.map(str::to_owned)));
        }
        out
    };
    let has_context = params
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("phone-context") && v.is_some());
    let visual = |c: char| c != ' ' && is_visual_separator(c);
    if let Some(digits) = number_part.strip_prefix('+') {
        // global-number-digits = "+" *phonedigit DIGIT *phonedigit
        if let Some(c) = digits.chars().find(|&c| !(c.is_ascii_digit() || visual(c))) {
            return Err(format!("character {c:?} is not allowed in a global number"));
        }
        let number: String = std::iter::once('+')
            .chain(digits.chars().filter(char::is_ascii_digit))
            .collect();
        if number.len() < 2 {
            return Err("a global number needs at least one digit".into());
        }
        Ok(SipUri::Tel {
            number,
            global: true,
            params,
        })
    } else {
        // local-number-digits = *phonedigit-hex (HEXDIG / "*" / "#") *phonedigit-hex
        let is_hex = |c: char| c.is_ascii_hexdigit() || c == '*' || c == '#';
        if let Some(c) = number_part.chars().find(|&c| !(is_hex(c) || visual(c))) {
            return Err(format!("character {c:?} is not allowed in a local number"));
        }
        let number: String = number_part.chars().filter(|&c| is_hex(c)).collect();
        if number.is_empty() {
            return Err("no number".into());
        }
        if !has_context {
            return Err("a local number needs a phone-context parameter (RFC 3966 §5.1.5)".into());
        }
        Ok(SipUri::Tel {
            number,
            global: false,
            params,
        })
    }
}

/// A From/To/P-Asserted-Identity/Diversion style value (RFC 3261 §20.10 `name-addr` or
/// `addr-spec`, followed by header parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name without quotes and with `\"`-style escapes resolved; `None` when absent
    /// or empty.
    pub display_name: Option<String>,
    /// The URI inside `<...>` (or the bare addr-spec).
    pub uri: SipUri,
    /// Header parameters after the URI (`;tag=...`, `;reason=...`), names as written, quoted
    /// values unquoted.
    pub params: Params,
}

impl NameAddr {
    /// The header parameter `name` (case-insensitive): `Some(Some(v))`, `Some(None)` for a
    /// flag, `None` when absent.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// Parses one name-addr or addr-spec header value (RFC 3261 §20.10, §25.1):
/// `"Name" <uri>;tag=x`, `Name <uri>`, `<uri>`, `<tel:+1...>` and a bare `uri;tag=x`. In the
/// bare form everything after the first `;` is a header parameter, as §20.10 requires
/// ("URI parameters ... are considered header parameters" when there are no angle brackets).
///
/// # Errors
/// [`SipError::InvalidNameAddr`] when the structure is wrong (unterminated quote or bracket,
/// junk after `>`, bad parameter), or the URI error from [`SipUri::parse`].
pub fn parse_name_addr(value: &str) -> Result<NameAddr, SipError> {
    let input = value.trim();
    let err = |reason: &str| SipError::InvalidNameAddr {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    if input.is_empty() {
        return Err(err("empty value"));
    }
    let (display_name, uri_text, after) = if let Some(quoted) = input.strip_prefix('"') {
        let (name, rest) =
            unquote(quoted).ok_or_else(|| err("unterminated quoted display name"))?;
        let rest = rest.trim_start();
        let inner = rest
            .strip_prefix('<')
            .ok_or_else(|| err("expected '<' after the quoted display name"))?;
        let end = inner.find('>').ok_or_else(|| err("missing '>'"))?;
        (Some(name), &inner[..end], &inner[end + 1..])
    } else if let Some(lt) = input.find('<') {
        let name = input[..lt].trim();
        if name.contains(['"', '>', ';', ',']) {
            return Err(err("bad display name"));
        }
        let inner = &input[lt + 1..];
        let end = inner.find('>').ok_or_else(|| err("missing '>'"))?;
        (Some(name.to_owned()), &inner[..end], &inner[end + 1..])
    } else {
        // Bare addr-spec: URI up to the first ';', the rest are header params.
        match input.find(';') {
            Some(i) => (None, &input[..i], &input[i..]),
            None => (None, input, ""),
        }
    };
    let uri = SipUri::parse(uri_text)?;
    let params = parse_header_params(after).map_err(|r| err(&r))?;
    Ok(NameAddr {
        display_name: display_name.filter(|n| !n.is_empty()),
        uri,
        params,
    })
}

/// Reads a quoted-string body (after the opening `"`), resolving `\x` quoted-pairs. Returns the
/// unescaped text and what follows the closing quote; `None` when the quote is not closed.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?.1),
            '"' => return Some((out, &s[i + 1..])),
            _ => out.push(c),
        }
    }
    None
}

/// Parses `*( SEMI generic-param )` after a name-addr/addr-spec (RFC 3261 §25.1): whitespace
/// around `;` and `=` is allowed, values may be tokens, hosts or quoted strings.
fn parse_header_params(s: &str) -> Result<Params, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        rest = rest
            .strip_prefix(';')
            .ok_or_else(|| format!("expected ';' before {rest:?}"))?
            .trim_start();
        let name_end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return Err("empty parameter name".into());
        }
        rest = rest[name_end..].trim_start();
        let value = if let Some(v) = rest.strip_prefix('=') {
            let v = v.trim_start();
            if let Some(q) = v.strip_prefix('"') {
                let (text, after) = unquote(q).ok_or("unterminated quoted parameter value")?;
                rest = after.trim_start();
                Some(text)
            } else {
                let end = v
                    .find(|c: char| !(is_token_char(c) || "[]:".contains(c)))
                    .unwrap_or(v.len());
                if end == 0 {
                    return Err(format!("empty value for parameter {name:?}"));
                }
                rest = v[end..].trim_start();
                Some(v[..end].to_owned())
            }
        } else {
            None
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: Option<&str>) -> (String, Option<String>) {
        (name.to_owned(), value.map(str::to_owned))
    }

    fn e(s: &str) -> Option<E164> {
        Some(E164::parse(s).unwrap())
    }

    #[test]
    fn sip_uri_with_number_user_and_transport() {
        let uri = SipUri::parse("sip:+14155550123@sip.example.com;transport=tls").unwrap();
        assert_eq!(
            uri,
            SipUri::Sip {
                secure: false,
                user: Some("+14155550123".into()),
                host: "sip.example.com".into(),
                port: None,
                params: vec![p("transport", Some("tls"))],
            }
        );
        assert_eq!(uri.e164(), e("+14155550123"));
        assert_eq!(uri.param("TRANSPORT"), Some(Some("tls")), "kept as written");
    }

    #[test]
    fn sips_uri_with_port_and_dotted_user() {
        // rsip 0.4 alone cannot read a user with a '.'.
        let uri = SipUri::parse("SIPS:john.doe@connect.example.com:5061").unwrap();
        match &uri {
            SipUri::Sip {
                secure,
                user,
                host,
                port,
                params,
            } => {
                assert!(*secure);
                assert_eq!(user.as_deref(), Some("john.doe"));
                assert_eq!(host, "connect.example.com");
                assert_eq!(*port, Some(5061));
                assert!(params.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(uri.e164(), None);
    }

    #[test]
    fn sip_uri_user_phone_with_subscriber_params() {
        let uri = SipUri::parse("sip:+1-212-555-1212;postd=pp22@foo.com;user=phone").unwrap();
        assert_eq!(uri.e164(), e("+12125551212"));
        assert_eq!(uri.param("user"), Some(Some("phone")));
        // user=phone with a local number: no E.164
        let local = SipUri::parse("sip:5550123;phone-context=+1415@foo.com;user=phone").unwrap();
        assert_eq!(local.e164(), None);
    }

    #[test]
    fn sip_uri_vonage_style_user_and_percent_escape() {
        let uri = SipUri::parse("sip:14155550123@10.0.0.1:5060").unwrap();
        assert_eq!(uri.e164(), e("+14155550123"));
        let esc = SipUri::parse("sip:%2B14155550123@example.com").unwrap();
        assert_eq!(esc.e164(), e("+14155550123"));
    }

    #[test]
    fn sip_uri_ipv6_host_and_headers() {
        let uri = SipUri::parse("sip:alice@[2001:db8::10]:5070;lr?subject=hi").unwrap();
        match uri {
            SipUri::Sip {
                host, port, params, ..
            } => {
                assert_eq!(host, "[2001:db8::10]");
                assert_eq!(port, Some(5070));
                assert_eq!(params, vec![p("lr", None)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sip_uri_without_user_is_host_only() {
        let uri = SipUri::parse("sip:pbx.example.com").unwrap();
        assert!(
            matches!(uri, SipUri::Sip { user: None, ref host, .. } if host == "pbx.example.com")
        );
        assert_eq!(uri.e164(), None);
    }

    #[test]
    fn bad_sip_uris_are_errors() {
        for bad in [
            "sip:",
            "sip:@example.com",
            "sip:alice@",
            "sip:alice@exa mple.com",
            "sip:alice@example.com:99999",
            "sip:alice@example.com:abc",
            "sip:alice@[::1",
            "sip:alice@example.com;=x",
            "sip:alice@example.com;transport=bogus",
            "sip:alice<x>@example.com",
        ] {
            let err = SipUri::parse(bad).unwrap_err();
            assert!(
                matches!(err, SipError::InvalidUri { .. }),
                "{bad:?} gave {err:?}"
            );
        }
        for bad in [
            "mailto:a@b.c",
            "http://example.com",
            "+14155550123",
            "",
            "<sip:a@b>",
        ] {
            let err = SipUri::parse(bad).unwrap_err();
            assert!(
                matches!(err, SipError::UnsupportedScheme { .. }),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn tel_global_with_separators() {
        let uri = SipUri::parse("tel:+1-415-555-0123").unwrap();
        assert_eq!(
            uri,
            SipUri::Tel {
                number: "+14155550123".into(),
                global: true,
                params: vec![],
            }
        );
        assert_eq!(uri.e164(), e("+14155550123"));
        let with_ext = SipUri::parse("TEL:+1.415.555.0123;ext=42").unwrap();
        assert_eq!(with_ext.e164(), e("+14155550123"));
        assert_eq!(with_ext.param("ext"), Some(Some("42")));
    }

    #[test]
    fn tel_local_needs_phone_context_and_has_no_e164() {
        let uri = SipUri::parse("tel:5550123;phone-context=+1415").unwrap();
        assert_eq!(
            uri,
            SipUri::Tel {
                number: "5550123".into(),
                global: false,
                params: vec![p("phone-context", Some("+1415"))],
            }
        );
        assert_eq!(uri.e164(), None);
        let dom = SipUri::parse("tel:*67#;phone-context=example.com").unwrap();
        assert!(matches!(dom, SipUri::Tel { ref number, global: false, .. } if number == "*67#"));
        let err = SipUri::parse("tel:5550123").unwrap_err();
        assert!(err.to_string().contains("phone-context"), "{err}");
    }

    #[test]
    fn bad_tel_uris_are_errors() {
        for bad in [
            "tel:",
            "tel:+",
            "tel:+1 415 555",
            "tel:+1415x",
            "tel:+1415;=1",
            "tel:+1415;a b",
        ] {
            assert!(
                matches!(SipUri::parse(bad), Err(SipError::InvalidUri { .. })),
                "{bad:?}"
            );
        }
        // too many digits parses as a tel URI but is no E.164 number
        let long = SipUri::parse("tel:+1234567890123456").unwrap();
        assert_eq!(long.e164(), None);
    }

    #[test]
    fn name_addr_quoted_display_name_with_tag() {
        let na = parse_name_addr(r#""+14155550123" <sip:+14155550123@sip.example.com>;tag=abc"#)
            .unwrap();
        assert_eq!(
            na.display_name.as_deref(),
            Some("+14155550123"),
            "no quotes kept"
        );
        assert_eq!(na.uri.e164(), e("+14155550123"));
        assert_eq!(na.params, vec![p("tag", Some("abc"))]);
        assert_eq!(na.param("TAG"), Some(Some("abc")));
    }

    #[test]
    fn name_addr_escaped_quotes_and_unicode() {
        let na = parse_name_addr(
            r#""Smith \"Bob\" Müller"   <sips:bob@example.com:5061>  ;  tag = 9fxced76sl"#,
        )
        .unwrap();
        assert_eq!(na.display_name.as_deref(), Some(r#"Smith "Bob" Müller"#));
        assert!(matches!(
            na.uri,
            SipUri::Sip {
                secure: true,
                port: Some(5061),
                ..
            }
        ));
        assert_eq!(na.params, vec![p("tag", Some("9fxced76sl"))]);
    }

    #[test]
    fn name_addr_token_display_name_and_empty_quotes() {
        let na = parse_name_addr("Alice Smith <sip:alice@atlanta.example.com>").unwrap();
        assert_eq!(na.display_name.as_deref(), Some("Alice Smith"));
        let na = parse_name_addr(r#""" <sip:alice@atlanta.example.com>"#).unwrap();
        assert_eq!(na.display_name, None);
        let na = parse_name_addr("<sip:alice@atlanta.example.com>").unwrap();
        assert_eq!(na.display_name, None);
        assert!(na.params.is_empty());
    }

    #[test]
    fn bare_addr_spec_params_are_header_params() {
        let na = parse_name_addr("sip:+14155550123@carrier.example;tag=1928301774").unwrap();
        assert_eq!(na.params, vec![p("tag", Some("1928301774"))]);
        match &na.uri {
            SipUri::Sip { params, .. } => assert!(params.is_empty()),
            other => panic!("{other:?}"),
        }
        // but inside angle brackets the ;user=phone is a URI param
        let na = parse_name_addr("<sip:+14155550123@carrier.example;user=phone>;tag=1").unwrap();
        assert_eq!(na.uri.param("user"), Some(Some("phone")));
        assert_eq!(na.params, vec![p("tag", Some("1"))]);
    }

    #[test]
    fn name_addr_with_tel_uri() {
        let na = parse_name_addr("<tel:+14155550123>").unwrap();
        assert_eq!(na.uri.e164(), e("+14155550123"));
        let na = parse_name_addr(r#""Front desk" <tel:+1-415-555-0123>;tag=x"#).unwrap();
        assert_eq!(na.display_name.as_deref(), Some("Front desk"));
        assert_eq!(na.uri.e164(), e("+14155550123"));
    }

    #[test]
    fn diversion_params_with_quoted_value() {
        let na = parse_name_addr(
            r#"<sip:+18005550100@carrier.example;user=phone>;reason=unconditional;counter=1;screen="no""#,
        )
        .unwrap();
        assert_eq!(na.uri.e164(), e("+18005550100"));
        assert_eq!(
            na.params,
            vec![
                p("reason", Some("unconditional")),
                p("counter", Some("1")),
                p("screen", Some("no")),
            ]
        );
    }

    #[test]
    fn garbage_name_addrs_are_errors_not_panics() {
        for bad in [
            "",
            "   ",
            "\"unterminated <sip:a@b.c>",
            "\"Name\" sip:a@b.c",
            "<sip:a@b.c",
            "Name <sip:a@b.c> junk",
            "<sip:a@b.c>;",
            "<sip:a@b.c>;tag=",
            "<>",
            "\u{0}\u{1}",
            "<<<>>>",
            "Bob <mailto:bob@example.com>",
            "anonymous",
        ] {
            assert!(parse_name_addr(bad).is_err(), "{bad:?} parsed");
        }
    }
}
