//! Durations as the Serverless Workflow DSL writes them: an ISO 8601 duration (`PT1M30S`,
//! `P2DT3H`, `PT0.25S`) or an object (`{minutes: 1, seconds: 30}`).

use std::time::Duration;

use serde_json::Value;

use crate::error::Result;

/// The longest duration accepted: a year of days, far past any sane timer or timeout.
const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);

/// Reads the duration `value` written at `pointer`.
pub(super) fn parse(pointer: &str, value: &Value) -> Result<Duration> {
    let shown = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    let bad = |reason: &str| baton_core::Error::invalid(pointer, &shown, reason);
    let total = match value {
        Value::String(text) => iso8601(text).map_err(|reason| bad(&reason))?,
        Value::Object(parts) => {
            let mut total = 0f64;
            for (name, amount) in parts {
                let unit = match name.as_str() {
                    "days" => 86_400.0,
                    "hours" => 3_600.0,
                    "minutes" => 60.0,
                    "seconds" => 1.0,
                    "milliseconds" => 0.001,
                    _ => return Err(bad(&format!("has an unknown unit `{name}`")).into()),
                };
                let amount =
                    amount.as_u64().ok_or_else(|| bad(&format!("{name} must be a whole number, 0 or more")))?;
                total += amount as f64 * unit;
            }
            total
        }
        _ => return Err(bad("must be an ISO 8601 duration or an object of days, hours, minutes, seconds").into()),
    };
    if total > LONGEST.as_secs_f64() {
        return Err(bad(&format!("is longer than {} days, the limit", LONGEST.as_secs() / 86_400)).into());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Seconds in an ISO 8601 duration. Years and months have no fixed length, so they are
/// refused; weeks are seven days.
fn iso8601(text: &str) -> Result<f64, String> {
    if text.trim_start().starts_with("${") {
        // Reaching here means the caller did not take it as an expression.
        return Err("is an expression where a fixed duration is needed".to_owned());
    }
    let rest = text.strip_prefix('P').ok_or("must start with `P` (ISO 8601), e.g. PT30S")?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) => {
            if time.is_empty() {
                return Err("has `T` without hours, minutes or seconds after it".to_owned());
            }
            (date, Some(time))
        }
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return Err("has no amount after `P`".to_owned());
    }
    let date_units: [(char, f64); 4] = [('Y', f64::NAN), ('M', f64::NAN), ('W', 604_800.0), ('D', 86_400.0)];
    let time_units: [(char, f64); 3] = [('H', 3_600.0), ('M', 60.0), ('S', 1.0)];
    Ok(sum(date, &date_units)? + time.map_or(Ok(0.0), |t| sum(t, &time_units))?)
}

/// The sum of `<number><unit>` parts written in the units' order.
fn sum(mut text: &str, units: &[(char, f64)]) -> Result<f64, String> {
    let mut total = 0.0;
    let mut next = 0;
    while !text.is_empty() {
        let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or("ends without a unit")?;
        let number = &text[..end];
        let valid = !number.is_empty()
            && !number.starts_with('.')
            && !number.ends_with('.')
            && number.matches('.').count() <= 1;
        if !valid {
            return Err(format!("has a malformed number {number:?}"));
        }
        let unit = text[end..].chars().next().ok_or("ends without a unit")?;
        let at = units[next..].iter().position(|(u, _)| *u == unit).ok_or_else(|| {
            format!("has unit `{unit}` out of place; write years, months, weeks, days, then T, hours, minutes, seconds")
        })?;
        let (_, size) = units[next + at];
        if size.is_nan() {
            return Err(format!("uses `{unit}` (years or months), which have no fixed length; write days"));
        }
        total += number.parse::<f64>().map_err(|e| e.to_string())? * size;
        next += at + 1;
        text = &text[end + unit.len_utf8()..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(value: Value, expected: std::result::Result<Duration, &str>) {
        match (parse("/do/0/w/wait", &value), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{value}"),
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "{value}: {got} lacks {want:?}"),
            (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn iso_and_object_durations_read() {
        check(json!("PT1S"), Ok(Duration::from_secs(1)));
        check(json!("PT1M30S"), Ok(Duration::from_secs(90)));
        check(json!("P2DT3H"), Ok(Duration::from_secs(2 * 86_400 + 3 * 3_600)));
        check(json!("P1W"), Ok(Duration::from_secs(604_800)));
        check(json!("PT0.25S"), Ok(Duration::from_millis(250)));
        check(json!("PT1.5M"), Ok(Duration::from_secs(90)));
        check(json!({"seconds": 10}), Ok(Duration::from_secs(10)));
        check(json!({"minutes": 1, "milliseconds": 500}), Ok(Duration::from_millis(60_500)));
        check(json!({"days": 1, "hours": 1}), Ok(Duration::from_secs(90_000)));
    }

    #[test]
    fn bad_durations_are_placed() {
        check(json!("P"), Err("invalid /do/0/w/wait \"P\": has no amount after `P`"));
        check(json!("PT"), Err("has `T` without"));
        check(json!("P1DT"), Err("has `T` without"));
        check(json!("P1Y"), Err("no fixed length"));
        check(json!("P1M"), Err("no fixed length"));
        check(json!("PT1H2H"), Err("out of place"));
        check(json!("PT1S1M"), Err("out of place"));
        check(json!("PT1..5S"), Err("malformed number"));
        check(json!("PT.5S"), Err("malformed number"));
        check(json!("1s"), Err("must start with `P`"));
        check(json!("P400D"), Err("limit"));
        check(json!({"seconds": -1}), Err("whole number"));
        check(json!({"seconds": 1.5}), Err("whole number"));
        check(json!({"fortnights": 1}), Err("unknown unit"));
        check(json!("${ .delay }"), Err("is an expression"));
    }
}
