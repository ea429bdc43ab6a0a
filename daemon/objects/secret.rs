//! `secret` objects: the data, inline or from a file, decoded as QEMU's
//! `qcrypto_secret_load_data` does, and decrypted when `keyid` names the
//! secret holding its AES-256-CBC key (QEMU's `qcrypto_secret_decrypt`).

use schema::object::{QCryptoSecretFormat, SecretProperties};
use schema::QmpError;

use super::read_small_file;

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// AES-256's key and block lengths.
const AES_256_KEY_LEN: usize = 32;
const AES_BLOCK_LEN: usize = 16;

/// The secret's bytes. `secret_bytes` gives those of an existing secret
/// (the key that `keyid` names).
pub fn load(
    secret: &SecretProperties,
    secret_bytes: impl Fn(&str) -> Option<Vec<u8>>,
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
    let format = secret.format.unwrap_or_default();
    if let Some(keyid) = &secret.keyid {
        let key = secret_bytes(keyid)
            .ok_or_else(|| QmpError::generic(format!("No secret with id '{keyid}'")))?;
        return decrypt(&key, secret.iv.as_deref(), format, &raw);
    }
    match format {
        QCryptoSecretFormat::Raw => Ok(raw),
        QCryptoSecretFormat::Base64 => decode_base64(&raw),
    }
}

/// QEMU's decryption of a secret: `input` is the ciphertext (base64 if
/// `format` says so), `iv` base64; the plaintext ends with its padding
/// length as its last byte.
fn decrypt(
    key: &[u8],
    iv: Option<&str>,
    format: QCryptoSecretFormat,
    input: &[u8],
) -> Result<Vec<u8>, QmpError> {
    if key.len() != AES_256_KEY_LEN {
        return Err(QmpError::generic(format!(
            "Key should be {AES_256_KEY_LEN} bytes in length"
        )));
    }
    let iv = iv.ok_or_else(|| QmpError::generic("IV is required to decrypt secret"))?;
    let iv = decode_base64(iv.as_bytes())?;
    if iv.len() != AES_BLOCK_LEN {
        return Err(QmpError::generic(format!(
            "IV should be {AES_BLOCK_LEN} bytes in length not {}",
            iv.len()
        )));
    }
    let ciphertext = match format {
        QCryptoSecretFormat::Raw => input.to_vec(),
        QCryptoSecretFormat::Base64 => decode_base64(input)?,
    };
    if !ciphertext.len().is_multiple_of(AES_BLOCK_LEN) {
        return Err(QmpError::generic(format!(
            "Length {} must be a multiple of block size {AES_BLOCK_LEN}",
            ciphertext.len()
        )));
    }
    let cipher = openssl::symm::Cipher::aes_256_cbc();
    let mut crypter =
        openssl::symm::Crypter::new(cipher, openssl::symm::Mode::Decrypt, key, Some(&iv))
            .map_err(|e| QmpError::generic(e.to_string()))?;
    crypter.pad(false);
    let mut plaintext = vec![0; ciphertext.len() + AES_BLOCK_LEN];
    let mut len = crypter
        .update(&ciphertext, &mut plaintext)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    len += crypter
        .finalize(&mut plaintext[len..])
        .map_err(|e| QmpError::generic(e.to_string()))?;
    plaintext.truncate(len);
    let padding = plaintext.last().map_or(0, |&pad| usize::from(pad));
    if padding > plaintext.len() {
        return Err(QmpError::generic(format!(
            "Incorrect number of padding bytes ({padding}) found on decrypted data"
        )));
    }
    plaintext.truncate(plaintext.len() - padding);
    Ok(plaintext)
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
    fn encrypted_secrets_are_decrypted_as_qemu_does() {
        // openssl enc -aes-256-cbc -K 00..1f -iv 00..0f of "letmein".
        let key: Vec<u8> = (0..32).collect();
        let iv = "AAECAwQFBgcICQoLDA0ODw==";
        let cipher = openssl::symm::Cipher::aes_256_cbc();
        let iv_bytes: Vec<u8> = (0..16).collect();
        let ciphertext = openssl::symm::encrypt(cipher, &key, Some(&iv_bytes), b"letmein").unwrap();
        let format = QCryptoSecretFormat::Raw;
        assert_eq!(
            decrypt(&key, Some(iv), format, &ciphertext).map_err(|e| e.desc),
            Ok(b"letmein".to_vec())
        );
        assert_eq!(
            decrypt(&key, None, format, &ciphertext).map_err(|e| e.desc),
            Err("IV is required to decrypt secret".to_owned())
        );
        assert_eq!(
            decrypt(&key, Some("AAAA"), format, &ciphertext).map_err(|e| e.desc),
            Err("IV should be 16 bytes in length not 3".to_owned())
        );
        assert_eq!(
            decrypt(&key[..5], Some(iv), format, &ciphertext).map_err(|e| e.desc),
            Err("Key should be 32 bytes in length".to_owned())
        );
        assert_eq!(
            decrypt(&key, Some(iv), format, &ciphertext[..5]).map_err(|e| e.desc),
            Err("Length 5 must be a multiple of block size 16".to_owned())
        );
    }

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
