//! `secret` objects: the data, inline or from a file, decoded as QEMU's
//! `qcrypto_secret_load_data` does.

use schema::object::{QCryptoSecretFormat, SecretProperties};
use schema::QmpError;

use super::read_small_file;

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The secret's bytes. `is_secret` tells whether an id names an existing
/// secret (for `keyid`).
pub fn load(
    secret: &SecretProperties,
    is_secret: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, QmpError> {
    let raw = match (&secret.data, &secret.file) {
        (Some(_), Some(_)) => {
            return Err(QmpError::generic(
                "'file' and 'data' are mutually exclusive",
            ))
        }
        (Some(data), None) => data.clone().into_bytes(),
        (None, Some(file)) => read_small_file(file).map_err(|reason| {
            QmpError::generic(format!(
                "Unable to read {file}: Failed to open file \u{201c}{file}\u{201d}: {reason}"
            ))
        })?,
        (None, None) => {
            return Err(QmpError::generic(
                "Either 'file' or 'data' must be provided",
            ))
        }
    };
    if let Some(keyid) = &secret.keyid {
        if !is_secret(keyid) {
            return Err(QmpError::generic(format!("No secret with id '{keyid}'")));
        }
        return Err(QmpError::generic(
            "Encrypted secrets ('keyid') are not supported by storaged",
        ));
    }
    match secret.format.unwrap_or_default() {
        QCryptoSecretFormat::Raw => Ok(raw),
        QCryptoSecretFormat::Base64 => decode_base64(&raw),
    }
}

/// QEMU's `qbase64_decode`: only alphabet characters and `=` are allowed;
/// decoding is then as lenient as GLib's (padding optional, trailing bits
/// dropped).
fn decode_base64(input: &[u8]) -> Result<Vec<u8>, QmpError> {
    if input.contains(&0) {
        return Err(QmpError::generic(
            "Base64 data contains embedded NUL characters",
        ));
    }
    let mut bits: u32 = 0;
    let mut bit_count = 0;
    let mut output = Vec::with_capacity(input.len() / 4 * 3);
    for &byte in input {
        if byte == b'=' {
            continue;
        }
        let Some(value) = BASE64_ALPHABET.iter().position(|&c| c == byte) else {
            return Err(QmpError::generic("Base64 data contains invalid characters"));
        };
        bits = (bits << 6) | value as u32;
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            output.push((bits >> bit_count) as u8);
            bits &= (1 << bit_count) - 1;
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_lenient_about_padding() {
        assert_eq!(
            decode_base64(b"aGVsbG8").map_err(|e| e.desc),
            Ok(b"hello".to_vec())
        );
        assert_eq!(
            decode_base64(b"aGVsbG8=").map_err(|e| e.desc),
            Ok(b"hello".to_vec())
        );
        assert_eq!(decode_base64(b"").map_err(|e| e.desc), Ok(Vec::new()));
        assert_eq!(
            decode_base64(b"a\0").map_err(|e| e.desc),
            Err("Base64 data contains embedded NUL characters".to_owned())
        );
    }
}
