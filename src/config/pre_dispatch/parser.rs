//! The recursive-descent parser, with Python's precedence: `+ -` below `* / // %` below unary
//! `+ -` below `**` (right-associative, and its right operand may itself carry a unary sign:
//! `2**-1`).

use super::ast::{BinOp, Node};
use super::lexer::{Tok, describe};

/// Nesting bound for the parser: the length limit keeps real expressions far below it, this only
/// guarantees that no input can exhaust the stack.
const MAX_DEPTH: usize = 64;

pub(super) struct Parser<'a> {
    pub(super) tokens: &'a [Tok],
    pub(super) pos: usize,
    pub(super) depth: usize,
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

    pub(super) fn expr(&mut self) -> ParseResult {
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
