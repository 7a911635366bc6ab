//! The pure codec of notifications: the JSON envelope every HTTP channel carries, the
//! Chinese + English text, the robots' markdown, and times in Asia/Shanghai (UTC+8, no
//! DST). No I/O; unit tests beside it.

use super::Notification;
use parkguard_rules::Timestamp;
use serde::Serialize;

/// Envelope schema name, sent as `schema` in every JSON body.
pub const SCHEMA: &str = "parkguard.notification.v1";

/// WeCom robots reject markdown content over 4096 bytes (UTF-8).
pub const WECOM_MAX_BYTES: usize = 4096;
/// DingTalk robots: stay well under the documented 20000-byte message limit.
pub const DINGTALK_MAX_BYTES: usize = 18_000;

/// `2026-11-26 18:22:11` in Asia/Shanghai (UTC+8).
pub fn format_shanghai(t: Timestamp) -> String {
    let secs = t.nanos().div_euclid(1_000_000_000) + 8 * 3600;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days → (year, month, day) for the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Chinese label of an engine state string (unknown states are shown as they are).
pub fn state_zh(state: &str) -> &str {
    match state {
        "unack" => "未确认",
        "ack" => "已确认",
        "rtn_unack" => "已恢复未确认",
        "normal" => "已恢复",
        "shelved" => "已搁置",
        "suppressed" => "已抑制",
        "out_of_service" => "停用",
        "closed" => "已消警",
        other => other,
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let s = format!("{v:.3}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            s.to_string()
        }
        _ => "—".to_string(),
    }
}

/// One line in Chinese, e.g.
/// `【演练 d1】【红色预警(重大)】[紧急] 甲化工(E001) GT-101 储罐区可燃气体 HH 32.5 %LEL（限值 25）2026-11-26 18:22:11 未确认：…`.
pub fn line_zh(n: &Notification) -> String {
    let mut s = String::new();
    if let Some(d) = &n.drill {
        s.push_str(&format!("【演练 {d}】"));
    }
    if let Some(g) = n.grade {
        s.push_str(&format!("【{}】", g.label_zh()));
    }
    let ent = n.enterprise_name.as_deref().unwrap_or(&n.enterprise);
    s.push_str(&format!(
        "[{}] {ent}({}) {} {} {} {} {}（限值 {}）{} {}",
        n.priority.label_zh(),
        n.enterprise,
        n.tag,
        n.point_name,
        n.condition,
        num(n.value),
        n.unit,
        num(n.limit),
        format_shanghai(n.time),
        state_zh(&n.state),
    ));
    if !n.message_zh.is_empty() {
        s.push('：');
        s.push_str(&n.message_zh);
    }
    s
}

/// The English line beside [`line_zh`].
pub fn line_en(n: &Notification) -> String {
    let mut s = String::new();
    if let Some(d) = &n.drill {
        s.push_str(&format!("[DRILL {d}] "));
    }
    if let Some(g) = n.grade {
        s.push_str(&format!("[{} warning] ", g.label_en()));
    }
    s.push_str(&format!(
        "[{}] {} {} {} {} {} (limit {}) at {} (UTC+8) state {}",
        n.priority.label_en(),
        n.enterprise,
        n.tag,
        n.condition,
        num(n.value),
        n.unit,
        num(n.limit),
        format_shanghai(n.time),
        n.state,
    ));
    if !n.message_en.is_empty() {
        s.push_str(": ");
        s.push_str(&n.message_en);
    }
    s
}

/// One event inside the envelope: the notification plus its rendered local time and text.
#[derive(Serialize)]
struct EnvelopeEvent<'a> {
    #[serde(flatten)]
    n: &'a Notification,
    /// `time` in Asia/Shanghai, `YYYY-MM-DD HH:MM:SS`.
    time_local: String,
    text_zh: String,
    text_en: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    schema: &'static str,
    key: &'a str,
    drill: Option<&'a str>,
    count: usize,
    events: Vec<EnvelopeEvent<'a>>,
}

/// The idempotency key of a batch: the event id of its first notification (a batch is
/// fixed once formed, so retries resend the same key with the same events).
pub fn batch_key(batch: &[Notification]) -> String {
    batch
        .first()
        .map(|n| n.event_id.to_string())
        .unwrap_or_default()
}

/// The JSON envelope (`schema`, `key`, `drill`, `count`, `events[]`) as bytes: exactly the
/// bytes that are signed and sent.
pub fn envelope_json(batch: &[Notification]) -> Vec<u8> {
    let key = batch_key(batch);
    let env = Envelope {
        schema: SCHEMA,
        key: &key,
        drill: batch.first().and_then(|n| n.drill.as_deref()),
        count: batch.len(),
        events: batch
            .iter()
            .map(|n| EnvelopeEvent {
                n,
                time_local: format_shanghai(n.time),
                text_zh: line_zh(n),
                text_en: line_en(n),
            })
            .collect(),
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(&env).expect("notification envelope is plain serializable data")
}

/// Schema name of a single-event message (the MQTT channel), sent as `schema`.
pub const EVENT_SCHEMA: &str = "parkguard.event.v1";

#[derive(Serialize)]
struct SingleEvent<'a> {
    schema: &'static str,
    #[serde(flatten)]
    ev: EnvelopeEvent<'a>,
}

/// One event as a flat JSON object: `schema` (`parkguard.event.v1`), every field of the
/// notification, `time_local` (Asia/Shanghai), `text_zh`, `text_en`.
pub fn event_json(n: &Notification) -> Vec<u8> {
    let ev = SingleEvent {
        schema: EVENT_SCHEMA,
        ev: EnvelopeEvent {
            n,
            time_local: format_shanghai(n.time),
            text_zh: line_zh(n),
            text_en: line_en(n),
        },
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_vec(&ev).expect("notification event is plain serializable data")
}

/// Whether a notification is a warning-grade event (published retained on MQTT).
pub fn is_warning(n: &Notification) -> bool {
    n.condition == "WARNING"
}

/// A topic segment from a value: `/`, `+`, `#` and NUL become `_` (so an enterprise code
/// or tag never adds levels or wildcards); an empty value becomes `_`.
pub fn topic_segment(v: &str) -> String {
    if v.is_empty() {
        return "_".into();
    }
    v.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Fill a topic template (`{park}`, `{enterprise}`, `{tag}`) for `n`.
pub fn render_topic(template: &str, park: &str, n: &Notification) -> String {
    template
        .replace("{park}", &topic_segment(park))
        .replace("{enterprise}", &topic_segment(&n.enterprise))
        .replace("{tag}", &topic_segment(&n.tag))
}

/// Title of a robot message, e.g. `甲化工 3 条报警 / 3 alarms`.
pub fn title(batch: &[Notification]) -> String {
    let Some(first) = batch.first() else {
        return String::new();
    };
    let ent = first
        .enterprise_name
        .as_deref()
        .unwrap_or(&first.enterprise);
    let drill = if first.drill.is_some() {
        "【演练 DRILL】"
    } else {
        ""
    };
    if batch.len() == 1 {
        format!(
            "{drill}{ent} {} {} 报警 / alarm",
            first.tag, first.condition
        )
    } else {
        format!(
            "{drill}{ent} {} 条报警 / {} alarms",
            batch.len(),
            batch.len()
        )
    }
}

/// Markdown body for a group robot. `colour` adds WeCom's `<font color=…>` tags (DingTalk
/// does not render them). Cut to `max_bytes` on a line boundary, saying how many are left.
pub fn robot_markdown(batch: &[Notification], colour: bool, max_bytes: usize) -> String {
    let mut out = format!("### {}\n", title(batch));
    for (i, n) in batch.iter().enumerate() {
        let zh = line_zh(n);
        let zh = if colour && n.priority >= super::Priority::High {
            format!("<font color=\"warning\">{zh}</font>")
        } else {
            zh
        };
        let en = if colour {
            format!("<font color=\"comment\">{}</font>", line_en(n))
        } else {
            line_en(n)
        };
        let item = format!("> {zh}\n> {en}\n\n");
        let rest = batch.len() - i;
        let tail = format!("…另有 {rest} 条 / {rest} more");
        if out.len() + item.len() + tail.len() > max_bytes {
            out.push_str(&tail);
            return out;
        }
        out.push_str(&item);
    }
    out.truncate(out.trim_end().len());
    out
}

/// WeCom group robot body: `{"msgtype":"markdown","markdown":{"content":…}}`
/// (<https://developer.work.weixin.qq.com/document/path/91770>).
pub fn wecom_body(batch: &[Notification]) -> serde_json::Value {
    serde_json::json!({
        "msgtype": "markdown",
        "markdown": { "content": robot_markdown(batch, true, WECOM_MAX_BYTES) }
    })
}

/// DingTalk group robot body: `{"msgtype":"markdown","markdown":{"title":…,"text":…},
/// "at":{"atMobiles":[…],"isAtAll":…}}`
/// (<https://open.dingtalk.com/document/robots/custom-robot-access>). Mentioned mobiles must
/// also appear in the text as `@mobile` for DingTalk to notify them.
pub fn dingtalk_body(
    batch: &[Notification],
    at_mobiles: &[String],
    at_all: bool,
) -> serde_json::Value {
    let mut text = robot_markdown(batch, false, DINGTALK_MAX_BYTES);
    if !at_mobiles.is_empty() {
        text.push_str("\n\n");
        let ats: Vec<String> = at_mobiles.iter().map(|m| format!("@{m}")).collect();
        text.push_str(&ats.join(" "));
    }
    serde_json::json!({
        "msgtype": "markdown",
        "markdown": { "title": title(batch), "text": text },
        "at": { "atMobiles": at_mobiles, "isAtAll": at_all }
    })
}

/// Sample notifications for unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::notify::{Notification, Priority, WarningGrade};
    use parkguard_rules::{PointKind, Timestamp};

    pub(crate) fn sample(id: u64) -> Notification {
        Notification {
            event_id: id,
            alarm_id: "E001/GT-101/HH".into(),
            drill: None,
            enterprise: "E001".into(),
            enterprise_name: Some("甲化工".into()),
            area: Some("罐区".into()),
            kind: PointKind::Combustible,
            tag: "GT-101".into(),
            point_name: "储罐区可燃气体".into(),
            condition: "HH".into(),
            priority: Priority::High,
            state: "unack".into(),
            value: Some(32.5),
            unit: "%LEL".into(),
            limit: Some(25.0),
            // 2026-11-26 10:22:11 UTC = 18:22:11 in Shanghai
            time: Timestamp::from_secs(1_795_688_531),
            grade: Some(WarningGrade::Orange),
            message_zh: "可燃气体浓度超二级报警值".into(),
            message_en: "combustible gas above level-2".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn shanghai_time() {
        assert_eq!(
            format_shanghai(Timestamp::from_secs(0)),
            "1970-01-01 08:00:00"
        );
        assert_eq!(
            format_shanghai(Timestamp::from_secs(1_795_688_531)),
            "2026-11-26 18:22:11"
        );
        // crossing midnight and a leap day: 2024-02-28 16:00:00 UTC = 02-29 00:00 CST
        assert_eq!(
            format_shanghai(Timestamp::from_secs(1_709_136_000)),
            "2024-02-29 00:00:00"
        );
        assert_eq!(
            format_shanghai(Timestamp::from_millis(-1)),
            "1970-01-01 07:59:59"
        );
    }

    #[test]
    fn lines_have_both_languages() {
        let n = sample(7);
        let zh = line_zh(&n);
        assert!(zh.contains("【橙色预警(较大)】"), "{zh}");
        assert!(zh.contains("甲化工(E001) GT-101"), "{zh}");
        assert!(
            zh.contains("32.5 %LEL（限值 25）2026-11-26 18:22:11 未确认"),
            "{zh}"
        );
        let en = line_en(&n);
        assert!(
            en.contains("32.5 %LEL (limit 25) at 2026-11-26 18:22:11 (UTC+8)"),
            "{en}"
        );
        let mut d = n.clone();
        d.drill = Some("2026-H2".into());
        assert!(line_zh(&d).starts_with("【演练 2026-H2】"));
        assert!(line_en(&d).starts_with("[DRILL 2026-H2]"));
    }

    #[test]
    fn envelope_round_trips() {
        let batch = vec![sample(7), sample(8)];
        let v: serde_json::Value = serde_json::from_slice(&envelope_json(&batch)).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["key"], "7");
        assert_eq!(v["count"], 2);
        assert_eq!(v["events"][1]["event_id"], 8);
        assert_eq!(v["events"][0]["time_local"], "2026-11-26 18:22:11");
        assert_eq!(v["events"][0]["priority"], "high");
        assert_eq!(v["events"][0]["grade"], "orange");
        let back: Notification = serde_json::from_value(v["events"][0].clone()).unwrap();
        assert_eq!(back, batch[0]);
    }

    #[test]
    fn single_event_and_topics() {
        let n = sample(9);
        let v: serde_json::Value = serde_json::from_slice(&event_json(&n)).unwrap();
        assert_eq!(v["schema"], EVENT_SCHEMA);
        assert_eq!(v["event_id"], 9);
        assert_eq!(v["tag"], "GT-101");
        assert_eq!(v["time_local"], "2026-11-26 18:22:11");
        assert!(v["text_zh"].as_str().unwrap().contains("甲化工(E001)"));
        let back: Notification = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, n);
        let mut odd = sample(1);
        odd.enterprise = "E/1+".into();
        odd.tag = "#".into();
        assert_eq!(
            render_topic("parkguard/{park}/alarms/{enterprise}/{tag}", "yk", &odd),
            "parkguard/yk/alarms/E_1_/_"
        );
        assert!(!is_warning(&n));
    }

    #[test]
    fn markdown_is_cut_with_a_count() {
        let batch: Vec<_> = (0..200).map(sample).collect();
        let md = robot_markdown(&batch, true, WECOM_MAX_BYTES);
        assert!(md.len() <= WECOM_MAX_BYTES);
        assert!(md.contains("200 条报警 / 200 alarms"));
        assert!(md.contains("more"), "{md}");
        let one = robot_markdown(&batch[..1], true, WECOM_MAX_BYTES);
        assert!(one.contains("<font color=\"warning\">"));
        assert!(!one.contains("more"));
    }
}
