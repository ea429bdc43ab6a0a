//! Modified UTF-8, the way QEMU decodes it (`util/unicode.c`).
//!
//! QEMU's JSON strings are C strings in *modified* UTF-8: U+0000 is the
//! overlong pair `C0 80`, noncharacters and surrogates are invalid. The
//! parser uses [`codepoint`] to accept or reject raw bytes inside strings,
//! and error messages that quote client bytes go through [`lossy`], which
//! turns them into text exactly as QEMU's JSON writer would print them.

/// Whether QEMU accepts `cp` as a character: inside Unicode's range, not one
/// of the 66 noncharacters, not a surrogate.
pub(crate) fn is_valid_codepoint(cp: u32) -> bool {
    cp <= 0x10FFFF
        && !(0xFDD0..=0xFDEF).contains(&cp)
        && (cp & 0xFFFE) != 0xFFFE
        && !(0xD800..=0xDFFF).contains(&cp)
}

/// Decodes the sequence at the start of `s` like QEMU's
/// `mod_utf8_codepoint(s, 6, &end)`: returns the code point (`None` when the
/// sequence is invalid) and how many bytes the sequence spans. Bytes past
/// the end of `s` read as NUL, as past the end of a C string.
pub(crate) fn codepoint(s: &[u8]) -> (Option<u32>, usize) {
    const MIN_CODEPOINT: [u32; 5] = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
    let byte_at = |i: usize| s.get(i).copied().unwrap_or(0);
    let first = byte_at(0);
    if first == 0 {
        return (None, 0);
    }
    if first < 0x80 {
        return (Some(u32::from(first)), 1);
    }
    if first >= 0xFE || first & 0x40 == 0 {
        // Impossible byte, or a continuation byte where a sequence starts.
        return (None, 1);
    }
    let len = first.leading_ones() as usize;
    let mut cp = u32::from(first) & (0x7F >> len);
    for i in 1..len {
        let byte = byte_at(i);
        if byte & 0xC0 != 0x80 {
            return (None, i);
        }
        cp = (cp << 6) | u32::from(byte & 0x3F);
    }
    let overlong = cp < MIN_CODEPOINT[len - 2] && !(cp == 0 && len == 2);
    if !is_valid_codepoint(cp) || overlong {
        return (None, len);
    }
    (Some(cp), len)
}

/// The text QEMU shows for the C string `bytes`: it ends at the first NUL
/// byte, and each invalid sequence becomes U+FFFD.
pub(crate) fn lossy(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while rest.first().is_some_and(|&b| b != 0) {
        let (cp, used) = codepoint(rest);
        out.push(cp.and_then(char::from_u32).unwrap_or('\u{FFFD}'));
        rest = &rest[used.max(1)..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_qemu() {
        assert_eq!(codepoint(b"a"), (Some(0x61), 1));
        assert_eq!(codepoint("é".as_bytes()), (Some(0xE9), 2));
        assert_eq!(codepoint("😀".as_bytes()), (Some(0x1F600), 4));
        assert_eq!(codepoint(b"\xC0\x80"), (Some(0), 2));
        assert_eq!(codepoint(b"\xC1\x81"), (None, 2), "overlong");
        assert_eq!(codepoint(b"\xED\xA0\x80"), (None, 3), "surrogate");
        assert_eq!(codepoint(b"\xEF\xBF\xBF"), (None, 3), "noncharacter");
        assert_eq!(codepoint(b"\xC3\""), (None, 1), "missing continuation");
        assert_eq!(codepoint(b"\xC3"), (None, 1), "cut off");
        assert_eq!(codepoint(b"\x80"), (None, 1));
        assert_eq!(codepoint(b"\xFF"), (None, 1));
    }

    #[test]
    fn lossy_stops_at_nul_and_replaces_bad_bytes() {
        assert_eq!(lossy(b"ab\0cd"), "ab");
        assert_eq!(lossy(b"\xFF'"), "\u{FFFD}'");
        assert_eq!(lossy(b"\xC0\x80x"), "\0x");
    }
}
