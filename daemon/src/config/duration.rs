//! Durations in config files: `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"30d"`, or a bare number
//! of seconds.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A duration written as a string with a unit suffix (`ms`, `s`, `m`, `h`, `d`) or as a
/// number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Parse `"1.5s"`, `"250ms"`, `"2m"`, `"1h"`, `"7d"`.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!(
                "invalid duration `{s}`: expected e.g. \"500ms\", \"5s\", \"2m\", \"1h\", \"30d\""
            )
        })?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" | "" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            other => {
                return Err(format!(
                    "invalid duration unit `{other}` in `{s}`: use ms, s, m, h or d"
                ));
            }
        };
        if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
            return Err(format!("duration `{s}` is out of range"));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            F(f64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => ConfigDuration::parse(&s)
                .map(ConfigDuration)
                .map_err(serde::de::Error::custom),
            Raw::F(f) if f.is_finite() && f >= 0.0 => {
                Ok(ConfigDuration(Duration::from_secs_f64(f)))
            }
            Raw::F(f) => Err(serde::de::Error::custom(format!(
                "duration {f} must be a non-negative number of seconds"
            ))),
        }
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }
}

impl JsonSchema for ConfigDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: \"500ms\", \"5s\", \"2m\", \"1h\", \"30d\", or a number of seconds.",
            "anyOf": [
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|min|h|d)?$" },
                { "type": "number", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            ConfigDuration::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(ConfigDuration::parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(
            ConfigDuration::parse("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(ConfigDuration::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(ConfigDuration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(
            ConfigDuration::parse("30d"),
            Ok(Duration::from_secs(30 * 86400))
        );
        assert!(ConfigDuration::parse("5 parsecs").is_err());
        assert!(ConfigDuration::parse("fast").is_err());
    }
}
