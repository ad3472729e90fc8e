//! The slice of OData the Defender and Graph list endpoints accept: 100-ns timestamps,
//! `DateTimeOffset` literals with 0–7 fractional digits, and `$filter` expressions of
//! comparisons joined by `and` / `or`.
//!
//! Written by hand because the OData crates on crates.io target full EDM models; the
//! simulator needs exactly the literal rules of the Microsoft services (unquoted
//! timestamps, tick precision, 7 digits at most) and their error texts.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use std::fmt;

/// A point in time in .NET ticks (100 ns) since the Unix epoch: the resolution of the
/// `DateTimeOffset` values the Microsoft APIs store and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(pub i64);

/// Ticks per second.
pub const TICKS_PER_SEC: i64 = 10_000_000;

impl Tick {
    /// The tick containing `t` (sub-tick nanoseconds are dropped, as .NET does).
    pub fn from_datetime(t: DateTime<Utc>) -> Tick {
        Tick(t.timestamp() * TICKS_PER_SEC + i64::from(t.timestamp_subsec_nanos() / 100))
    }

    /// The current wall-clock time.
    pub fn now() -> Tick {
        Tick::from_datetime(Utc::now())
    }

    /// This tick as a chrono time (exact: a tick is a whole number of nanoseconds).
    pub fn to_datetime(self) -> DateTime<Utc> {
        let secs = self.0.div_euclid(TICKS_PER_SEC);
        let sub = self.0.rem_euclid(TICKS_PER_SEC);
        // `sub` < 10^7, so the nanosecond count always fits and is valid.
        DateTime::<Utc>::from_timestamp(secs, (sub * 100) as u32)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// `self` plus a std duration, saturating.
    pub fn plus(self, d: std::time::Duration) -> Tick {
        let ticks = i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX);
        Tick(self.0.saturating_add(ticks))
    }

    /// `self` minus a std duration, saturating.
    pub fn minus(self, d: std::time::Duration) -> Tick {
        let ticks = i64::try_from(d.as_nanos() / 100).unwrap_or(i64::MAX);
        Tick(self.0.saturating_sub(ticks))
    }

    /// The ticks inside the second (0..10^7).
    pub fn subsec(self) -> i64 {
        self.0.rem_euclid(TICKS_PER_SEC)
    }

    /// ISO-8601 UTC with `Z` and the fraction trimmed of trailing zeros (no dot when it is
    /// zero): `2020-09-04T05:22:59Z`, `2021-01-26T20:33:59.2Z`, `…57.7220239Z`. This is how
    /// the services print values, which is why the number of digits varies from 0 to 7.
    pub fn format_trimmed(self) -> String {
        let mut s = self.format_seconds();
        let frac = self.subsec();
        if frac != 0 {
            let digits = format!("{frac:07}");
            s.push('.');
            s.push_str(digits.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// ISO-8601 UTC with exactly 7 fractional digits (`DateTimeOffset` round-trip form).
    pub fn format7(self) -> String {
        format!("{}.{:07}Z", self.format_seconds(), self.subsec())
    }

    fn format_seconds(self) -> String {
        let t = self.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format_trimmed())
    }
}

impl serde::Serialize for Tick {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.format_trimmed())
    }
}

/// Parses an unquoted OData `DateTimeOffset` literal: `YYYY-MM-DDThh:mm[:ss[.f{1,7}]]`
/// followed by `Z` or `±hh:mm`. More than 7 fractional digits is an error, as in .NET.
pub fn parse_datetime(s: &str) -> Result<Tick, String> {
    let bad = || format!("'{s}' is not a valid DateTimeOffset literal");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<u32, String> {
        let part = b.get(from..from + len).ok_or_else(bad)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        part.iter()
            .try_fold(0u32, |acc, d| Some(acc * 10 + u32::from(d - b'0')))
            .ok_or_else(bad)
    };
    let expect = |at: usize, c: u8| -> Result<(), String> {
        if b.get(at) == Some(&c) {
            Ok(())
        } else {
            Err(bad())
        }
    };
    let year = num(0, 4)?;
    expect(4, b'-')?;
    let month = num(5, 2)?;
    expect(7, b'-')?;
    let day = num(8, 2)?;
    if !matches!(b.get(10), Some(b'T') | Some(b't')) {
        return Err(bad());
    }
    let hour = num(11, 2)?;
    expect(13, b':')?;
    let minute = num(14, 2)?;
    let mut i = 16;
    let mut second = 0;
    let mut frac: i64 = 0;
    if b.get(i) == Some(&b':') {
        second = num(i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let digits = i - start;
            if digits == 0 || digits > 7 {
                return Err(bad());
            }
            let value = i64::from(num(start, digits)?);
            frac = value * 10i64.pow(7 - digits as u32);
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() => {
            let oh = num(i + 1, 2)?;
            expect(i + 3, b':')?;
            let om = num(i + 4, 2)?;
            if oh > 14 || om > 59 {
                return Err(bad());
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return Err(bad()),
    };
    let date = NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(bad)?;
    let time = date.and_hms_opt(hour, minute, second).ok_or_else(bad)?;
    let secs = time.and_utc().timestamp() - offset_secs;
    Ok(Tick(secs * TICKS_PER_SEC + frac))
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

impl CmpOp {
    fn parse(word: &str) -> Option<CmpOp> {
        Some(match word {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            _ => return None,
        })
    }

    /// The OData keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
        }
    }

    /// The name .NET OData uses in type errors ("GreaterThanOrEqual").
    fn kind_name(self) -> &'static str {
        match self {
            CmpOp::Eq => "Equal",
            CmpOp::Ne => "NotEqual",
            CmpOp::Gt => "GreaterThan",
            CmpOp::Ge => "GreaterThanOrEqual",
            CmpOp::Lt => "LessThan",
            CmpOp::Le => "LessThanOrEqual",
        }
    }

    /// Applies the operator to an ordering of `left` relative to `right`.
    pub fn holds<T: Ord>(self, left: &T, right: &T) -> bool {
        match self {
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
        }
    }
}

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// An unquoted `DateTimeOffset`, kept at tick precision.
    DateTime(Tick),
    /// A single-quoted string (`''` escapes a quote).
    Str(String),
    /// An integer.
    Int(i64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

impl Literal {
    fn edm_type(&self) -> &'static str {
        match self {
            Literal::DateTime(_) => "Edm.DateTimeOffset",
            Literal::Str(_) => "Edm.String",
            Literal::Int(_) => "Edm.Int64",
            Literal::Bool(_) => "Edm.Boolean",
            Literal::Null => "null",
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::DateTime(t) => write!(f, "{t}"),
            Literal::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

/// A parsed `$filter` expression. `And`/`Or` hold two or more operands and never an
/// operand of their own kind (the parser flattens), so printing and re-parsing gives the
/// same tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `a and b and ...`
    And(Vec<Expr>),
    /// `a or b or ...`
    Or(Vec<Expr>),
    /// `property op literal`
    Cmp {
        /// The property name as written.
        field: String,
        /// The operator.
        op: CmpOp,
        /// The literal.
        value: Literal,
    },
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Cmp { field, op, value } => write!(f, "{field} {} {value}", op.as_str()),
            Expr::And(xs) => {
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match x {
                        Expr::Or(_) => write!(f, "({x})")?,
                        _ => write!(f, "{x}")?,
                    }
                }
                Ok(())
            }
            Expr::Or(xs) => {
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a `$filter` was refused; the message is what the API puts in its 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// The service-style explanation.
    pub message: String,
}

impl FilterError {
    fn syntax(input: &str, pos: usize) -> FilterError {
        FilterError {
            message: format!("Syntax error at position {pos} in '{input}'."),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    LParen,
    RParen,
    Word(String),
    Str(String),
    Bare(String),
}

fn tokenize(input: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<(usize, char)> = input.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        match c {
            ' ' | '\t' | '\r' | '\n' => i += 1,
            '(' => {
                out.push((pos, Token::LParen));
                i += 1;
            }
            ')' => {
                out.push((pos, Token::RParen));
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(FilterError::syntax(input, input.len())),
                        Some((_, '\'')) if matches!(chars.get(i + 1), Some((_, '\''))) => {
                            s.push('\'');
                            i += 2;
                        }
                        Some((_, '\'')) => {
                            i += 1;
                            break;
                        }
                        Some((_, ch)) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push((pos, Token::Str(s)));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|(_, ch)| ch.is_ascii_alphanumeric() || *ch == '_' || *ch == '/')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|(_, ch)| ch).collect();
                out.push((pos, Token::Word(word)));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|(_, ch)| {
                    ch.is_ascii_alphanumeric() || matches!(ch, ':' | '.' | '+' | '-')
                }) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().map(|(_, ch)| ch).collect();
                out.push((pos, Token::Bare(word)));
            }
            _ => return Err(FilterError::syntax(input, pos)),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Token)>,
    at: usize,
}

impl Parser<'_> {
    fn pos(&self) -> usize {
        self.tokens
            .get(self.at)
            .map_or(self.input.len(), |(p, _)| *p)
    }

    fn err(&self) -> FilterError {
        FilterError::syntax(self.input, self.pos())
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some((_, Token::Word(w))) if w == word)
    }

    fn or_expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut items = vec![self.and_expr(depth)?];
        while self.peek_word("or") {
            self.at += 1;
            items.push(self.and_expr(depth)?);
        }
        Ok(flatten(items, false))
    }

    fn and_expr(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut items = vec![self.primary(depth)?];
        while self.peek_word("and") {
            self.at += 1;
            items.push(self.primary(depth)?);
        }
        Ok(flatten(items, true))
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        // Deep nesting is refused like the services' recursion limit, and keeps the
        // parser's stack bounded on hostile input.
        if depth > 32 {
            return Err(FilterError {
                message: "The query specified in the URI is not valid. The node count limit of '100' has been exceeded.".into(),
            });
        }
        match self.tokens.get(self.at).cloned() {
            Some((_, Token::LParen)) => {
                self.at += 1;
                let inner = self.or_expr(depth + 1)?;
                match self.tokens.get(self.at) {
                    Some((_, Token::RParen)) => {
                        self.at += 1;
                        Ok(inner)
                    }
                    _ => Err(self.err()),
                }
            }
            Some((_, Token::Word(field))) if !matches!(field.as_str(), "and" | "or") => {
                self.at += 1;
                let op = match self.tokens.get(self.at) {
                    Some((_, Token::Word(w))) => CmpOp::parse(w).ok_or_else(|| self.err())?,
                    _ => return Err(self.err()),
                };
                self.at += 1;
                let value = self.literal()?;
                Ok(Expr::Cmp { field, op, value })
            }
            _ => Err(self.err()),
        }
    }

    fn literal(&mut self) -> Result<Literal, FilterError> {
        let lit = match self.tokens.get(self.at) {
            Some((_, Token::Str(s))) => Literal::Str(s.clone()),
            Some((_, Token::Word(w))) if w == "null" => Literal::Null,
            Some((_, Token::Word(w))) if w == "true" => Literal::Bool(true),
            Some((_, Token::Word(w))) if w == "false" => Literal::Bool(false),
            Some((_, Token::Bare(b))) if b.contains('T') || b.contains('t') => {
                Literal::DateTime(parse_datetime(b).map_err(|message| FilterError { message })?)
            }
            Some((_, Token::Bare(b))) => Literal::Int(b.parse().map_err(|_| self.err())?),
            _ => return Err(self.err()),
        };
        self.at += 1;
        Ok(lit)
    }
}

fn flatten(items: Vec<Expr>, and: bool) -> Expr {
    if items.len() == 1 {
        return items.into_iter().next().unwrap_or(Expr::And(Vec::new()));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match (item, and) {
            (Expr::And(inner), true) | (Expr::Or(inner), false) => out.extend(inner),
            (other, _) => out.push(other),
        }
    }
    if and {
        Expr::And(out)
    } else {
        Expr::Or(out)
    }
}

/// Parses a `$filter` value (already URL-decoded).
pub fn parse_filter(input: &str) -> Result<Expr, FilterError> {
    let tokens = tokenize(input)?;
    if tokens.is_empty() {
        return Err(FilterError::syntax(input, 0));
    }
    let mut p = Parser {
        input,
        tokens,
        at: 0,
    };
    let expr = p.or_expr(0)?;
    if p.at != p.tokens.len() {
        return Err(p.err());
    }
    Ok(expr)
}

/// A property the simulated services let clients filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `lastUpdateTime` / `lastUpdateDateTime`.
    LastUpdate,
    /// `createdTime` / `alertCreationTime` / `createdDateTime`.
    Created,
    /// `status`.
    Status,
    /// `severity`.
    Severity,
    /// `assignedTo`.
    AssignedTo,
    /// `classification`.
    Classification,
    /// `determination`.
    Determination,
    /// `serviceSource`.
    ServiceSource,
    /// `incidentId`.
    IncidentId,
}

impl Field {
    fn is_time(self) -> bool {
        matches!(self, Field::LastUpdate | Field::Created)
    }
}

/// The values of one item a compiled filter looks at.
pub trait Record {
    /// A timestamp property.
    fn time(&self, field: Field) -> Tick;
    /// A string or enum property (enums compare case-insensitively, like the services).
    fn text(&self, field: Field) -> Option<&str>;
    /// An integer property.
    fn number(&self, field: Field) -> Option<i64>;
}

/// A filter resolved against one entity type: type-checked, with the last-update bounds
/// pulled out so the store can answer with a range scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// Inclusive lower bound on the last-update tick.
    pub from: Option<Tick>,
    /// Exclusive upper bound on the last-update tick.
    pub until: Option<Tick>,
    pred: Option<Pred>,
}

#[derive(Debug, Clone, PartialEq)]
enum Pred {
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Time(Field, CmpOp, Tick),
    Text(Field, CmpOp, Option<String>),
    Number(Field, CmpOp, i64),
}

impl Compiled {
    /// No filter: everything.
    pub fn all() -> Compiled {
        Compiled {
            from: None,
            until: None,
            pred: None,
        }
    }

    /// Whether `r` satisfies the whole filter (the bounds included).
    pub fn matches(&self, r: &dyn Record) -> bool {
        self.pred.as_ref().is_none_or(|p| p.eval(r))
    }

    /// True when the bounds alone decide: no per-item evaluation needed.
    pub fn is_pure_range(&self) -> bool {
        match &self.pred {
            None => true,
            Some(Pred::Time(Field::LastUpdate, op, _)) => *op != CmpOp::Ne,
            Some(Pred::And(xs)) => xs
                .iter()
                .all(|x| matches!(x, Pred::Time(Field::LastUpdate, op, _) if *op != CmpOp::Ne)),
            Some(_) => false,
        }
    }
}

impl Pred {
    fn eval(&self, r: &dyn Record) -> bool {
        match self {
            Pred::And(xs) => xs.iter().all(|x| x.eval(r)),
            Pred::Or(xs) => xs.iter().any(|x| x.eval(r)),
            Pred::Time(f, op, t) => op.holds(&r.time(*f), t),
            Pred::Text(f, op, want) => {
                let have = r.text(*f);
                let equal = match (have, want) {
                    (None, None) => true,
                    (Some(h), Some(w)) => h.eq_ignore_ascii_case(w),
                    _ => false,
                };
                match op {
                    CmpOp::Eq => equal,
                    _ => !equal,
                }
            }
            Pred::Number(f, op, n) => r.number(*f).is_some_and(|v| op.holds(&v, n)),
        }
    }
}

/// Resolves property names with `resolve` (which knows the entity type and its name,
/// used in messages) and type-checks every comparison.
pub fn compile(
    expr: &Expr,
    type_name: &str,
    resolve: &dyn Fn(&str) -> Option<Field>,
) -> Result<Compiled, FilterError> {
    let pred = lower(expr, type_name, resolve)?;
    let mut from = None;
    let mut until = None;
    let mut narrow = |p: &Pred| {
        if let Pred::Time(Field::LastUpdate, op, t) = p {
            let (lo, hi) = match op {
                CmpOp::Ge => (Some(*t), None),
                CmpOp::Gt => (Some(Tick(t.0.saturating_add(1))), None),
                CmpOp::Lt => (None, Some(*t)),
                CmpOp::Le => (None, Some(Tick(t.0.saturating_add(1)))),
                CmpOp::Eq => (Some(*t), Some(Tick(t.0.saturating_add(1)))),
                CmpOp::Ne => (None, None),
            };
            if let Some(lo) = lo {
                from = Some(from.map_or(lo, |f: Tick| f.max(lo)));
            }
            if let Some(hi) = hi {
                until = Some(until.map_or(hi, |u: Tick| u.min(hi)));
            }
        }
    };
    match &pred {
        Pred::And(xs) => xs.iter().for_each(&mut narrow),
        other => narrow(other),
    }
    Ok(Compiled {
        from,
        until,
        pred: Some(pred),
    })
}

fn lower(
    expr: &Expr,
    type_name: &str,
    resolve: &dyn Fn(&str) -> Option<Field>,
) -> Result<Pred, FilterError> {
    match expr {
        Expr::And(xs) => Ok(Pred::And(
            xs.iter()
                .map(|x| lower(x, type_name, resolve))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Or(xs) => Ok(Pred::Or(
            xs.iter()
                .map(|x| lower(x, type_name, resolve))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Cmp { field, op, value } => {
            let f = resolve(field).ok_or_else(|| FilterError {
                message: format!(
                    "Could not find a property named '{field}' on type '{type_name}'."
                ),
            })?;
            let mismatch = |edm: &str| {
                FilterError {
                message: format!(
                    "A binary operator with incompatible types was detected. Found operand types '{edm}' and '{}' for operator kind '{}'.",
                    value.edm_type(),
                    op.kind_name()
                ),
            }
            };
            match (f, value) {
                (f, Literal::DateTime(t)) if f.is_time() => Ok(Pred::Time(f, *op, *t)),
                (f, _) if f.is_time() => Err(mismatch("Edm.DateTimeOffset")),
                (Field::IncidentId, Literal::Int(n)) => {
                    Ok(Pred::Number(Field::IncidentId, *op, *n))
                }
                (Field::IncidentId, _) => Err(mismatch("Edm.Int64")),
                (f, Literal::Str(s)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    Ok(Pred::Text(f, *op, Some(s.clone())))
                }
                (f, Literal::Null) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    Ok(Pred::Text(f, *op, None))
                }
                _ => Err(mismatch("Edm.String")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literals_keep_tick_precision() {
        let base = parse_datetime("2021-01-26T20:33:57Z").unwrap();
        assert_eq!(base.to_datetime().to_rfc3339(), "2021-01-26T20:33:57+00:00");
        assert_eq!(
            parse_datetime("2021-01-26T20:33:57.7220239Z").unwrap().0 - base.0,
            7_220_239
        );
        assert_eq!(
            parse_datetime("2021-01-26T20:33:57.2Z").unwrap().0 - base.0,
            2_000_000
        );
        assert_eq!(
            parse_datetime("2021-01-26T20:33:57.0000001Z").unwrap().0 - base.0,
            1
        );
        assert_eq!(parse_datetime("2021-01-26T21:33:57+01:00").unwrap(), base);
        assert_eq!(
            parse_datetime("2021-01-26T20:33Z").unwrap().0,
            base.0 - 57 * TICKS_PER_SEC
        );
        for bad in [
            "2021-01-26T20:33:57.72202391Z",
            "2021-01-26T20:33:57.Z",
            "2021-01-26 20:33:57Z",
            "2021-02-30T00:00:00Z",
            "2021-01-26T20:33:57",
            "2021-01-26T25:00:00Z",
            "2021-01-26T20:33:57Zjunk",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_the_services() {
        let t = parse_datetime("2020-09-04T05:22:59Z").unwrap();
        assert_eq!(t.format_trimmed(), "2020-09-04T05:22:59Z");
        assert_eq!(t.format7(), "2020-09-04T05:22:59.0000000Z");
        let t = parse_datetime("2021-04-15T16:16:35.92Z").unwrap();
        assert_eq!(t.format_trimmed(), "2021-04-15T16:16:35.92Z");
        let t = parse_datetime("1969-12-31T23:59:59.9999999Z").unwrap();
        assert_eq!(t.0, -1);
        assert_eq!(t.format_trimmed(), "1969-12-31T23:59:59.9999999Z");
    }

    #[test]
    fn parses_the_documented_queries() {
        let e = parse_filter("lastUpdateTime ge 2020-06-03T18:04:29.4633333Z").unwrap();
        assert_eq!(
            e,
            Expr::Cmp {
                field: "lastUpdateTime".into(),
                op: CmpOp::Ge,
                value: Literal::DateTime(parse_datetime("2020-06-03T18:04:29.4633333Z").unwrap()),
            }
        );
        let e = parse_filter(
            "lastUpdateDateTime ge 2024-01-01T00:00:00Z and lastUpdateDateTime lt 2024-01-02T00:00:00.5Z and status eq 'active'",
        )
        .unwrap();
        assert!(matches!(&e, Expr::And(xs) if xs.len() == 3));
        let e = parse_filter(
            "(status eq 'New' or status eq 'InProgress') and assignedTo eq 'O''Brien'",
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "(status eq 'New' or status eq 'InProgress') and assignedTo eq 'O''Brien'"
        );
        for bad in [
            "",
            "lastUpdateTime",
            "lastUpdateTime ge",
            "lastUpdateTime gx 2020-01-01T00:00:00Z",
            "lastUpdateTime ge 2020-01-01T00:00:00Z and",
            "(status eq 'a'",
            "status eq 'unterminated",
            "lastUpdateTime ge 2020-01-01T00:00:00.12345678Z",
            "status eq 'a' status eq 'b'",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?}");
        }
    }

    struct Item {
        last: Tick,
        status: &'static str,
    }

    impl Record for Item {
        fn time(&self, _: Field) -> Tick {
            self.last
        }
        fn text(&self, _: Field) -> Option<&str> {
            Some(self.status)
        }
        fn number(&self, _: Field) -> Option<i64> {
            None
        }
    }

    fn resolve(name: &str) -> Option<Field> {
        match name {
            "lastUpdateTime" => Some(Field::LastUpdate),
            "status" => Some(Field::Status),
            "incidentId" => Some(Field::IncidentId),
            _ => None,
        }
    }

    #[test]
    fn bounds_are_half_open_in_ticks() {
        let t = parse_datetime("2024-05-01T10:00:00.1234567Z").unwrap();
        let c = compile(
            &parse_filter("lastUpdateTime gt 2024-05-01T10:00:00.1234567Z").unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap();
        assert_eq!(c.from, Some(Tick(t.0 + 1)));
        assert!(c.is_pure_range());
        let at = |tick: i64| Item {
            last: Tick(tick),
            status: "Active",
        };
        assert!(!c.matches(&at(t.0)));
        assert!(c.matches(&at(t.0 + 1)));
        let c = compile(
            &parse_filter("lastUpdateTime ge 2024-05-01T10:00:00.1234567Z and lastUpdateTime le 2024-05-01T10:00:00.1234567Z").unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap();
        assert_eq!((c.from, c.until), (Some(t), Some(Tick(t.0 + 1))));
        assert!(c.matches(&at(t.0)));
        let c = compile(
            &parse_filter("lastUpdateTime lt 2024-05-01T10:00:00.1234567Z and status eq 'active'")
                .unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap();
        assert_eq!(c.until, Some(t));
        assert!(!c.is_pure_range());
        assert!(c.matches(&at(t.0 - 1)));
        assert!(!c.matches(&at(t.0)));
    }

    #[test]
    fn type_errors_and_unknown_properties() {
        let err = compile(
            &parse_filter("lastUpdateTime ge 'yesterday'").unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap_err();
        assert!(
            err.message.contains("incompatible types"),
            "{}",
            err.message
        );
        let err = compile(
            &parse_filter("severity eq 'High'").unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Could not find a property named 'severity' on type 'Incident'."
        );
        let err = compile(
            &parse_filter("status gt 'a'").unwrap(),
            "Incident",
            &resolve,
        )
        .unwrap_err();
        assert!(err.message.contains("GreaterThan"));
        assert!(compile(&parse_filter("incidentId eq 5").unwrap(), "Alert", &resolve).is_ok());
    }

    fn arb_tick() -> impl Strategy<Value = Tick> {
        // Years 1970..2100 keep chrono comfortably in range.
        (0i64..4_102_444_800 * TICKS_PER_SEC).prop_map(Tick)
    }

    fn arb_literal() -> impl Strategy<Value = Literal> {
        prop_oneof![
            arb_tick().prop_map(Literal::DateTime),
            "[a-zA-Z0-9 '|=\\\\éü漢🛡]{0,12}".prop_map(Literal::Str),
            any::<i64>().prop_map(Literal::Int),
            any::<bool>().prop_map(Literal::Bool),
            Just(Literal::Null),
        ]
    }

    fn arb_cmp() -> impl Strategy<Value = Expr> {
        let op = prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
            Just(CmpOp::Lt),
            Just(CmpOp::Le)
        ];
        ("[a-zA-Z_][a-zA-Z0-9_]{0,15}", op, arb_literal())
            .prop_filter("keywords are not property names", |(f, _, _)| {
                !matches!(f.as_str(), "and" | "or" | "null" | "true" | "false")
            })
            .prop_map(|(field, op, value)| Expr::Cmp { field, op, value })
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        arb_cmp().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 2..4).prop_map(|xs| flatten(xs, true)),
                prop::collection::vec(inner, 2..4).prop_map(|xs| flatten(xs, false)),
            ]
        })
    }

    proptest! {
        #[test]
        fn print_parse_roundtrip(e in arb_expr()) {
            let printed = e.to_string();
            let parsed = parse_filter(&printed).map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
            prop_assert_eq!(parsed, e);
        }

        #[test]
        fn datetime_roundtrip_at_tick_precision(t in arb_tick()) {
            prop_assert_eq!(parse_datetime(&t.format_trimmed()).unwrap(), t);
            prop_assert_eq!(parse_datetime(&t.format7()).unwrap(), t);
            prop_assert_eq!(Tick::from_datetime(t.to_datetime()), t);
        }

        #[test]
        fn shorter_fractions_scale_to_ticks(secs in 0i64..4_000_000_000, digits in 1usize..=7, raw in 0u32..10_000_000) {
            let frac = format!("{raw:07}");
            let frac = &frac[..digits];
            let text = format!("{}.{frac}Z", Tick(secs * TICKS_PER_SEC).format_trimmed().trim_end_matches('Z'));
            let parsed = parse_datetime(&text).unwrap();
            let expect: i64 = frac.parse::<i64>().unwrap() * 10i64.pow(7 - digits as u32);
            prop_assert_eq!(parsed.0, secs * TICKS_PER_SEC + expect);
        }

        #[test]
        fn ge_and_gt_differ_exactly_at_ties(t in arb_tick(), delta in -2i64..=2) {
            let item = Item { last: Tick(t.0 + delta), status: "x" };
            for (op, want) in [("ge", delta >= 0), ("gt", delta > 0), ("lt", delta < 0), ("le", delta <= 0), ("eq", delta == 0)] {
                let c = compile(&parse_filter(&format!("lastUpdateTime {op} {}", t.format7())).unwrap(), "T", &resolve).unwrap();
                prop_assert_eq!(c.matches(&item), want, "{} {}", op, delta);
                let in_range = c.from.is_none_or(|f| item.last >= f) && c.until.is_none_or(|u| item.last < u);
                prop_assert_eq!(in_range, want);
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_filter(&s);
        }
    }
}
