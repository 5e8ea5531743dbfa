//! The parsed expression: Python's two numeric types and the tree of operations on them.

use std::fmt;

use super::MAX_MAGNITUDE;

/// A number with Python's two numeric types: operations between ints stay ints (except `/` and
/// negative powers), anything involving a float is a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
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
    pub(super) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    pub(super) fn magnitude_ok(self) -> bool {
        match self {
            Num::Int(i) => i.checked_abs().is_some_and(|a| a <= MAX_MAGNITUDE),
            Num::Float(x) => x.is_finite() && x.abs() <= MAX_MAGNITUDE as f64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

impl BinOp {
    pub(super) fn symbol(self) -> &'static str {
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
pub(super) enum Node {
    Lit(Num),
    NJobs,
    Neg(Box<Node>),
    Pos(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
}
