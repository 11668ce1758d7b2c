//! Makes every execution and journal event fit in one answer, so that whatever a store holds
//! can be read back.
//!
//! What is written now is bounded so that it fits ([`baton_core::bounds`]): an execution's
//! input and output, its error and every reason. Two things can still be too large for one
//! message: the tasks' errors taken together (up to 4 KiB each, for up to 10,000 tasks), which
//! are shortened evenly; and an execution or event stored before those bounds existed, whose
//! texts are cut to [`MAX_REASON_BYTES`] and whose JSON fields are left out, largest first, and
//! named in `elided`. The store keeps everything whole.

use baton_core::bounds::{MAX_REASON_BYTES, cut_text};
use prost::Message as _;

use crate::pb;

/// Room left in an answer for what surrounds its executions (the response message, a page
/// token, gRPC framing).
pub(crate) const ENVELOPE_BYTES: usize = 16 * 1024;

/// The shortest a task's error is cut to: its start and how long it was.
const MIN_ERROR_BYTES: usize = 64;

/// `execution` within `budget` bytes: the tasks' errors shortened evenly first, then (only
/// for an execution stored before the write-time bounds) its own error cut and its input and
/// output left out, the larger first.
pub(crate) fn fit_execution(mut execution: pb::Execution, budget: usize) -> pb::Execution {
    let longest = execution.tasks.iter().filter_map(|t| t.error.as_ref().map(String::len)).max().unwrap_or(0);
    let mut cap = longest;
    while execution.encoded_len() > budget && cap > MIN_ERROR_BYTES {
        cap /= 2;
        for task in &mut execution.tasks {
            if let Some(error) = task.error.take() {
                task.error = Some(cut_text(error, cap.max(MIN_ERROR_BYTES)));
            }
        }
    }
    if execution.encoded_len() <= budget {
        return execution;
    }
    if let Some(error) = execution.error.take() {
        execution.error = Some(cut_text(error, MAX_REASON_BYTES));
    }
    let size = execution.encoded_len();
    let pb::Execution { input_json, output_json, elided, .. } = &mut execution;
    let mut fields = vec![("input_json", input_json)];
    fields.extend(output_json.as_mut().map(|output| ("output_json", output)));
    leave_out(fields, elided, size, budget);
    execution
}

/// `event` within `budget` bytes: for an event stored before the write-time bounds, its
/// error or reason cut and its JSON fields left out, the largest first.
pub(crate) fn fit_event(mut event: pb::Event, budget: usize) -> pb::Event {
    let size = event.encoded_len();
    if size <= budget {
        return event;
    }
    use pb::event::Kind;
    let pb::Event { kind, elided, .. } = &mut event;
    let (text, fields): (Option<&mut String>, Vec<(&'static str, &mut String)>) = match kind {
        Some(Kind::Started(started)) => (None, vec![("started.input_json", &mut started.input_json)]),
        Some(Kind::TaskSucceeded(succeeded)) => {
            let mut fields = vec![("task_succeeded.output_json", &mut succeeded.output_json)];
            fields.extend(succeeded.context_json.as_mut().map(|c| ("task_succeeded.context_json", c)));
            (None, fields)
        }
        Some(Kind::Completed(completed)) => (None, vec![("completed.output_json", &mut completed.output_json)]),
        Some(Kind::SignalReceived(signal)) => (None, vec![("signal_received.data_json", &mut signal.data_json)]),
        Some(Kind::SignalConsumed(consumed)) => {
            (None, vec![("signal_consumed.output_json", &mut consumed.output_json)])
        }
        Some(Kind::TaskFailed(failed)) => (Some(&mut failed.error), Vec::new()),
        Some(Kind::TaskSkipped(skipped)) => (Some(&mut skipped.reason), Vec::new()),
        Some(Kind::Cancelled(cancelled)) => (Some(&mut cancelled.reason), Vec::new()),
        Some(Kind::Failed(failed)) => (Some(&mut failed.error), Vec::new()),
        _ => (None, Vec::new()),
    };
    let mut size = size;
    if let Some(text) = text {
        let before = text.len();
        *text = cut_text(std::mem::take(text), MAX_REASON_BYTES);
        size -= before - text.len();
    }
    leave_out(fields, elided, size, budget);
    event
}

/// Empties `fields`, the largest first, naming each in `elided`, until `size` (the whole
/// message's encoded size, which shrinks by each emptied field's length) is within `budget`.
fn leave_out(mut fields: Vec<(&'static str, &mut String)>, elided: &mut Vec<String>, mut size: usize, budget: usize) {
    fields.sort_by_key(|(_, text)| std::cmp::Reverse(text.len()));
    for (name, text) in fields {
        if size <= budget {
            break;
        }
        // Close enough: a length prefix shrinks too, and the name added is short.
        size = size.saturating_sub(text.len()) + name.len() + 2;
        text.clear();
        elided.push(name.to_owned());
    }
}
