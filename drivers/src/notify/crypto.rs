//! Signatures and encryption of the HTTP channels: HMAC-SHA256 (webhook header, DingTalk
//! signed URL, upstream signature) and SM4-CBC with PKCS#7 padding (GB/T 32907, upstream
//! body). Pure functions over bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
type Sm4CbcEnc = cbc::Encryptor<sm4::Sm4>;
type Sm4CbcDec = cbc::Decryptor<sm4::Sm4>;

/// Errors of the crypto helpers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// SM4 keys and IVs are 16 bytes.
    #[error("sm4 {what} must be 16 bytes, got {got}")]
    BadLength {
        /// `key` or `iv`.
        what: &'static str,
        /// Actual length.
        got: usize,
    },
    /// Ciphertext is not a whole number of blocks or its padding is wrong (wrong key?).
    #[error("sm4 decryption failed: bad padding or length (wrong key or iv?)")]
    Unpad,
    /// Not hex.
    #[error("invalid hex: {0}")]
    Hex(String),
    /// Not base64.
    #[error("invalid base64: {0}")]
    Base64(String),
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse hex (upper or lower case, no separators).
pub fn from_hex(s: &str) -> Result<Vec<u8>, CryptoError> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CryptoError::Hex(format!(
            "expected an even number of hex digits, got {} characters",
            s.len()
        )));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| CryptoError::Hex(e.to_string())))
        .collect()
}

/// Base64 (standard alphabet, padded).
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decode standard base64.
pub fn from_b64(s: &str) -> Result<Vec<u8>, CryptoError> {
    B64.decode(s.trim())
        .map_err(|e| CryptoError::Base64(e.to_string()))
}

/// The webhook signature header value: `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
/// The timestamp (ms since epoch, sent in `X-Parkguard-Timestamp`) is signed too so a
/// captured request cannot be replayed later with a fresh timestamp.
pub fn webhook_signature(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    let mut data = format!("{timestamp_ms}.").into_bytes();
    data.extend_from_slice(body);
    format!("sha256={}", hex(&hmac_sha256(secret, &data)))
}

/// DingTalk's robot signature: `urlencode(base64(HMAC-SHA256(secret, timestamp + "\n" +
/// secret)))`, timestamp in ms (DingTalk rejects timestamps more than an hour off).
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let data = format!("{timestamp_ms}\n{secret}");
    let sig = b64(&hmac_sha256(secret.as_bytes(), data.as_bytes()));
    percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn check16(what: &'static str, v: &[u8]) -> Result<(), CryptoError> {
    if v.len() == 16 {
        Ok(())
    } else {
        Err(CryptoError::BadLength { what, got: v.len() })
    }
}

/// SM4-CBC encryption with PKCS#7 padding (identical to PKCS#5 for 16-byte blocks).
pub fn sm4_cbc_encrypt(key: &[u8], iv: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    check16("key", key)?;
    check16("iv", iv)?;
    let enc = Sm4CbcEnc::new_from_slices(key, iv).map_err(|_| CryptoError::BadLength {
        what: "key",
        got: key.len(),
    })?;
    Ok(enc.encrypt_padded_vec_mut::<Pkcs7>(plain))
}

/// SM4-CBC decryption, PKCS#7 unpadding.
pub fn sm4_cbc_decrypt(key: &[u8], iv: &[u8], cipher: &[u8]) -> Result<Vec<u8>, CryptoError> {
    check16("key", key)?;
    check16("iv", iv)?;
    let dec = Sm4CbcDec::new_from_slices(key, iv).map_err(|_| CryptoError::BadLength {
        what: "key",
        got: key.len(),
    })?;
    dec.decrypt_padded_vec_mut::<Pkcs7>(cipher)
        .map_err(|_| CryptoError::Unpad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm4::cipher::{BlockEncrypt, KeyInit};

    #[test]
    fn hmac_rfc4231_case_2() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sm4_single_block_standard_vector() {
        // GB/T 32907-2016 appendix A example 1.
        let key = from_hex("0123456789abcdeffedcba9876543210").unwrap();
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        cipher.encrypt_block(&mut block);
        assert_eq!(hex(&block), "681edf34d206965e86b3e94f536e4246");
    }

    #[test]
    fn hex_rejects_garbage() {
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert_eq!(from_hex("0aFF").unwrap(), vec![0x0a, 0xff]);
    }
}
