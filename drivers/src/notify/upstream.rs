//! Upstream government platform wire formats, pluggable behind [`UpstreamFormat`].
//!
//! Sibling national systems take an HTTP POST of JSON carrying `appId`, a signature under
//! `appSecret`, and the business body encrypted with SM4-CBC (PKCS#5/#7 padding, base64).
//! Field names differ between platforms, so the format is a trait; [`Sm4JsonV1`] is the one
//! parkguard ships and documents. A new platform is a new impl plus a variant of
//! [`super::config::UpstreamFormatKind`].

use super::Notification;
use super::crypto::{self, CryptoError};
use super::message;
use super::sink::DeliveryError;
use serde::{Deserialize, Serialize};

/// Credentials of the upstream link (resolved secrets).
#[derive(Clone)]
pub struct UpstreamCreds {
    /// `appId` issued by the platform.
    pub app_id: String,
    /// `appSecret`.
    pub app_secret: String,
    /// SM4 key (16 bytes).
    pub sm4_key: [u8; 16],
}

impl std::fmt::Debug for UpstreamCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCreds")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

/// A request ready to POST.
#[derive(Clone, Debug)]
pub struct EncodedRequest {
    /// Exact body bytes.
    pub body: Vec<u8>,
    /// Extra headers (besides `Content-Type: application/json`).
    pub headers: Vec<(String, String)>,
}

/// A platform's wire format.
pub trait UpstreamFormat: Send + Sync + std::fmt::Debug {
    /// Encode a batch for sending at `timestamp_ms`.
    fn encode(
        &self,
        batch: &[Notification],
        creds: &UpstreamCreds,
        timestamp_ms: i64,
    ) -> Result<EncodedRequest, CryptoError>;
    /// Classify the platform's reply to a 2xx response: `Ok(receipt)` when it confirms.
    fn confirm(&self, body: &[u8], success_codes: &[i64]) -> Result<String, DeliveryError>;
}

/// The body of [`Sm4JsonV1`]:
/// - `data` = base64(SM4-CBC/PKCS#7(key, iv, JSON envelope of [`message::envelope_json`]))
/// - `iv` = 32 hex digits, fresh per request (derived by HMAC from key, time and nonce)
/// - `nonce` = the idempotency key (first event id of the batch)
/// - `sign` = hex(HMAC-SHA256(appSecret, appId + timestamp + nonce + iv + data))
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sm4JsonV1Body {
    /// `appId`.
    #[serde(rename = "appId")]
    pub app_id: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Idempotency key.
    pub nonce: String,
    /// CBC IV, hex.
    pub iv: String,
    /// Ciphertext, base64.
    pub data: String,
    /// Signature, hex.
    pub sign: String,
}

/// The reply the platform sends: `{"code": 0, "msg": "ok"}` (`message` also accepted).
#[derive(Debug, Deserialize)]
struct Reply {
    code: i64,
    #[serde(default, alias = "message")]
    msg: String,
}

/// parkguard's documented upstream format (see [`Sm4JsonV1Body`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sm4JsonV1;

impl Sm4JsonV1 {
    fn sign_input(b: &Sm4JsonV1Body) -> String {
        format!("{}{}{}{}{}", b.app_id, b.timestamp, b.nonce, b.iv, b.data)
    }

    /// The receiver's side: check the signature and decrypt `data` back to the envelope
    /// JSON bytes. Used by tests and by anyone building a compatible receiver.
    pub fn open(body: &[u8], creds: &UpstreamCreds) -> Result<Vec<u8>, String> {
        let b: Sm4JsonV1Body =
            serde_json::from_slice(body).map_err(|e| format!("not an sm4_json_v1 body: {e}"))?;
        if b.app_id != creds.app_id {
            return Err(format!("unknown appId `{}`", b.app_id));
        }
        let want = crypto::hex(&crypto::hmac_sha256(
            creds.app_secret.as_bytes(),
            Self::sign_input(&b).as_bytes(),
        ));
        if want != b.sign {
            return Err("bad sign".into());
        }
        let iv = crypto::from_hex(&b.iv).map_err(|e| e.to_string())?;
        let cipher = crypto::from_b64(&b.data).map_err(|e| e.to_string())?;
        crypto::sm4_cbc_decrypt(&creds.sm4_key, &iv, &cipher).map_err(|e| e.to_string())
    }
}

impl UpstreamFormat for Sm4JsonV1 {
    fn encode(
        &self,
        batch: &[Notification],
        creds: &UpstreamCreds,
        timestamp_ms: i64,
    ) -> Result<EncodedRequest, CryptoError> {
        let nonce = message::batch_key(batch);
        let iv_full = crypto::hmac_sha256(
            &creds.sm4_key,
            format!("iv:{timestamp_ms}:{nonce}").as_bytes(),
        );
        let iv = &iv_full[..16];
        let cipher = crypto::sm4_cbc_encrypt(&creds.sm4_key, iv, &message::envelope_json(batch))?;
        let mut b = Sm4JsonV1Body {
            app_id: creds.app_id.clone(),
            timestamp: timestamp_ms,
            nonce: nonce.clone(),
            iv: crypto::hex(iv),
            data: crypto::b64(&cipher),
            sign: String::new(),
        };
        b.sign = crypto::hex(&crypto::hmac_sha256(
            creds.app_secret.as_bytes(),
            Self::sign_input(&b).as_bytes(),
        ));
        Ok(EncodedRequest {
            body: serde_json::to_vec(&b).expect("plain struct serializes"),
            headers: vec![("Idempotency-Key".into(), nonce)],
        })
    }

    fn confirm(&self, body: &[u8], success_codes: &[i64]) -> Result<String, DeliveryError> {
        let r: Reply = serde_json::from_slice(body).map_err(|e| DeliveryError::Rejected {
            code: -1,
            msg: format!("unreadable platform reply: {e}"),
            retryable: true,
        })?;
        if success_codes.contains(&r.code) {
            Ok(format!("code {} {}", r.code, r.msg))
        } else {
            Err(DeliveryError::Rejected {
                code: r.code,
                msg: r.msg,
                retryable: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> UpstreamCreds {
        UpstreamCreds {
            app_id: "park-yk".into(),
            app_secret: "app-secret".into(),
            sm4_key: *b"0123456789abcdef",
        }
    }

    #[test]
    fn encode_then_open() {
        let n = crate::notify::message::tests_support::sample(41);
        let req = Sm4JsonV1
            .encode(std::slice::from_ref(&n), &creds(), 1_700_000_000_000)
            .unwrap();
        let plain = Sm4JsonV1::open(&req.body, &creds()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["events"][0]["event_id"], 41);
        // tampering is detected
        let mut b: Sm4JsonV1Body = serde_json::from_slice(&req.body).unwrap();
        b.timestamp += 1;
        let tampered = serde_json::to_vec(&b).unwrap();
        assert_eq!(
            Sm4JsonV1::open(&tampered, &creds()).unwrap_err(),
            "bad sign"
        );
    }

    #[test]
    fn replies_are_classified() {
        assert!(
            Sm4JsonV1
                .confirm(br#"{"code":0,"msg":"ok"}"#, &[0, 200])
                .is_ok()
        );
        let e = Sm4JsonV1
            .confirm(br#"{"code":4001,"message":"bad appId"}"#, &[0, 200])
            .unwrap_err();
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("bad appId"));
    }
}
