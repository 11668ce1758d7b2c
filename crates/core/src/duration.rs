//! Durations as people write them: `250ms`, `10s`, `5m`, `1h`, `1m30s`, `7d`.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parses `text` (one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`), naming `field` on failure.
pub fn parse(field: &str, text: &str) -> Result<Duration> {
    let bad = |reason: &str| Error::invalid(field, text, reason);
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("must not be empty; write e.g. 500ms, 10s, 5m or 1h"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("expected a number; write e.g. 500ms, 10s, 5m or 1h"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad("number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "" => return Err(bad("missing unit; use ms, s, m, h or d")),
            _ => return Err(bad("unknown unit; use ms, s, m, h or d")),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(number).ok().and_then(|n| unit.checked_mul(n)).ok_or_else(|| bad("is too long"))?;
        total = total.checked_add(part).ok_or_else(|| bad("is too long"))?;
    }
    Ok(total)
}

/// Formats `duration` in the shortest form [`parse`] reads back exactly.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis > 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Serde adapter for `Duration` fields written as text.
pub mod serde_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as text.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(*value))
    }

    /// Reads a duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse("duration", &text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for `Option<Duration>` fields written as text.
pub mod serde_text_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes an optional duration as text.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&super::format(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads an optional duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse("duration", &text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: std::result::Result<Duration, &str>) {
        let got = parse("timeout", input).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
    }

    #[test]
    fn parses_what_people_write() {
        check("250ms", Ok(Duration::from_millis(250)));
        check("10s", Ok(Duration::from_secs(10)));
        check("1m30s", Ok(Duration::from_secs(90)));
        check("2h", Ok(Duration::from_secs(7200)));
        check("0s", Ok(Duration::ZERO));
        check("", Err(r#"invalid timeout "": must not be empty; write e.g. 500ms, 10s, 5m or 1h"#));
        check("7d", Ok(Duration::from_secs(7 * 86_400)));
        check("10", Err(r#"invalid timeout "10": missing unit; use ms, s, m, h or d"#));
        check("10w", Err(r#"invalid timeout "10w": unknown unit; use ms, s, m, h or d"#));
        check("s", Err(r#"invalid timeout "s": expected a number; write e.g. 500ms, 10s, 5m or 1h"#));
        check("99999999999999999999s", Err(r#"invalid timeout "99999999999999999999s": number is too large"#));
    }

    #[test]
    fn formats_round_trip() {
        for d in [0, 1, 999, 1000, 60_000, 90_000, 3_600_000, 3_601_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse("d", &format(d)).unwrap(), d);
        }
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(120)), "2m");
    }
}
