//! The tokenizer: numeric literals (Python's int and float spellings), `n_jobs`, operators and
//! parentheses; literals are checked against the magnitude limit as they are read.

use super::ast::{BinOp, Num};
use super::{MAX_MAGNITUDE, N_JOBS};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tok {
    Num(Num),
    NJobs,
    Op(BinOp),
    LParen,
    RParen,
}

pub(super) fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Num(n) => format!("number {n}"),
        Tok::NJobs => "n_jobs".to_owned(),
        Tok::Op(op) => format!("'{}'", op.symbol()),
        Tok::LParen => "'('".to_owned(),
        Tok::RParen => "')'".to_owned(),
    }
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

pub(super) fn tokenize(text: &str) -> std::result::Result<Vec<Tok>, String> {
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
