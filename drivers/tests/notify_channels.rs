//! Every notification channel against a real local HTTP receiver (axum on a free port):
//! webhook signature and idempotency key, WeCom and DingTalk robot formats (DingTalk's
//! signed URL checked with the algorithm of its documentation, and a known vector), the
//! upstream SM4-CBC body decrypted independently, SM4 against the GB/T 32907 vectors, and
//! the classification of failures (retryable vs permanent).

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use parkguard_drivers::notify::crypto;
use parkguard_drivers::notify::{
    Channel, ChannelConfig, DeliveryError, Notification, Priority, WarningGrade,
};
use parkguard_rules::{PointKind, Timestamp};
use sha2::Sha256;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
struct Captured {
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Captured>>>,
    reply: Arc<Mutex<(u16, String, Duration)>>,
}

impl Receiver {
    fn set_reply(&self, status: u16, body: &str, delay: Duration) {
        *self.reply.lock().unwrap() = (status, body.to_string(), delay);
    }
    fn seen(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }
}

async fn capture(
    State(r): State<Receiver>,
    uri: Uri,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    r.seen.lock().unwrap().push(Captured {
        path: uri.path().to_string(),
        query: q.unwrap_or_default(),
        headers,
        body,
    });
    let (status, text, delay) = r.reply.lock().unwrap().clone();
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), text)
}

/// A receiver on a free port, replying `200 {"errcode":0,"errmsg":"ok"}` until told otherwise.
async fn receiver() -> (String, Receiver) {
    let r = Receiver {
        seen: Arc::default(),
        reply: Arc::new(Mutex::new((
            200,
            r#"{"errcode":0,"errmsg":"ok"}"#.into(),
            Duration::ZERO,
        ))),
    };
    let app = axum::Router::new().fallback(capture).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), r)
}

fn secret_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("{content}\n")).unwrap();
    p
}

fn note(id: u64) -> Notification {
    Notification {
        event_id: id,
        alarm_id: "E001/GT-101/HH".into(),
        drill: None,
        enterprise: "E001".into(),
        enterprise_name: Some("营口甲化工有限公司".into()),
        area: Some("罐区".into()),
        kind: PointKind::Combustible,
        tag: "GT-101".into(),
        point_name: "储罐区可燃气体".into(),
        condition: "level-2".into(),
        priority: Priority::Critical,
        state: "unack".into(),
        value: Some(55.0),
        unit: "%LEL".into(),
        limit: Some(50.0),
        time: Timestamp::from_secs(1_795_688_531),
        grade: Some(WarningGrade::Red),
        message_zh: "可燃气体浓度超二级报警值".into(),
        message_en: "combustible gas above level-2".into(),
    }
}

fn build(v: serde_json::Value) -> Channel {
    let cfg: ChannelConfig = serde_json::from_value(v).unwrap();
    Channel::build(&cfg).unwrap()
}

fn hmac256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[tokio::test]
async fn webhook_is_signed_keyed_and_confirmed_on_2xx() {
    let (base, rx) = receiver().await;
    rx.set_reply(202, "queued", Duration::ZERO);
    let ch = build(serde_json::json!({
        "type": "webhook", "name": "duty", "url": format!("{base}/hook"),
        "secret_file": secret_file("wh", "s3cret-shared")
    }));
    let d = ch.deliver(&note(4711)).await.unwrap();
    assert_eq!((d.status, d.receipt.as_str()), (202, "queued"));

    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    let c = &seen[0];
    assert_eq!(c.path, "/hook");
    assert_eq!(c.headers["idempotency-key"], "4711");
    assert_eq!(c.headers["content-type"], "application/json");
    let ts = c.headers["x-parkguard-timestamp"].to_str().unwrap();
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&c.body);
    let want = format!(
        "sha256={}",
        crypto::hex(&hmac256(b"s3cret-shared", &signed))
    );
    assert_eq!(c.headers["x-parkguard-signature"].to_str().unwrap(), want);

    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["schema"], "parkguard.notification.v1");
    assert_eq!(v["key"], "4711");
    assert_eq!(v["events"][0]["event_id"], 4711);
    assert_eq!(v["events"][0]["time_local"], "2026-11-26 18:22:11");
    let zh = v["events"][0]["text_zh"].as_str().unwrap();
    assert!(
        zh.starts_with("【红色预警(重大)】[紧急] 营口甲化工有限公司(E001) GT-101"),
        "{zh}"
    );
    assert!(
        v["events"][0]["text_en"]
            .as_str()
            .unwrap()
            .contains("(UTC+8)")
    );
}

#[tokio::test]
async fn failures_are_classified_retryable_or_permanent() {
    let (base, rx) = receiver().await;
    let ch = build(serde_json::json!({
        "type": "webhook", "name": "duty", "url": format!("{base}/hook"),
        "secret_file": secret_file("wh2", "k"), "timeout_ms": 300
    }));
    for (status, retryable) in [
        (500, true),
        (503, true),
        (429, true),
        (400, false),
        (401, false),
        (404, false),
    ] {
        rx.set_reply(status, "nope", Duration::ZERO);
        let e = ch.deliver(&note(1)).await.unwrap_err();
        assert!(
            matches!(e, DeliveryError::Http { status: s, .. } if s == status),
            "{status}: {e}"
        );
        assert_eq!(e.is_retryable(), retryable, "{status}");
    }
    rx.set_reply(200, "late", Duration::from_secs(2));
    let e = ch.deliver(&note(1)).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Timeout(_)), "{e}");
    assert!(e.is_retryable());

    // nobody listening: a port we bound and closed again
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = build(serde_json::json!({
        "type": "webhook", "name": "dead", "url": format!("http://127.0.0.1:{port}/"),
        "secret_file": secret_file("wh3", "k")
    }));
    let e = dead.deliver(&note(1)).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Connect(_)), "{e}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn production_channel_refuses_drill_notification_without_sending() {
    let (base, rx) = receiver().await;
    let prod = build(serde_json::json!({
        "type": "webhook", "name": "bureau", "url": format!("{base}/hook"),
        "secret_file": secret_file("wh4", "k")
    }));
    let mut d = note(5);
    d.drill = Some("2026-H2".into());
    let e = prod.deliver_batch(&[note(4), d.clone()]).await.unwrap_err();
    assert!(matches!(e, DeliveryError::DrillRefused { .. }), "{e}");
    assert!(!e.is_retryable());
    assert!(
        rx.seen().is_empty(),
        "nothing may reach a production receiver"
    );

    let drill = build(serde_json::json!({
        "type": "webhook", "name": "drill-room", "drill": true, "url": format!("{base}/hook"),
        "secret_file": secret_file("wh5", "k")
    }));
    drill.deliver(&d).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&rx.seen()[0].body).unwrap();
    assert_eq!(v["drill"], "2026-H2");
    assert!(
        v["events"][0]["text_zh"]
            .as_str()
            .unwrap()
            .starts_with("【演练 2026-H2】")
    );
}

#[tokio::test]
async fn wecom_markdown_robot_format() {
    let (base, rx) = receiver().await;
    let ch = build(serde_json::json!({
        "type": "wecom", "name": "wecom-duty", "url": format!("{base}/cgi-bin/webhook/send"),
        "key_file": secret_file("wc", "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa")
    }));
    let batch: Vec<_> = (1..=3).map(note).collect();
    ch.deliver_batch(&batch).await.unwrap();
    let c = &rx.seen()[0];
    assert_eq!(c.path, "/cgi-bin/webhook/send");
    assert_eq!(c.query, "key=693a91f6%2D7xxx%2D4bc4%2D97a0%2D0ec2sifa5aaa");
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    // documented: {"msgtype":"markdown","markdown":{"content":"..."}}, content ≤ 4096 bytes
    let obj = v.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().collect();
    keys.sort();
    assert_eq!(keys, ["markdown", "msgtype"]);
    assert_eq!(v["msgtype"], "markdown");
    assert_eq!(v["markdown"].as_object().unwrap().len(), 1);
    let content = v["markdown"]["content"].as_str().unwrap();
    assert!(content.len() <= 4096);
    assert!(
        content.starts_with("### 营口甲化工有限公司 3 条报警 / 3 alarms\n"),
        "{content}"
    );
    assert!(content.contains("<font color=\"warning\">【红色预警(重大)】"));
    assert_eq!(
        content.matches("GT-101").count(),
        6,
        "each alarm in zh and en"
    );

    rx.set_reply(
        200,
        r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#,
        Duration::ZERO,
    );
    let e = ch.deliver(&note(9)).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    rx.set_reply(
        200,
        r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#,
        Duration::ZERO,
    );
    let e = ch.deliver(&note(9)).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("93000"));
}

/// DingTalk's documented signature (Python sample on open.dingtalk.com):
/// `quote_plus(b64encode(hmac_sha256(secret, f"{timestamp}\n{secret}")))`.
/// Vector computed with that exact Python snippet (python3 3.11, stdlib hmac/base64/urllib).
#[test]
fn dingtalk_sign_known_vector() {
    let secret = "SECb6c2d1f0e4a3987654321fedcba9876543210abcdef0123456789abcdef012";
    assert_eq!(
        crypto::dingtalk_sign(secret, 1_700_000_000_001),
        "A0PmQkeIc%2BGSc8jDvq%2Foiu7qiGuo4fAXNLOkxvMKR70%3D"
    );
}

fn query_param<'a>(q: &'a str, k: &str) -> &'a str {
    q.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("no {k} in {q}"))
}

#[tokio::test]
async fn dingtalk_markdown_with_signed_url() {
    let (base, rx) = receiver().await;
    let secret = "SEC0123456789abcdef";
    let ch = build(serde_json::json!({
        "type": "dingtalk", "name": "dt", "url": format!("{base}/robot/send"),
        "access_token_file": secret_file("dt-token", "abc123token"),
        "secret_file": secret_file("dt-sec", secret),
        "at_mobiles": ["13800000000"]
    }));
    ch.deliver(&note(77)).await.unwrap();
    let c = &rx.seen()[0];
    assert_eq!(c.path, "/robot/send");
    assert_eq!(query_param(&c.query, "access_token"), "abc123token");
    // the receiver's check, as DingTalk does it: recompute from timestamp and secret
    let ts = query_param(&c.query, "timestamp");
    let sign = percent_encoding::percent_decode_str(query_param(&c.query, "sign"))
        .decode_utf8()
        .unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode(hmac256(
        secret.as_bytes(),
        format!("{ts}\n{secret}").as_bytes(),
    ));
    assert_eq!(sign, want);
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - ts.parse::<i64>().unwrap();
    assert!(
        (0..3_600_000).contains(&age),
        "DingTalk rejects timestamps over 1 h off"
    );

    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["msgtype"], "markdown");
    assert_eq!(
        v["markdown"]["title"],
        "营口甲化工有限公司 GT-101 level-2 报警 / alarm"
    );
    let text = v["markdown"]["text"].as_str().unwrap();
    assert!(text.starts_with("### "));
    assert!(
        text.ends_with("@13800000000"),
        "mentioned mobiles must be in the text"
    );
    assert!(
        !text.contains("<font"),
        "DingTalk does not render font tags"
    );
    assert_eq!(v["at"]["atMobiles"], serde_json::json!(["13800000000"]));
    assert_eq!(v["at"]["isAtAll"], false);

    rx.set_reply(
        200,
        r#"{"errcode":310000,"errmsg":"sign not match"}"#,
        Duration::ZERO,
    );
    assert!(!ch.deliver(&note(78)).await.unwrap_err().is_retryable());
    rx.set_reply(
        200,
        r#"{"errcode":130101,"errmsg":"send too fast"}"#,
        Duration::ZERO,
    );
    assert!(ch.deliver(&note(78)).await.unwrap_err().is_retryable());
}

#[tokio::test]
async fn upstream_body_is_signed_and_sm4_cbc_encrypted() {
    let (base, rx) = receiver().await;
    rx.set_reply(200, r#"{"code":0,"msg":"success"}"#, Duration::ZERO);
    let key_hex = "0123456789abcdeffedcba9876543210";
    let ch = build(serde_json::json!({
        "type": "upstream", "name": "province", "url": format!("{base}/api/alarm"),
        "app_id": "yk-chem-park",
        "app_secret_file": secret_file("up-sec", "app-s3cret"),
        "sm4_key_file": secret_file("up-key", key_hex)
    }));
    let d = ch.deliver_batch(&[note(100), note(101)]).await.unwrap();
    assert!(d.receipt.contains("success"));

    // decrypt independently of the channel's code: raw RustCrypto sm4 + cbc
    let c = &rx.seen()[0];
    let b: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(b["appId"], "yk-chem-park");
    assert_eq!(b["nonce"], "100");
    let signed = format!(
        "{}{}{}{}{}",
        b["appId"].as_str().unwrap(),
        b["timestamp"].as_i64().unwrap(),
        b["nonce"].as_str().unwrap(),
        b["iv"].as_str().unwrap(),
        b["data"].as_str().unwrap()
    );
    assert_eq!(
        b["sign"].as_str().unwrap(),
        crypto::hex(&hmac256(b"app-s3cret", signed.as_bytes()))
    );
    let key = crypto::from_hex(key_hex).unwrap();
    let iv = crypto::from_hex(b["iv"].as_str().unwrap()).unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(b["data"].as_str().unwrap())
        .unwrap();
    let plain = cbc::Decryptor::<sm4::Sm4>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt_padded_vec_mut::<Pkcs7>(&data)
        .unwrap();
    // and with a second, unrelated implementation: OpenSSL's SM4-CBC (tests/run.sh installs it)
    assert_eq!(
        openssl_sm4_cbc_decrypt(key_hex, b["iv"].as_str().unwrap(), &data),
        plain
    );
    let env: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(env["count"], 2);
    assert_eq!(env["events"][1]["event_id"], 101);

    rx.set_reply(
        200,
        r#"{"code":4001,"msg":"appId not registered"}"#,
        Duration::ZERO,
    );
    let e = ch.deliver(&note(102)).await.unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("appId not registered"));
}

/// `openssl enc -d -sm4-cbc` (PKCS#7 padding is OpenSSL's default).
fn openssl_sm4_cbc_decrypt(key_hex: &str, iv_hex: &str, cipher: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["enc", "-d", "-sm4-cbc", "-K", key_hex, "-iv", iv_hex])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian package `openssl`, installed by tests/run.sh) is needed as the independent SM4 peer");
    child.stdin.take().unwrap().write_all(cipher).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn sm4_cbc_agrees_with_openssl() {
    let key_hex = "fedcba98765432100123456789abcdef";
    let iv_hex = "a3b1bac656aa3350677d9197b27022dc";
    let key = crypto::from_hex(key_hex).unwrap();
    let iv = crypto::from_hex(iv_hex).unwrap();
    for text in [
        "",
        "x",
        "0123456789abcdef",
        "消警：原因、处置措施、审核人 — closed loop record",
    ] {
        let c = crypto::sm4_cbc_encrypt(&key, &iv, text.as_bytes()).unwrap();
        assert_eq!(
            openssl_sm4_cbc_decrypt(key_hex, iv_hex, &c),
            text.as_bytes()
        );
    }
}

#[test]
fn sm4_gbt32907_vectors_and_cbc_round_trip() {
    let key = crypto::from_hex("0123456789abcdeffedcba9876543210").unwrap();
    // Example 1: one block. CBC with a zero IV on one block is plain SM4.
    let c = crypto::sm4_cbc_encrypt(&key, &[0u8; 16], &key).unwrap();
    assert_eq!(
        c.len(),
        32,
        "one data block + one full PKCS#7 padding block"
    );
    assert_eq!(crypto::hex(&c[..16]), "681edf34d206965e86b3e94f536e4246");
    // Example 2: the same block encrypted 1,000,000 times.
    {
        use sm4::cipher::{BlockEncrypt, KeyInit};
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::generic_array::GenericArray::clone_from_slice(&key);
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(crypto::hex(&block), "595298c7c6fd271f0402f804c33d3f66");
    }
    // CBC round trip at every padding length, Chinese text included
    let iv = crypto::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
    let text = "可燃气体浓度超二级报警值 combustible gas above level-2".as_bytes();
    for len in 0..=text.len() {
        let c = crypto::sm4_cbc_encrypt(&key, &iv, &text[..len]).unwrap();
        assert_eq!(c.len(), (len / 16 + 1) * 16);
        assert_eq!(
            crypto::sm4_cbc_decrypt(&key, &iv, &c).unwrap(),
            &text[..len]
        );
    }
    assert!(crypto::sm4_cbc_encrypt(&key[..15], &iv, b"x").is_err());
    assert!(crypto::sm4_cbc_decrypt(&key, &iv, &[0u8; 15]).is_err());
}
