//! `pre_dispatch`: how many tasks a call takes from the input before the first completion.
//!
//! joblib accepts `"all"`, an integer, or a string expression such as `"2*n_jobs"`, which it evaluates
//! after replacing the text `n_jobs` with the effective worker count. pj keeps the same language but
//! never hands it to an interpreter: a small tokenizer and recursive-descent parser build an AST of
//! numeric literals, `n_jobs`, parentheses, unary `+`/`-` and the binary operators
//! `+ - * / // % **`, evaluated with Python's int/float rules and joblib's limits (30 characters after
//! substitution, every literal and intermediate value within ±1e6, checked *before* an exponentiation
//! is computed so `9**9**9` is refused at once).

use std::fmt;

use crate::error::{Error, Result};

/// joblib's bound on the length of the expression after `n_jobs` has been replaced by a number.
pub const MAX_EXPR_LEN: usize = 30;

/// joblib's bound on the magnitude of every literal and every intermediate result.
pub const MAX_MAGNITUDE: i64 = 1_000_000;

/// The text that stands for the effective number of workers.
const N_JOBS: &str = "n_jobs";

/// Nesting bound for the parser: the length limit keeps real expressions far below it, this only
/// guarantees that no input can exhaust the stack.
const MAX_DEPTH: usize = 64;

/// A number with Python's two numeric types: operations between ints stay ints (except `/` and
/// negative powers), anything involving a float is a float.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            // Debug keeps a ".0" on whole floats, as Python's repr does.
            Num::Float(x) => write!(f, "{x:?}"),
        }
    }
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    fn magnitude_ok(self) -> bool {
        match self {
            Num::Int(i) => i.checked_abs().is_some_and(|a| a <= MAX_MAGNITUDE),
            Num::Float(x) => x.is_finite() && x.abs() <= MAX_MAGNITUDE as f64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(Num),
    NJobs,
    Neg(Box<Node>),
    Pos(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Num(Num),
    NJobs,
    Op(BinOp),
    LParen,
    RParen,
}

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

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Num(n) => format!("number {n}"),
        Tok::NJobs => "n_jobs".to_owned(),
        Tok::Op(op) => format!("'{}'", op.symbol()),
        Tok::LParen => "'('".to_owned(),
        Tok::RParen => "')'".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn tokenize(text: &str) -> std::result::Result<Vec<Tok>, String> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b' ' | b'\t' | b'\x0c' => i += 1,
            b'0'..=b'9' | b'.' => {
                let (num, end) = lex_number(text, i)?;
                tokens.push(Tok::Num(num));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while bytes.get(i).is_some_and(|&c| is_ident_char(c)) {
                    i += 1;
                }
                let word = text.get(start..i).unwrap_or_default();
                if word != N_JOBS {
                    return Err(format!(
                        "not a valid arithmetic expression: name '{word}' is not allowed (only n_jobs)"
                    ));
                }
                tokens.push(Tok::NJobs);
            }
            b'+' | b'-' | b'%' | b'(' | b')' => {
                tokens.push(match c {
                    b'+' => Tok::Op(BinOp::Add),
                    b'-' => Tok::Op(BinOp::Sub),
                    b'%' => Tok::Op(BinOp::Mod),
                    b'(' => Tok::LParen,
                    _ => Tok::RParen,
                });
                i += 1;
            }
            b'*' | b'/' => {
                let doubled = bytes.get(i + 1) == Some(&c);
                tokens.push(Tok::Op(match (c, doubled) {
                    (b'*', true) => BinOp::Pow,
                    (b'*', false) => BinOp::Mul,
                    (_, true) => BinOp::FloorDiv,
                    (_, false) => BinOp::Div,
                }));
                i += if doubled { 2 } else { 1 };
            }
            _ => {
                let ch = text
                    .get(i..)
                    .and_then(|rest| rest.chars().next())
                    .unwrap_or('?');
                return Err(format!(
                    "not a valid arithmetic expression: character {ch:?} is not allowed"
                ));
            }
        }
    }
    Ok(tokens)
}

/// Lexes a Python decimal int or float literal starting at `start`; returns it and the end offset.
fn lex_number(text: &str, start: usize) -> std::result::Result<(Num, usize), String> {
    let bytes = text.as_bytes();
    let digits_from = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits_from(start);
    let int_digits = i - start;
    let mut is_float = false;
    let mut frac_digits = 0;
    if bytes.get(i) == Some(&b'.') {
        is_float = true;
        let frac_end = digits_from(i + 1);
        frac_digits = frac_end - (i + 1);
        i = frac_end;
    }
    if int_digits == 0 && frac_digits == 0 {
        return Err("not a valid arithmetic expression: lone '.'".to_owned());
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(bytes.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits_from(j);
        if exp_end > j {
            is_float = true;
            i = exp_end;
        }
    }
    // Every byte consumed so far is ASCII, so these ranges are on character boundaries.
    let literal = text.get(start..i).unwrap_or_default();
    if bytes.get(i).is_some_and(|&c| is_ident_char(c) || c == b'.') {
        let mut end = i;
        while bytes
            .get(end)
            .is_some_and(|&c| is_ident_char(c) || c == b'.')
        {
            end += 1;
        }
        return Err(format!(
            "not a valid arithmetic expression: invalid numeric literal '{}'",
            text.get(start..end).unwrap_or_default()
        ));
    }
    let num = if is_float {
        Num::Float(
            literal
                .parse::<f64>()
                .map_err(|_| format!("invalid numeric literal '{literal}'"))?,
        )
    } else {
        if literal.len() > 1 && literal.starts_with('0') && literal.bytes().any(|b| b != b'0') {
            return Err(format!(
                "not a valid arithmetic expression: leading zeros in the integer literal '{literal}' are not permitted"
            ));
        }
        match literal.parse::<i64>() {
            Ok(v) => Num::Int(v),
            // Only digits: the only possible failure is overflow.
            Err(_) => {
                return Err(format!(
                    "numeric literal {literal} is too large, max is {MAX_MAGNITUDE}"
                ));
            }
        }
    };
    if !num.magnitude_ok() {
        return Err(format!(
            "numeric literal {num} is too large, max is {MAX_MAGNITUDE}"
        ));
    }
    Ok((num, i))
}

// ---------------------------------------------------------------------------------------------
// Parser (Python precedence: + - < * / // % < unary + - < ** (right-associative, and its right
// operand may itself carry a unary sign: 2**-1))

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    depth: usize,
}

type ParseResult = std::result::Result<Node, String>;

impl Parser<'_> {
    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.pos).copied()
    }

    fn enter(&mut self) -> std::result::Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "not a valid arithmetic expression: nested deeper than {MAX_DEPTH} levels"
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> ParseResult {
        self.enter()?;
        let mut left = self.term()?;
        while let Some(Tok::Op(op @ (BinOp::Add | BinOp::Sub))) = self.peek() {
            self.pos += 1;
            let right = self.term()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn term(&mut self) -> ParseResult {
        let mut left = self.factor()?;
        while let Some(Tok::Op(op @ (BinOp::Mul | BinOp::Div | BinOp::FloorDiv | BinOp::Mod))) =
            self.peek()
        {
            self.pos += 1;
            let right = self.factor()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> ParseResult {
        self.enter()?;
        let node = match self.peek() {
            Some(Tok::Op(BinOp::Sub)) => {
                self.pos += 1;
                Node::Neg(Box::new(self.factor()?))
            }
            Some(Tok::Op(BinOp::Add)) => {
                self.pos += 1;
                Node::Pos(Box::new(self.factor()?))
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Ok(node)
    }

    fn power(&mut self) -> ParseResult {
        let base = self.primary()?;
        if let Some(Tok::Op(BinOp::Pow)) = self.peek() {
            self.pos += 1;
            let exponent = self.factor()?;
            return Ok(Node::Bin(BinOp::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> ParseResult {
        let tok = self
            .peek()
            .ok_or_else(|| "not a valid arithmetic expression: unexpected end".to_owned())?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Node::Lit(n)),
            Tok::NJobs => Ok(Node::NJobs),
            Tok::LParen => {
                let inner = self.expr()?;
                match self.peek() {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(other) => Err(format!(
                        "not a valid arithmetic expression: expected ')', found {}",
                        describe(&other)
                    )),
                    None => Err("not a valid arithmetic expression: missing ')'".to_owned()),
                }
            }
            other => Err(format!(
                "not a valid arithmetic expression: unexpected {}",
                describe(&other)
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation with Python semantics

type EvalResult = std::result::Result<Num, String>;

fn eval_node(node: &Node, n_jobs: Num) -> EvalResult {
    match node {
        Node::Lit(n) => Ok(*n),
        Node::NJobs => Ok(n_jobs),
        Node::Pos(inner) => eval_node(inner, n_jobs),
        Node::Neg(inner) => Ok(match eval_node(inner, n_jobs)? {
            // In range (|i| <= 1e6), so negation cannot overflow.
            Num::Int(i) => Num::Int(-i),
            Num::Float(x) => Num::Float(-x),
        }),
        Node::Bin(op, left, right) => {
            let a = eval_node(left, n_jobs)?;
            let b = eval_node(right, n_jobs)?;
            let result = apply(*op, a, b)?;
            if !result.magnitude_ok() {
                return Err(format!(
                    "intermediate result {a} {} {b} = {result} is too large, max is {MAX_MAGNITUDE}",
                    op.symbol()
                ));
            }
            Ok(result)
        }
    }
}

fn too_large(op: BinOp, a: Num, b: Num) -> String {
    format!(
        "intermediate result {a} {} {b} is too large, max is {MAX_MAGNITUDE}",
        op.symbol()
    )
}

fn apply(op: BinOp, a: Num, b: Num) -> EvalResult {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => apply_int(op, x, y),
        _ => apply_float(op, a.as_f64(), b.as_f64()),
    }
}

fn apply_int(op: BinOp, x: i64, y: i64) -> EvalResult {
    let overflow = || too_large(op, Num::Int(x), Num::Int(y));
    let int = |v: Option<i64>| v.map(Num::Int).ok_or_else(overflow);
    match op {
        BinOp::Add => int(x.checked_add(y)),
        BinOp::Sub => int(x.checked_sub(y)),
        BinOp::Mul => int(x.checked_mul(y)),
        BinOp::Div => {
            if y == 0 {
                return Err("division by zero".to_owned());
            }
            // Both operands are exact in f64 (|x| <= 1e12), so IEEE division rounds as Python does.
            Ok(Num::Float(x as f64 / y as f64))
        }
        BinOp::FloorDiv => {
            if y == 0 {
                return Err("integer division by zero".to_owned());
            }
            let q = x.checked_div(y).ok_or_else(overflow)?;
            let r = x.checked_rem(y).ok_or_else(overflow)?;
            Ok(Num::Int(if r != 0 && ((r < 0) != (y < 0)) {
                q - 1
            } else {
                q
            }))
        }
        BinOp::Mod => {
            if y == 0 {
                return Err("modulo by zero".to_owned());
            }
            let r = x.checked_rem(y).ok_or_else(overflow)?;
            Ok(Num::Int(if r != 0 && ((r < 0) != (y < 0)) {
                r + y
            } else {
                r
            }))
        }
        BinOp::Pow => int_pow(x, y),
    }
}

/// `x ** y` for Python ints, refusing huge results before computing them.
fn int_pow(x: i64, y: i64) -> EvalResult {
    if y < 0 {
        if x == 0 {
            return Err("0 cannot be raised to a negative power (division by zero)".to_owned());
        }
        // Python converts to float for a negative exponent.
        return Ok(Num::Float((x as f64).powf(y as f64)));
    }
    match x {
        0 => Ok(Num::Int(if y == 0 { 1 } else { 0 })),
        1 => Ok(Num::Int(1)),
        -1 => Ok(Num::Int(if y % 2 == 0 { 1 } else { -1 })),
        _ => {
            // |x| >= 2, so any exponent above 20 exceeds 2**20 > 1e6: refuse without computing.
            let result = u32::try_from(y)
                .ok()
                .filter(|&e| e <= 20)
                .and_then(|e| x.checked_pow(e));
            result
                .map(Num::Int)
                .ok_or_else(|| too_large(BinOp::Pow, Num::Int(x), Num::Int(y)))
        }
    }
}

fn apply_float(op: BinOp, x: f64, y: f64) -> EvalResult {
    let value = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => {
            if y == 0.0 {
                return Err("float division by zero".to_owned());
            }
            x / y
        }
        BinOp::FloorDiv => {
            if y == 0.0 {
                return Err("float floor division by zero".to_owned());
            }
            py_float_divmod(x, y).0
        }
        BinOp::Mod => {
            if y == 0.0 {
                return Err("float modulo by zero".to_owned());
            }
            py_float_divmod(x, y).1
        }
        BinOp::Pow => {
            if x == 0.0 && y < 0.0 {
                return Err(
                    "0.0 cannot be raised to a negative power (division by zero)".to_owned(),
                );
            }
            if x < 0.0 && y.fract() != 0.0 {
                return Err(format!(
                    "not a valid arithmetic expression: {x:?} ** {y:?} is a complex number"
                ));
            }
            x.powf(y)
        }
    };
    Ok(Num::Float(value))
}

/// CPython's float `divmod` (floor quotient, remainder with the divisor's sign); `y != 0`.
fn py_float_divmod(x: f64, y: f64) -> (f64, f64) {
    let mut rem = x % y;
    let mut div = (x - rem) / y;
    if rem != 0.0 {
        if (y < 0.0) != (rem < 0.0) {
            rem += y;
            div -= 1.0;
        }
    } else {
        rem = 0.0_f64.copysign(y);
    }
    let floordiv = if div != 0.0 {
        let mut f = div.floor();
        if div - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        0.0_f64.copysign(x / y)
    };
    (floordiv, rem)
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

    #[test]
    fn py_float_divmod_matches_cpython() {
        assert_eq!(py_float_divmod(7.0, 2.0), (3.0, 1.0));
        assert_eq!(py_float_divmod(-7.0, 2.0), (-4.0, 1.0));
        assert_eq!(py_float_divmod(7.0, -2.0), (-4.0, -1.0));
        assert_eq!(py_float_divmod(-7.0, -2.0), (3.0, -1.0));
        assert_eq!(py_float_divmod(1.0, 0.1).0, 9.0);
        let (q, r) = py_float_divmod(-0.0, 5.0);
        assert!(q == 0.0 && r == 0.0 && r.is_sign_positive());
    }
}
