//! Where jq expressions run, and how far one evaluation may go.
//!
//! Plain paths (`.steps.charge.output.id`) are walked wherever a template is rendered; every
//! other expression goes to an [`Evaluator`]. [`InProcessEvaluator`] runs jaq on the caller's
//! thread with no bound but the output size: for tests and for embedding with trusted
//! definitions. A server running definitions from untrusted authors plugs in an evaluator that
//! bounds CPU time and memory (`baton serve` runs them in sandboxed worker processes).

use std::fmt;
use std::time::Duration;

use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

use super::{Compiled, EvalError, Expression};
use crate::api::BoxFuture;

/// The error class of an evaluation that went past a bound: such a step fails without retry.
pub const EXPRESSION_LIMIT: &str = "expression_limit";

/// How far one evaluation may go: the expressions of one template (a step's input, a
/// workflow's output) rendered together count as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time of one evaluation.
    pub cpu_time: Duration,
    /// Memory one evaluation may use, on top of what the evaluator itself takes.
    pub memory_bytes: u64,
    /// The values one evaluation produces, together, as JSON text.
    pub output_bytes: usize,
}

/// 1 s of CPU: expressions map data, which takes microseconds.
pub const DEFAULT_CPU_TIME: Duration = Duration::from_secs(1);
/// 256 MiB of address space on top of the evaluator's own, for the context and what jq makes.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// 1 MiB of JSON, the same as a step's output.
pub const DEFAULT_OUTPUT_BYTES: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self { cpu_time: DEFAULT_CPU_TIME, memory_bytes: DEFAULT_MEMORY_BYTES, output_bytes: DEFAULT_OUTPUT_BYTES }
    }
}

/// The bound an evaluation went past.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bound {
    /// CPU time.
    CpuTime(Duration),
    /// Time the evaluator may go without using any CPU (stopped, or starved of the CPU).
    Stalled(Duration),
    /// Memory, in bytes.
    Memory(u64),
    /// The evaluator's stack, in bytes: recursion too deep.
    Stack(u64),
    /// The size of the values produced, in bytes of JSON text.
    Output(usize),
    /// Nesting of the values produced, in levels.
    Depth(usize),
    /// The evaluator stopped in another way, said here.
    Crashed(String),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |d: &Duration| crate::duration::format(*d);
        match self {
            Self::CpuTime(d) => write!(f, "used more than its CPU time limit of {}", time(d)),
            Self::Stalled(d) => write!(f, "stalled: its evaluator made no progress for {}", time(d)),
            Self::Memory(bytes) => write!(f, "needed more than its memory limit of {}", size(*bytes)),
            Self::Stack(bytes) => write!(f, "recursed deeper than the evaluator's {} stack allows", size(*bytes)),
            Self::Output(bytes) => write!(f, "produced more than its output limit of {} of JSON", size(*bytes as u64)),
            Self::Depth(levels) => write!(f, "produced a value nested deeper than {levels} levels"),
            Self::Crashed(how) => write!(f, "stopped the evaluator ({how})"),
        }
    }
}

/// `256 MiB`, `1 KiB`, `100 bytes`.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    match bytes {
        b if b >= MIB && b.is_multiple_of(MIB) => format!("{} MiB", b / MIB),
        b if b >= 1024 && b.is_multiple_of(1024) => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

/// Evaluates expressions that are not plain paths.
///
/// Implementations must be cancel-safe: a dropped evaluation is abandoned, and whatever runs
/// it is stopped or left to finish within its bounds.
pub trait Evaluator: Send + Sync + fmt::Debug {
    /// The value of each of `expressions` against `context`, with `variables` bound to the
    /// variables they were compiled with (they share them: one template's expressions), in
    /// order; the first error ends the evaluation.
    fn evaluate<'a>(
        &'a self,
        expressions: &'a [&'a Expression],
        context: &'a Value,
        variables: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, EvalError>>;
}

/// Runs jaq on the caller's thread: bounded in output size only. A runaway expression holds
/// the thread, and one that recurses without end overflows its stack, so this is for tests and
/// for embedding with definitions from trusted authors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProcessEvaluator {
    /// The values one evaluation produces, together, as JSON text.
    pub output_bytes: usize,
}

impl Default for InProcessEvaluator {
    fn default() -> Self {
        Self { output_bytes: DEFAULT_OUTPUT_BYTES }
    }
}

impl Evaluator for InProcessEvaluator {
    fn evaluate<'a>(
        &'a self,
        expressions: &'a [&'a Expression],
        context: &'a Value,
        variables: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, EvalError>> {
        Box::pin(std::future::ready(evaluate_all(expressions, context, variables, self.output_bytes)))
    }
}

/// Evaluates `expressions` against `context` on this thread, in order, converting the context
/// for jaq once; the values jaq produces may take `output_bytes` of JSON text together.
pub fn evaluate_all(
    expressions: &[&Expression],
    context: &Value,
    variables: &[Value],
    output_bytes: usize,
) -> Result<Vec<Value>, EvalError> {
    let mut evaluation = Evaluation::new(context, variables, output_bytes);
    expressions.iter().map(|e| evaluation.eval(e)).collect()
}

/// Expressions evaluated one after another against one context on this thread, unbounded but
/// for the size of their output: what every evaluator runs in the end.
#[derive(Debug)]
pub struct Evaluation<'a> {
    context: &'a Value,
    variables: &'a [Value],
    /// The context as jaq's value, converted on first use.
    input: Option<Val>,
    produced: usize,
    output_bytes: usize,
}

impl<'a> Evaluation<'a> {
    /// An evaluation against `context` whose values may take `output_bytes` of JSON text.
    pub fn new(context: &'a Value, variables: &'a [Value], output_bytes: usize) -> Self {
        Self { context, variables, input: None, produced: 0, output_bytes }
    }

    /// The value of `expression`.
    pub fn eval(&mut self, expression: &Expression) -> Result<Value, EvalError> {
        let filter = match &expression.compiled {
            Compiled::Path(_) | Compiled::VariablePath(..) => {
                return expression.eval_with(self.context, self.variables);
            }
            Compiled::Jaq(filter) => filter,
        };
        let input = match &self.input {
            Some(input) => input.clone(),
            None => {
                let read = Val::deserialize(self.context)
                    .map_err(|e| expression.fail(format!("cannot read its context: {e}")))?;
                self.input.insert(read).clone()
            }
        };
        let bound = expression.bind(self.variables)?;
        let text = expression.run_jaq(filter, input, bound)?;
        self.produced = self.produced.saturating_add(text.len());
        if self.produced > self.output_bytes {
            return Err(EvalError::limit(expression.source(), Bound::Output(self.output_bytes)));
        }
        expression.read_output(&text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compile(sources: &[&str]) -> Vec<Expression> {
        sources.iter().map(|s| Expression::compile("f", s).unwrap()).collect()
    }

    fn run(sources: &[&str], output_bytes: usize) -> Result<Vec<Value>, EvalError> {
        let expressions = compile(sources);
        let refs: Vec<&Expression> = expressions.iter().collect();
        evaluate_all(&refs, &json!({"input": {"n": 2, "s": "ab"}}), &[], output_bytes)
    }

    #[test]
    fn a_batch_is_evaluated_in_order_and_stops_at_the_first_error() {
        assert_eq!(
            run(&[".input.n", ".input.n * 3", ".input.s + \"c\""], 1024).unwrap(),
            [json!(2), json!(6), json!("abc")]
        );
        let error = run(&[".input.n + 1", ".input.s + 1", "error(\"later\")"], 1024).unwrap_err();
        assert_eq!(error.expression, ".input.s + 1");
        assert_eq!(error.bound, None);
    }

    #[test]
    fn output_past_the_limit_is_an_expression_limit_naming_the_expression() {
        let error = run(&["[range(100)]", "[range(1000)]"], 1024).unwrap_err();
        assert_eq!(error.bound, Some(Bound::Output(1024)));
        assert_eq!(
            error.to_string(),
            "expression_limit: expression `[range(1000)]` produced more than its output limit of 1 KiB of JSON"
        );
        assert!(run(&["[range(100)]"], 1024).is_ok());
    }

    #[test]
    fn bounds_say_what_was_exceeded() {
        let cases = [
            (Bound::CpuTime(Duration::from_secs(1)), "used more than its CPU time limit of 1s"),
            (Bound::Stalled(Duration::from_secs(10)), "stalled: its evaluator made no progress for 10s"),
            (Bound::Memory(DEFAULT_MEMORY_BYTES), "needed more than its memory limit of 256 MiB"),
            (Bound::Stack(16 << 20), "recursed deeper than the evaluator's 16 MiB stack allows"),
            (Bound::Output(100), "produced more than its output limit of 100 bytes of JSON"),
            (Bound::Depth(128), "produced a value nested deeper than 128 levels"),
            (Bound::Crashed("killed by signal 9".to_owned()), "stopped the evaluator (killed by signal 9)"),
        ];
        for (bound, said) in cases {
            assert_eq!(bound.to_string(), said);
        }
    }

    #[test]
    fn the_in_process_evaluator_answers_at_once() {
        use futures_util::FutureExt as _;
        let expressions = compile(&[".input.n + 1"]);
        let refs: Vec<&Expression> = expressions.iter().collect();
        let context = json!({"input": {"n": 1}});
        let answer = InProcessEvaluator::default().evaluate(&refs, &context, &[]).now_or_never();
        assert_eq!(answer, Some(Ok(vec![json!(2)])));
    }
}
