//! The `${ jq }` template compiler and renderer (`Template::compile`, `Template::render`).
//!
//! Input: the template (JSON when it parses as JSON, else one template string), then after the
//! first newline the context JSON (a fixed one when absent or not JSON). Evaluation is
//! unbounded here (the engine bounds it): templates whose programs could loop or build large
//! values are compiled but not rendered, so that what the fuzzer finds is a crash, not a bomb.
//!
//! Oracle beyond not panicking: a plain path (`.a.b[0]`) is walked without jaq; wrapped in
//! parentheses the same path goes through jaq, and the two must agree.

#![no_main]

use baton_core::expr::{Expression, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Words and signs with which a short jq program runs long or builds a large value: loops,
/// recursion, repetition (`"x" * 999 * 999`) and enumerations of all subvalues.
const UNBOUNDED: &[&str] = &[
    "range", "repeat", "recurse", "until", "while", "limit", "def", "reduce", "foreach", "combinations", "..", "*",
    "paths", "tostream", "walk", "halt", "input", "debug", "stderr",
];

/// Longest expression rendered: short enough that doubling (`[.,.]|`, `. + .|`, `tojson|`)
/// cannot be chained into a large value.
const MAX_RENDERED: usize = 24;

fn bounded(source: &str) -> bool {
    source.len() <= MAX_RENDERED && !UNBOUNDED.iter().any(|word| source.contains(word))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, context) = text.split_once('\n').unwrap_or((text, ""));
    let context: Value = serde_json::from_str(context).unwrap_or_else(|_| {
        json!({"input": {"a": [1, "two", {"b": null}], "n": 3.5}, "steps": {"s": {"output": {"id": "x"}}}})
    });
    let value = serde_json::from_str(template).unwrap_or_else(|_| Value::String(template.to_owned()));
    let Ok(compiled) = Template::compile("fuzz", &value) else { return };
    let sources: Vec<String> = compiled.expressions().iter().map(|e| e.source().to_owned()).collect();
    let _ = compiled.referenced_steps();
    if sources.len() <= 4 && sources.iter().all(|s| bounded(s)) {
        let _ = compiled.render(&context);
    }

    // Each plain path against jaq.
    for source in &sources {
        let Ok(direct) = Expression::compile("fuzz", source) else { continue };
        if !is_plain(source) {
            continue;
        }
        let Ok(through_jaq) = Expression::compile("fuzz", &format!("({source})")) else {
            panic!("plain path {source:?} compiles, but jaq refuses it");
        };
        match (direct.eval(&context), through_jaq.eval(&context)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{source:?} on {context}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{source:?} on {context}: walked {a:?}, jaq {b:?}"),
        }
    }
});

/// True for what the compiler walks itself: `.` then keys and indexes only (a cheap
/// restatement; the compiler decides, this only keeps jaq's side small).
fn is_plain(source: &str) -> bool {
    let source = source.trim();
    source.starts_with('.')
        && source.len() <= 64
        && source.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '[' | ']' | '"' | '-' | ' '))
}
