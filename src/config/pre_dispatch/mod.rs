//! `pre_dispatch`: how many tasks a call takes from the input before the first completion.
//!
//! joblib accepts `"all"`, an integer, or a string expression such as `"2*n_jobs"`, which it evaluates
//! after replacing the text `n_jobs` with the effective worker count. pj keeps the same language but
//! never hands it to an interpreter: a small tokenizer and recursive-descent parser build an AST of
//! numeric literals, `n_jobs`, parentheses, unary `+`/`-` and the binary operators
//! `+ - * / // % **`, evaluated with Python's int/float rules and joblib's limits (30 characters after
//! substitution, every literal and intermediate value within ±1e6, checked *before* an exponentiation
//! is computed so `9**9**9` is refused at once).
//!
//! The tree is in [`ast`], the tokenizer in [`lexer`], the parser in [`parser`], the arithmetic in
//! [`eval`]; this module holds the checked expression and its limits.

mod ast;
mod eval;
mod lexer;
mod parser;

use std::fmt;

use self::ast::{BinOp, Node, Num};
use self::eval::eval_node;
use self::lexer::{Tok, describe, tokenize};
use self::parser::Parser;
use crate::error::{Error, Result};

/// joblib's bound on the length of the expression after `n_jobs` has been replaced by a number.
pub const MAX_EXPR_LEN: usize = 30;

/// joblib's bound on the magnitude of every literal and every intermediate result.
pub const MAX_MAGNITUDE: i64 = 1_000_000;

/// The text that stands for the effective number of workers.
const N_JOBS: &str = "n_jobs";

/// A validated `pre_dispatch` expression: its source text and the parsed form that is evaluated
/// for each call's effective `n_jobs`.
#[derive(Clone, Debug, PartialEq)]
pub struct PreDispatchExpr {
    source: String,
    ast: Node,
    uses_n_jobs: bool,
}

impl PreDispatchExpr {
    /// Parses and checks an expression at the moment it is configured, so that mistakes surface
    /// where they are made rather than at the first call.
    ///
    /// Checks, in joblib's order: the length after substituting `n_jobs` with the current CPU count
    /// ([`crate::cpu::cpu_count`]), the syntax, every literal's magnitude, and one trial evaluation
    /// with that CPU count (division by zero, an intermediate value beyond 1e6). A result below 1 is
    /// refused here only when the expression does not mention `n_jobs` (a constant like `"0"`); an
    /// expression on `n_jobs` may still be fine for the `n_jobs` a call will use, and [`Self::eval`]
    /// checks it then. Nothing is ever executed as code.
    pub fn parse(text: &str) -> Result<Self> {
        let cpus = crate::cpu::cpu_count();
        check_length(text, cpus)?;
        let expr = Self::parse_syntax(text)?;
        let value = expr.evaluate(cpus)?;
        if !expr.uses_n_jobs {
            expr.at_least_one(cpus, value)?;
        }
        Ok(expr)
    }

    /// Syntax and literal checks only, with no length check and no trial evaluation, so the result
    /// does not depend on the machine; [`Self::eval`] still applies every rule at call time.
    pub(crate) fn parse_syntax(text: &str) -> Result<Self> {
        let tokens = tokenize(text).map_err(|detail| invalid(text, detail))?;
        let mut parser = Parser {
            tokens: &tokens,
            pos: 0,
            depth: 0,
        };
        let ast = parser.expr().map_err(|detail| invalid(text, detail))?;
        if let Some(tok) = tokens.get(parser.pos) {
            return Err(invalid(
                text,
                format!(
                    "not a valid arithmetic expression: unexpected {}",
                    describe(tok)
                ),
            ));
        }
        let uses_n_jobs = tokens.contains(&Tok::NJobs);
        Ok(PreDispatchExpr {
            source: text.to_owned(),
            ast,
            uses_n_jobs,
        })
    }

    /// The number of tasks to pre-dispatch for a call with `n_jobs` effective workers.
    ///
    /// Follows joblib: the substituted text must be at most 30 characters, every intermediate value
    /// within ±1e6, and the result is truncated toward zero. Unlike joblib, which silently returns an
    /// empty result list when this is 0, a result below 1 is an error.
    pub fn eval(&self, n_jobs: usize) -> Result<usize> {
        check_length(&self.source, n_jobs)?;
        let value = self.evaluate(n_jobs)?;
        self.at_least_one(n_jobs, value)
    }

    /// The expression as the user wrote it, for messages and round-tripping.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates without the final truncation and `>= 1` check.
    fn evaluate(&self, n_jobs: usize) -> Result<Num> {
        // n_jobs becomes a literal after joblib's substitution, so it obeys the literal limit.
        let n = i64::try_from(n_jobs)
            .ok()
            .map(Num::Int)
            .filter(|n| n.magnitude_ok() || !self.uses_n_jobs)
            .ok_or_else(|| {
                invalid(
                    &self.source,
                    format!("n_jobs = {n_jobs} is too large, max is {MAX_MAGNITUDE}"),
                )
            })?;
        eval_node(&self.ast, n)
            .map_err(|detail| invalid(&self.source, self.context(n_jobs, detail)))
    }

    /// Names the `n_jobs` a failure happened with, when it depends on it.
    fn context(&self, n_jobs: usize, detail: String) -> String {
        if self.uses_n_jobs {
            format!("with n_jobs = {n_jobs}, {detail}")
        } else {
            detail
        }
    }

    /// Truncates toward zero (joblib's `int()`), refusing a result below 1.
    fn at_least_one(&self, n_jobs: usize, value: Num) -> Result<usize> {
        let truncated = match value {
            Num::Int(i) => i,
            // In range: every value was checked against ±1e6.
            Num::Float(x) => x.trunc() as i64,
        };
        usize::try_from(truncated)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                let detail = format!(
                    "evaluates to {value} ({truncated} tasks), but at least 1 task must be pre-dispatched"
                );
                invalid(&self.source, self.context(n_jobs, detail))
            })
    }
}

/// The built-in default, `"2*n_jobs"`, built directly so that no parse (and no CPU detection) is
/// needed to get it.
pub(crate) fn default_expr() -> PreDispatchExpr {
    PreDispatchExpr {
        source: super::DEFAULT_PRE_DISPATCH.to_owned(),
        ast: Node::Bin(
            BinOp::Mul,
            Box::new(Node::Lit(Num::Int(2))),
            Box::new(Node::NJobs),
        ),
        uses_n_jobs: true,
    }
}

impl fmt::Display for PreDispatchExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn invalid(text: &str, detail: impl fmt::Display) -> Error {
    Error::invalid(format!("invalid pre_dispatch \"{text}\": {detail}"))
}

fn check_length(text: &str, n_jobs: usize) -> Result<()> {
    let substituted = text.replace(N_JOBS, &n_jobs.to_string());
    let len = substituted.chars().count();
    if len > MAX_EXPR_LEN {
        return Err(invalid(
            text,
            format!(
                "expression is too long: \"{substituted}\" (n_jobs = {n_jobs}) has {len} characters, max is {MAX_EXPR_LEN}"
            ),
        ));
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::time::{Duration, Instant};

    fn eval(text: &str, n_jobs: usize) -> Result<usize> {
        PreDispatchExpr::parse_syntax(text)?.eval(n_jobs)
    }

    /// The raw value before truncation, to check Python's arithmetic exactly.
    fn raw(text: &str, n_jobs: usize) -> Num {
        PreDispatchExpr::parse_syntax(text)
            .unwrap()
            .evaluate(n_jobs)
            .unwrap()
    }

    fn rejected(text: &str) -> String {
        let err = PreDispatchExpr::parse(text).expect_err(text);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            err.message()
                .contains(&crate::error::one_line(format!("\"{text}\""))),
            "{text}: {}",
            err.message()
        );
        err.message().to_owned()
    }

    #[test]
    fn default_matches_its_text() {
        assert_eq!(
            default_expr(),
            PreDispatchExpr::parse_syntax(super::super::DEFAULT_PRE_DISPATCH).unwrap()
        );
        assert_eq!(default_expr().eval(4).unwrap(), 8);
    }

    #[test]
    fn accepted_spellings() {
        for text in [
            "n_jobs",
            "2*n_jobs",
            "1.5*n_jobs",
            "3",
            "2 * n_jobs",
            "(n_jobs+1)//2",
            "2.*n_jobs",
            "+n_jobs",
        ] {
            let expr = PreDispatchExpr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(expr.source(), text);
            assert_eq!(expr.to_string(), text);
        }
        assert_eq!(eval("2 * n_jobs", 4).unwrap(), 8);
        assert_eq!(eval("n_jobs", 3).unwrap(), 3);
        assert_eq!(eval("3", 64).unwrap(), 3);
        assert_eq!(eval("(n_jobs+1)//2", 5).unwrap(), 3);
    }

    #[test]
    fn joblib_docstring_example_and_truncation() {
        assert_eq!(eval("1.5*n_jobs", 2).unwrap(), 3);
        assert_eq!(eval("1.5*n_jobs", 3).unwrap(), 4);
        assert_eq!(raw("1.5*n_jobs", 3), Num::Float(4.5));
        assert_eq!(eval("n_jobs/4", 8).unwrap(), 2);
        assert_eq!(eval("-1.5+3", 1).unwrap(), 1);
    }

    #[test]
    fn below_one_is_an_error() {
        let err = eval("n_jobs/4", 2).unwrap_err();
        assert!(err.message().contains("at least 1"), "{}", err.message());
        assert!(
            err.message().contains("with n_jobs = 2"),
            "{}",
            err.message()
        );
        assert!(!eval("0", 2).unwrap_err().message().contains("with n_jobs"));
        // A constant does not depend on n_jobs at all, however large.
        assert_eq!(eval("3", 10_000_000).unwrap(), 3);
        assert!(eval("n_jobs-2", 2).is_err());
        assert!(eval("-n_jobs", 2).is_err());
        assert!(eval("0.9", 2).is_err());
        // Constants below 1 are refused when configured; n_jobs expressions wait for the real n_jobs.
        rejected("0");
        rejected("-1");
        rejected("1/2");
        assert!(PreDispatchExpr::parse("n_jobs-1000").is_ok());
    }

    #[test]
    fn python_arithmetic() {
        assert_eq!(raw("7//2", 1), Num::Int(3));
        assert_eq!(raw("-7//2", 1), Num::Int(-4));
        assert_eq!(raw("7//-2", 1), Num::Int(-4));
        assert_eq!(raw("-7%3", 1), Num::Int(2));
        assert_eq!(raw("7%-3", 1), Num::Int(-2));
        assert_eq!(raw("7%3", 1), Num::Int(1));
        assert_eq!(raw("2**-1", 1), Num::Float(0.5));
        assert_eq!(raw("-2**2", 1), Num::Int(-4));
        assert_eq!(raw("(-2)**2", 1), Num::Int(4));
        assert_eq!(raw("2**3**2", 1), Num::Int(512));
        assert_eq!(raw("2**2*3", 1), Num::Int(12));
        assert_eq!(raw("7/2", 1), Num::Float(3.5));
        assert_eq!(raw("6/2", 1), Num::Float(3.0));
        assert_eq!(raw("7.0//2", 1), Num::Float(3.0));
        assert_eq!(raw("-7.0//2", 1), Num::Float(-4.0));
        assert_eq!(raw("-7.5%2", 1), Num::Float(0.5));
        assert_eq!(raw("7.5%-2", 1), Num::Float(-0.5));
        assert_eq!(raw("1+2*3-4", 1), Num::Int(3));
        assert_eq!(raw("10-4-3", 1), Num::Int(3));
        assert_eq!(raw("100/10/5", 1), Num::Float(2.0));
        assert_eq!(raw("2*-3", 1), Num::Int(-6));
        assert_eq!(raw("--3", 1), Num::Int(3));
        assert_eq!(raw("-+-3", 1), Num::Int(3));
        assert_eq!(raw("4**0.5", 1), Num::Float(2.0));
        assert_eq!(raw("0**0", 1), Num::Int(1));
        assert_eq!(raw("(-1)**999999", 1), Num::Int(-1));
        assert_eq!(raw("1**999999", 1), Num::Int(1));
        assert_eq!(raw("n_jobs**2", 3), Num::Int(9));
    }

    #[test]
    fn float_literal_forms() {
        assert_eq!(raw("1.5", 1), Num::Float(1.5));
        assert_eq!(raw("2.", 1), Num::Float(2.0));
        assert_eq!(raw(".5", 1), Num::Float(0.5));
        assert_eq!(raw("1e3", 1), Num::Float(1000.0));
        assert_eq!(raw("1E3", 1), Num::Float(1000.0));
        assert_eq!(raw("2.5e-1", 1), Num::Float(0.25));
        assert_eq!(raw("1.e2", 1), Num::Float(100.0));
        assert_eq!(raw("00", 1), Num::Int(0));
        assert_eq!(raw("1e+2", 1), Num::Float(100.0));
    }

    #[test]
    fn limits_as_joblib() {
        let msg = rejected("1e7");
        assert!(msg.contains("10000000.0 is too large"), "{msg}");
        let msg = rejected("10**7");
        assert!(msg.contains("too large"), "{msg}");
        rejected("1000001");
        rejected("99999999999999999999999999");
        rejected("1e400");
        assert!(PreDispatchExpr::parse("1000000").is_ok());
        assert!(PreDispatchExpr::parse("1e6").is_ok());
        // 1000*1000 is at the limit, the next multiplication is not.
        assert!(PreDispatchExpr::parse("1000*1000").is_ok());
        rejected("1000*1000*2");
        rejected("1000*1000+1");
        rejected("-1000*1000-1");
        rejected("2**20");
        rejected("2.0**20");
        assert!(PreDispatchExpr::parse("2**19").is_ok());
        // Large n_jobs is a literal after substitution, so it obeys the literal limit.
        let expr = PreDispatchExpr::parse_syntax("n_jobs").unwrap();
        assert!(expr.eval(1_000_001).is_err());
        assert_eq!(expr.eval(1_000_000).unwrap(), 1_000_000);
    }

    #[test]
    fn division_by_zero() {
        for text in [
            "1/0", "1//0", "1%0", "1.0/0", "1.5//0.0", "2%0.0", "0**-1", "0.0**-1", "1/(2-2)",
        ] {
            let msg = rejected(text);
            assert!(msg.contains("by zero"), "{text}: {msg}");
        }
        assert!(eval("n_jobs/(n_jobs-2)", 2).is_err());
    }

    #[test]
    fn length_is_counted_after_substitution() {
        let thirty = "1+1+1+1+1+1+1+1+1+1+1+1+1+1+11";
        assert_eq!(thirty.len(), 30);
        assert_eq!(PreDispatchExpr::parse(thirty).unwrap().eval(1).unwrap(), 25);
        let thirty_one = "1+1+1+1+1+1+1+1+1+1+1+1+1+1+111";
        assert_eq!(thirty_one.len(), 31);
        let msg = rejected(thirty_one);
        assert!(msg.contains("too long") && msg.contains("31"), "{msg}");
        // 30 characters as written: 25 with a one-digit n_jobs, 30 with six digits, 31 with seven.
        let text = "n_jobs+1+1+1+1+1+1+1+1+1+1+1+1";
        assert_eq!(text.len(), 30);
        let expr = PreDispatchExpr::parse_syntax(text).unwrap();
        assert_eq!(expr.eval(2).unwrap(), 14);
        assert_eq!(expr.eval(100_000).unwrap(), 100_012);
        let err = expr.eval(1_000_000).unwrap_err();
        assert!(err.message().contains("too long"), "{}", err.message());
        // Long template text is refused on length before any parsing.
        let long = "(".repeat(100_000);
        assert!(rejected(&long).contains("too long"));
    }

    #[test]
    fn not_arithmetic_is_refused() {
        for text in [
            "import os",
            "exec('import os')",
            "1+1; import os",
            "__import__('os')",
            "' ' * 10**10",
            "abs(2)",
            "n_jobs()",
            "n_jobs.real",
            "x",
            "n_jobsx",
            "xn_jobs",
            "2n_jobs",
            "n_jobs n_jobs",
            "1 2",
            "",
            "   ",
            "()",
            "(1",
            "1)",
            "1+",
            "*2",
            "2***2",
            "1.2.3",
            ".",
            "1e",
            "0x10",
            "1j",
            "01",
            "1_000",
            "[1]",
            "1,2",
            "True",
            "None",
            "all",
            "2 ^ 3",
            "1\n+1",
            "１",
            "lambda: 1",
            "n_jobs if 1 else 2",
            "1 < 2",
            "~1",
        ] {
            let msg = rejected(text);
            assert!(!msg.contains("too large"), "{text}: {msg}");
        }
    }

    #[test]
    fn deep_nesting_cannot_overflow_the_stack() {
        // Unbounded by the length check only through parse_syntax; the depth guard still applies.
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(PreDispatchExpr::parse_syntax(&deep).is_err());
        let unary = format!("{}1", "-".repeat(10_000));
        assert!(PreDispatchExpr::parse_syntax(&unary).is_err());
        let powers = format!("2{}", "**2".repeat(10_000));
        assert!(PreDispatchExpr::parse_syntax(&powers).is_err());
        assert_eq!(raw("((((((((1))))))))", 1), Num::Int(1));
    }

    #[test]
    fn hostile_inputs_are_rejected_quickly() {
        // Warm the cached CPU detection so only the parser is timed.
        let _ = crate::cpu::cpu_count();
        for text in [
            "import os",
            "exec('import os')",
            "1+1; import os",
            "__import__('os')",
            "9**9**9",
            "1e7",
            "10**7",
            "' ' * 10**10",
            "1/0",
            "1+1+1+1+1+1+1+1+1+1+1+1+1+1+111",
            "(-9)**999999",
            "999999**999999",
        ] {
            // Best of a few runs, so a descheduled thread on a loaded machine cannot fail the test;
            // an expression that is actually computed would take far longer every time.
            let best = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    assert!(PreDispatchExpr::parse(text).is_err(), "{text} accepted");
                    start.elapsed()
                })
                .min()
                .unwrap_or_default();
            assert!(best < Duration::from_millis(10), "{text} took {best:?}");
        }
    }

    #[test]
    fn power_guard_matches_the_limit() {
        assert_eq!(raw("2**19", 1), Num::Int(524_288));
        assert_eq!(raw("(-2)**19", 1), Num::Int(-524_288));
        assert_eq!(raw("1000**2", 1), Num::Int(1_000_000));
        assert!(eval("1000**3", 1).is_err());
        assert!(
            eval("9**9**9", 1)
                .unwrap_err()
                .message()
                .contains("too large")
        );
        assert!(
            eval("(-8)**0.5", 1)
                .unwrap_err()
                .message()
                .contains("complex")
        );
        assert_eq!(raw("(-8)**2.0", 1), Num::Float(64.0));
        assert_eq!(raw("2**-20", 1), Num::Float(2f64.powi(-20)));
    }
}
