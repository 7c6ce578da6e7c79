//! SIP header parsing: name-addrs, `sip:`/`sips:` URIs (rsip), `tel:` URIs (RFC 3966) and E.164.
