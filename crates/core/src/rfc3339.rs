//! Timestamps written as chrono writes them (RFC 3339, UTC, `Z`, the fraction in 0, 3, 6 or 9
//! digits), formatted by hand: chrono's serializer goes through `fmt` a character at a time,
//! and journal events, written on every step, spent more time there than anywhere else.

use chrono::{Datelike, Timelike};
use serde::Serializer;

use crate::Timestamp;

/// Serializes `at` exactly as chrono's `Serialize` does, faster.
pub(crate) fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0_u8; 30];
    match format(at, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => serde::Serialize::serialize(at, serializer),
    }
}

/// `at` as text in `buffer`, or `None` where chrono's own form differs from the common one
/// (years outside 0..=9999, leap seconds).
fn format<'b>(at: &Timestamp, buffer: &'b mut [u8; 30]) -> Option<&'b str> {
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut text = Text { buffer, len: 0 };
    text.digits(year, 4);
    text.byte(b'-');
    text.digits(at.month(), 2);
    text.byte(b'-');
    text.digits(at.day(), 2);
    text.byte(b'T');
    text.digits(at.hour(), 2);
    text.byte(b':');
    text.digits(at.minute(), 2);
    text.byte(b':');
    text.digits(at.second(), 2);
    if digits > 0 {
        text.byte(b'.');
        text.digits(fraction, digits);
    }
    text.byte(b'Z');
    let len = text.len;
    std::str::from_utf8(&buffer[..len]).ok()
}

struct Text<'b> {
    buffer: &'b mut [u8; 30],
    len: usize,
}

impl Text<'_> {
    fn byte(&mut self, byte: u8) {
        self.buffer[self.len] = byte;
        self.len += 1;
    }

    /// `value` in `count` decimal digits, zero-padded.
    fn digits(&mut self, mut value: u32, count: usize) {
        for place in (self.len..self.len + count).rev() {
            self.buffer[place] = b'0' + u8::try_from(value % 10).expect("a digit");
            value /= 10;
        }
        self.len += count;
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn chrono_text(at: &Timestamp) -> String {
        serde_json::to_string(at).unwrap()
    }

    fn ours(at: &Timestamp) -> String {
        let mut serializer = serde_json::Serializer::new(Vec::new());
        serialize(at, &mut serializer).unwrap();
        String::from_utf8(serializer.into_inner()).unwrap()
    }

    #[test]
    fn writes_what_chrono_writes() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let fractions = [0, 1, 999_999_999, 5_000_000, 120_000, 7, 1_000, 999_000, 1_000_000_000, 1_999_999_999];
        for round in 0..20_000 {
            let seconds =
                i64::try_from(next() % 253_402_300_800).unwrap() - if round % 7 == 0 { 62_167_219_200 } else { 0 };
            let nanos = if round < fractions.len() * 50 {
                fractions[round % fractions.len()]
            } else {
                u32::try_from(next() % 1_000_000_000).unwrap()
            };
            let Some(at) = chrono::Utc.timestamp_opt(seconds, nanos).single() else { continue };
            assert_eq!(ours(&at), chrono_text(&at), "{seconds} s {nanos} ns");
        }
    }

    #[test]
    fn years_outside_four_digits_fall_back_to_chrono() {
        for at in [
            chrono::Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            chrono::Utc.with_ymd_and_hms(10_000, 12, 31, 23, 59, 59).unwrap(),
            chrono::Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
        ] {
            assert_eq!(ours(&at), chrono_text(&at));
        }
    }
}
