//! How large what an execution keeps may be, so that everything accepted can be read back:
//! an execution with its tasks, a journal event and a page of executions each fit in one API
//! message (4 MiB). Inputs and outputs over their bound are refused with a typed error naming
//! the bound; error texts, which come from services and cannot be refused, are cut.
//!
//! What one execution holds at most, by default: an input and an output of 1 MiB of JSON
//! each, an error of 4 KiB, and per task an error of 4 KiB besides ids and times (the ids are
//! in the definition, at most 1 MiB).

use std::io;

use serde_json::Value;

/// The largest execution input and step input by default, as JSON text: 1 MiB.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 1024 * 1024;
/// The largest step output and run output by default, as JSON text: 1 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The longest cancel reason accepted, and the longest error or reason a journal keeps (a
/// longer one from a service is cut to it), in bytes.
pub const MAX_REASON_BYTES: usize = 4 * 1024;

/// The length of `value` as compact JSON text, without writing the text anywhere.
pub fn json_size(value: &Value) -> usize {
    serialized_size(value)
}

/// The length of `value` serialized as compact JSON, without writing the text anywhere; 0 for
/// a value that does not serialize.
pub fn serialized_size<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => 0,
    }
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `text` cut to at most `max` bytes on a character boundary, saying how long it was; as is
/// when it fits.
pub fn cut_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let note = format!("… (cut from {} bytes)", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&note);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_those_of_compact_json() {
        for value in [serde_json::json!(null), serde_json::json!({"a": [1, "é", {"b": null}]}), Value::from("x\n")] {
            assert_eq!(json_size(&value), serde_json::to_vec(&value).unwrap().len(), "{value}");
        }
    }

    #[test]
    fn texts_are_cut_on_a_character_boundary_within_the_bound() {
        assert_eq!(cut_text("short".to_owned(), 10), "short");
        let cut = cut_text("é".repeat(100), 50);
        assert!(cut.len() <= 50, "{cut}");
        assert!(cut.ends_with("… (cut from 200 bytes)"), "{cut}");
        assert!(cut.starts_with('é'));
    }
}
