//! Evaluation of the tree with Python's int/float semantics, every intermediate value checked
//! against the magnitude limit (before an exponentiation is computed, so `9**9**9` is refused at
//! once).

use super::MAX_MAGNITUDE;
use super::ast::{BinOp, Node, Num};

type EvalResult = std::result::Result<Num, String>;

pub(super) fn eval_node(node: &Node, n_jobs: Num) -> EvalResult {
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
