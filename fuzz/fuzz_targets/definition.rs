//! The workflow definition parser on any text, YAML or JSON (`CheckedDefinition::parse`).
//!
//! Beyond not panicking: whatever it accepts, its stored form (the canonical JSON body) reads
//! back through `from_body`, as recovery and every later read do, to the same content hash.
//! An accepted definition that cannot be read back would be an execution nobody can resume.

#![no_main]

use baton_workflow::CheckedDefinition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(checked) = CheckedDefinition::parse(text) else { return };
    let again = CheckedDefinition::from_body(checked.canonical())
        .unwrap_or_else(|e| panic!("accepted {text:?}, but its stored form {} is refused: {e}", checked.canonical()));
    assert_eq!(again.content_hash(), checked.content_hash(), "the stored form of {text:?} reads back as another");
    assert_eq!(again.canonical(), checked.canonical());
});
