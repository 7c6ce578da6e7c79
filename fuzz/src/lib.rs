//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target reads its input as NUL-separated fields (so seeds are easy to write by hand:
//! `printf 'a\0b\0c'`); missing fields are empty.

/// Splits `data` at NUL bytes into exactly `N` byte fields; the last one takes the rest
/// (NULs included).
pub fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == 0) {
            Some(p) => {
                *slot = &rest[..p];
                rest = &rest[p + 1..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    out
}

/// Like [`fields`], each field as text (invalid UTF-8 replaced with U+FFFD).
pub fn text_fields<const N: usize>(data: &[u8]) -> [String; N] {
    fields::<N>(data).map(|f| String::from_utf8_lossy(f).into_owned())
}

/// True for characters XML 1.0 allows in a document (`Char` production, XML 1.0 §2.2).
pub fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// What a string becomes after our TwiML escaping and an XML parser's decoding: the
/// characters XML forbids are dropped by the escaper, everything else survives.
pub fn xml_visible(s: &str) -> String {
    s.chars().filter(|&c| xml_char(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_and_pad() {
        assert_eq!(fields::<3>(b"a\0b\0c\0d"), [&b"a"[..], b"b", b"c\0d"]);
        assert_eq!(fields::<3>(b"a"), [&b"a"[..], b"", b""]);
    }
}
