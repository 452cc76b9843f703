//! Flag definitions in flagd's format and their evaluation: variants, a
//! default variant, and targeting as JSON Logic with flagd's operations
//! (`fractional`, `sem_ver`, `starts_with`, `ends_with`). Percentage splits
//! bucket exactly as flagd does (MurmurHash3 x86 32-bit, seed 0, of the flag
//! key followed by the targeting key; `(hash × total weight) >> 32`), so a
//! user gets the same variant here and in flagd. Pure: no IO.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod fractional;
mod semver;
pub use fractional::{bucket, murmur3_32};
use fractional::{bucket_index, bucket_index_v1};
use semver::{sem_ver, version_text};

/// A flag's state in a flagd file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlagState {
    Enabled,
    Disabled,
}

/// One flag of a flagd flag file (`{"flags": {"<key>": <this>}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagDefinition {
    pub state: FlagState,
    pub variants: BTreeMap<String, Value>,
    #[serde(rename = "defaultVariant", default)]
    pub default_variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// Why a flag resolved to its value, as OpenFeature names reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting (rules or a percentage split) chose the variant.
    TargetingMatch,
    /// Targeting ran and chose nothing: the default variant.
    Default,
    /// The flag is disabled: no value (the caller's default), or, when
    /// Firebreak's kill switch turned it off, its off variant.
    Disabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
        }
    }
}

/// OFREP's error codes for an evaluation that has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No such flag.
    FlagNotFound,
    /// Targeting needed a targeting key the context does not have.
    TargetingKeyMissing,
    /// The definition cannot be evaluated.
    ParseError,
    /// The context is not an object.
    InvalidContext,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// A successful evaluation. Without a value (and variant) the caller uses
/// its own default, as flagd answers a disabled flag, or a flag without a
/// default variant when targeting chose none (OFREP lets a success omit
/// `value`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'a> {
    pub value: Option<&'a Value>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
}

impl Resolution<'_> {
    fn none(reason: Reason) -> Self {
        Resolution {
            value: None,
            variant: None,
            reason,
        }
    }
}

/// How `fractional` maps a hash to a bucket: the generations flagd's
/// conformance suite names (`@fractional-v1`, `@fractional-v2`). flagd's
/// evaluator does v2; v1 is what flagd did before, for a fleet not yet moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucketing {
    /// `abs(hash as i32) / i32::MAX × 100` against running percentages.
    V1,
    /// `(hash × total weight) >> 32` against running weights.
    #[default]
    V2,
}

/// An evaluation that produced no value.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError {
    pub code: ErrorCode,
    pub details: String,
}

const OPERATORS: &[&str] = &[
    "var",
    "missing",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "<",
    "<=",
    ">",
    ">=",
    "!",
    "!!",
    "and",
    "or",
    "in",
    "cat",
    "+",
    "-",
    "*",
    "/",
    "%",
    "min",
    "max",
    "starts_with",
    "ends_with",
    "sem_ver",
    "fractional",
    // A shared evaluator left unresolved: loads, errs at evaluation.
    "$ref",
];

impl FlagDefinition {
    /// A plain on/off flag: variants `on` (true) and `off` (false).
    pub fn boolean(on: bool) -> FlagDefinition {
        FlagDefinition {
            state: FlagState::Enabled,
            variants: [
                ("on".to_string(), Value::Bool(true)),
                ("off".to_string(), Value::Bool(false)),
            ]
            .into(),
            default_variant: Some(if on { "on" } else { "off" }.to_string()),
            targeting: None,
            metadata: Map::new(),
        }
    }

    /// Checks what flagd checks when it loads a file, plus that every
    /// operation in the targeting is one this evaluator knows.
    pub fn validate(&self) -> Result<(), String> {
        if self.variants.is_empty() {
            return Err("`variants` is empty: define at least one variant".into());
        }
        if let Some(d) = &self.default_variant {
            if !self.variants.contains_key(d) {
                return Err(format!(
                    "`defaultVariant` {d:?} is not one of the variants ({})",
                    self.variant_names()
                ));
            }
        }
        if let Some(t) = self.rules() {
            check_logic(t, "targeting")?;
        }
        Ok(())
    }

    /// What flagd loads but this definition cannot evaluate: each unknown
    /// operation, with its path (evaluating it answers PARSE_ERROR).
    pub fn warnings(&self) -> Vec<String> {
        fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
            match v {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &format!("{path}[{i}]"), out);
                    }
                }
                Value::Object(m) if m.len() == 1 => {
                    if let Some((op, args)) = m.iter().next() {
                        if !OPERATORS.contains(&op.as_str()) {
                            out.push(format!(
                                "{path}: unknown operation {op:?}: evaluating it answers PARSE_ERROR (known: {})",
                                OPERATORS.join(", ")
                            ));
                        }
                        walk(args, &format!("{path}.{op}"), out);
                    }
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        if let Some(t) = self.rules() {
            walk(t, "targeting", &mut out);
        }
        out
    }

    /// The targeting rules, if any: `"targeting": {}` is none, as in flagd.
    fn rules(&self) -> Option<&Value> {
        self.targeting
            .as_ref()
            .filter(|t| !matches!(t, Value::Object(m) if m.is_empty()))
    }

    fn variant_names(&self) -> String {
        self.variants.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The variant served when the flag is killed: `off`, else the variant
    /// whose value is `false`, else none.
    pub fn off_variant(&self) -> Option<&str> {
        if self.variants.contains_key("off") {
            return Some("off");
        }
        self.variants
            .iter()
            .find(|(_, v)| **v == Value::Bool(false))
            .map(|(k, _)| k.as_str())
    }

    /// Evaluates the flag `key` for an evaluation context (an object;
    /// `targetingKey` is the bucketing key) with flagd's current bucketing.
    /// `now` is `$flagd.timestamp` (seconds since the epoch).
    pub fn evaluate<'a>(
        &'a self,
        key: &str,
        context: &Value,
        now: i64,
    ) -> Result<Resolution<'a>, EvalError> {
        self.evaluate_with(key, context, now, Bucketing::V2, self.state)
    }

    /// [`FlagDefinition::evaluate`] with a chosen bucketing generation, as
    /// if the flag's state were `state` (the definition's own, or ENABLED
    /// where Firebreak's switch turned a flag written DISABLED on since).
    pub fn evaluate_with<'a>(
        &'a self,
        key: &str,
        context: &Value,
        now: i64,
        bucketing: Bucketing,
        state: FlagState,
    ) -> Result<Resolution<'a>, EvalError> {
        if state == FlagState::Disabled {
            return Ok(Resolution::none(Reason::Disabled));
        }
        let err = |code, details: String| EvalError { code, details };
        if !matches!(context, Value::Object(_) | Value::Null) {
            return Err(err(
                ErrorCode::InvalidContext,
                "the evaluation context must be a JSON object".into(),
            ));
        }
        let default = |reason| match &self.default_variant {
            Some(v) => Ok(self.resolve(v, reason)),
            None => Ok(Resolution::none(Reason::Default)),
        };
        let Some(targeting) = self.rules() else {
            return default(Reason::Static);
        };
        let scope = Scope {
            key,
            data: context,
            now,
            bucketing,
            broken: std::cell::RefCell::new(None),
        };
        let chosen = scope.eval(targeting);
        if let Some(why) = scope.broken.borrow_mut().take() {
            return Err(err(ErrorCode::ParseError, format!("flag {key:?}: {why}")));
        }
        let name: Cow<'_, str> = match &*chosen {
            // Nothing chosen, a percentage split without a targeting key
            // among them: the default variant, as flagd answers.
            Value::Null => return default(Reason::Default),
            Value::String(s) => Cow::Owned(s.clone()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            other => {
                return Err(err(
                    ErrorCode::General,
                    format!("targeting of {key:?} gave {other}, not a variant name"),
                ))
            }
        };
        match self.variants.get_key_value(name.as_ref()) {
            Some((variant, value)) => Ok(Resolution {
                value: Some(value),
                variant: Some(variant),
                reason: Reason::TargetingMatch,
            }),
            None => Err(err(
                ErrorCode::General,
                format!(
                    "targeting of {key:?} chose {name:?}, which is not one of its variants ({})",
                    self.variant_names()
                ),
            )),
        }
    }

    /// What the flag answers while Firebreak's kill switch holds it off:
    /// its off variant to everyone, reason DISABLED; without an off variant,
    /// no value (the caller's default), as flagd answers a disabled flag.
    pub fn killed(&self) -> Resolution<'_> {
        match self.off_variant() {
            Some(v) => self.resolve(v, Reason::Disabled),
            None => Resolution::none(Reason::Disabled),
        }
    }

    fn resolve<'a>(&'a self, variant: &str, reason: Reason) -> Resolution<'a> {
        let (variant, value) = self
            .variants
            .get_key_value(variant)
            .expect("validated: the variant exists");
        Resolution {
            value: Some(value),
            variant: Some(variant),
            reason,
        }
    }
}

/// The most JSON values a flag's targeting may hold once its `$ref`s are
/// resolved: evaluators that refer to one another several times would
/// otherwise grow exponentially (ten references a level, sixteen levels).
pub const MAX_RESOLVED_NODES: usize = 10_000;

/// Replaces each `{"$ref": "<name>"}` in `logic` with the flag file's shared
/// evaluator of that name (`$evaluators`), as flagd does when it loads a file.
/// A reference to no evaluator is left in place: the flag loads, and its
/// evaluation answers PARSE_ERROR. Evaluators may refer to one another, to a
/// depth of 16 (a cycle stops there, unresolved). Refused when the resolved
/// targeting would hold more than [`MAX_RESOLVED_NODES`] values.
pub fn resolve_refs(logic: &mut Value, evaluators: &Map<String, Value>) -> Result<(), String> {
    fn nodes(v: &Value) -> usize {
        1 + match v {
            Value::Object(m) => m.values().map(nodes).sum(),
            Value::Array(a) => a.iter().map(nodes).sum(),
            _ => 0,
        }
    }
    fn walk(
        v: &mut Value,
        evaluators: &Map<String, Value>,
        depth: u8,
        budget: &mut usize,
    ) -> Result<(), String> {
        if depth == 0 {
            return Ok(());
        }
        match v {
            Value::Object(m) if m.len() == 1 && m.contains_key("$ref") => {
                let target = m
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|name| evaluators.get(name.trim()));
                if let Some(found) = target {
                    let size = nodes(found);
                    *budget = budget.checked_sub(size).ok_or_else(|| {
                        format!(
                            "the shared evaluators ($ref) expand to more than {MAX_RESOLVED_NODES} values in this flag's targeting"
                        )
                    })?;
                    *v = found.clone();
                    walk(v, evaluators, depth - 1, budget)?;
                }
                Ok(())
            }
            Value::Object(m) => m
                .values_mut()
                .try_for_each(|x| walk(x, evaluators, depth, budget)),
            Value::Array(a) => a
                .iter_mut()
                .try_for_each(|x| walk(x, evaluators, depth, budget)),
            _ => Ok(()),
        }
    }
    let mut budget = MAX_RESOLVED_NODES.saturating_sub(nodes(logic));
    walk(logic, evaluators, 16, &mut budget)
}

/// Checks that every operation (a one-key object) is known, naming the path.
fn check_logic(v: &Value, path: &str) -> Result<(), String> {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_logic(item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        // An unknown operation loads, as in flagd, and errs when evaluated
        // (PARSE_ERROR); `warnings` names it at import.
        Value::Object(m) if m.len() == 1 => {
            let (op, args) = m.iter().next().expect("one entry");
            check_logic(args, &format!("{path}.{op}"))
        }
        Value::Object(_) => Err(format!(
            "{path}: an operation is an object with exactly one key"
        )),
        _ => Ok(()),
    }
}

struct Scope<'d> {
    key: &'d str,
    data: &'d Value,
    now: i64,
    bucketing: Bucketing,
    /// Set when the targeting cannot be evaluated (a `$ref` to no
    /// evaluator): flagd answers PARSE_ERROR, not a variant.
    broken: std::cell::RefCell<Option<String>>,
}

static NULL: Value = Value::Null;

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Null => Some(0.0),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// JSON Logic's `==`: same-typed values compare directly; a number and a
/// string (or a bool) compare as numbers.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => number(a) == number(b),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => a == b,
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

impl<'d> Scope<'d> {
    fn eval<'e>(&self, logic: &'e Value) -> Cow<'e, Value>
    where
        'd: 'e,
    {
        let Value::Object(m) = logic else {
            if let Value::Array(items) = logic {
                return Cow::Owned(Value::Array(
                    items.iter().map(|i| self.eval(i).into_owned()).collect(),
                ));
            }
            return Cow::Borrowed(logic);
        };
        let Some((op, args)) = m.iter().next().filter(|_| m.len() == 1) else {
            return Cow::Borrowed(logic);
        };
        let args: &[Value] = match args {
            Value::Array(a) => a,
            single => std::slice::from_ref(single),
        };
        let arg = |i: usize| -> Cow<'e, Value> {
            args.get(i).map_or(Cow::Borrowed(&NULL), |a| self.eval(a))
        };
        let owned = |v: Value| -> Cow<'e, Value> { Cow::Owned(v) };
        match op.as_str() {
            "$ref" => {
                *self.broken.borrow_mut() = Some(format!(
                    "the targeting refers to the shared evaluator {}, which its flag file does not define under $evaluators",
                    args.first().map_or_else(|| "null".to_string(), Value::to_string)
                ));
                Cow::Borrowed(&NULL)
            }
            "var" => self.var(&arg(0), args.get(1)),
            "missing" => owned(Value::Array(
                args.iter()
                    .filter(|a| matches!(&*self.var(&self.eval(a), None), Value::Null))
                    .map(|a| self.eval(a).into_owned())
                    .collect(),
            )),
            "if" | "?:" => {
                let mut i = 0;
                while i + 1 < args.len() {
                    if truthy(&self.eval(&args[i])) {
                        return self.eval(&args[i + 1]);
                    }
                    i += 2;
                }
                if i < args.len() {
                    self.eval(&args[i])
                } else {
                    Cow::Borrowed(&NULL)
                }
            }
            "==" => owned(Value::Bool(loose_eq(&arg(0), &arg(1)))),
            "!=" => owned(Value::Bool(!loose_eq(&arg(0), &arg(1)))),
            "===" => owned(Value::Bool(arg(0) == arg(1))),
            "!==" => owned(Value::Bool(arg(0) != arg(1))),
            "<" | "<=" | ">" | ">=" => {
                let ok = |o: Option<Ordering>| match (op.as_str(), o) {
                    (_, None) => false,
                    ("<", Some(o)) => o == Ordering::Less,
                    ("<=", Some(o)) => o != Ordering::Greater,
                    (">", Some(o)) => o == Ordering::Greater,
                    (_, Some(o)) => o != Ordering::Less,
                };
                let (a, b) = (arg(0), arg(1));
                let first = ok(compare(&a, &b));
                // `{"<": [a, b, c]}` is a < b < c (between).
                let result = if args.len() == 3 && matches!(op.as_str(), "<" | "<=") {
                    first && ok(compare(&b, &arg(2)))
                } else {
                    first
                };
                owned(Value::Bool(result))
            }
            "!" => owned(Value::Bool(!truthy(&arg(0)))),
            "!!" => owned(Value::Bool(truthy(&arg(0)))),
            "and" => {
                let mut last = Cow::Borrowed(&NULL);
                for a in args {
                    last = self.eval(a);
                    if !truthy(&last) {
                        break;
                    }
                }
                last
            }
            "or" => {
                let mut last = Cow::Borrowed(&NULL);
                for a in args {
                    last = self.eval(a);
                    if truthy(&last) {
                        break;
                    }
                }
                last
            }
            "in" => {
                let (needle, hay) = (arg(0), arg(1));
                owned(Value::Bool(match &*hay {
                    Value::String(h) => match &*needle {
                        Value::String(n) => h.contains(n.as_str()),
                        _ => false,
                    },
                    Value::Array(items) => items.iter().any(|i| loose_eq(i, &needle)),
                    _ => false,
                }))
            }
            "cat" => owned(Value::String(
                args.iter().map(|a| text(&self.eval(a))).collect(),
            )),
            "+" | "*" | "min" | "max" => {
                let nums: Option<Vec<f64>> = args.iter().map(|a| number(&self.eval(a))).collect();
                let Some(nums) = nums else {
                    return Cow::Borrowed(&NULL);
                };
                let r = match op.as_str() {
                    "+" => nums.iter().sum(),
                    "*" => nums.iter().product(),
                    "min" => nums.iter().copied().fold(f64::INFINITY, f64::min),
                    _ => nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                };
                owned(serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number))
            }
            "-" | "/" | "%" => {
                let (Some(a), b) = (number(&arg(0)), number(&arg(1))) else {
                    return Cow::Borrowed(&NULL);
                };
                let r = match (op.as_str(), b) {
                    ("-", None) if args.len() == 1 => -a,
                    ("-", Some(b)) => a - b,
                    ("/", Some(b)) if b != 0.0 => a / b,
                    ("%", Some(b)) if b != 0.0 => a % b,
                    _ => return Cow::Borrowed(&NULL),
                };
                owned(serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number))
            }
            "starts_with" | "ends_with" => match (&*arg(0), &*arg(1)) {
                (Value::String(s), Value::String(p)) => {
                    owned(Value::Bool(if op == "starts_with" {
                        s.starts_with(p.as_str())
                    } else {
                        s.ends_with(p.as_str())
                    }))
                }
                _ => Cow::Borrowed(&NULL),
            },
            // Versions may come as numbers (`{"version": 1}`): flagd reads
            // them as their text ("1", i.e. 1.0.0).
            "sem_ver" => match (version_text(&arg(0)), &*arg(1), version_text(&arg(2))) {
                (Some(a), Value::String(o), Some(b)) => {
                    sem_ver(&a, o, &b).map_or(Cow::Borrowed(&NULL), |r| owned(Value::Bool(r)))
                }
                _ => Cow::Borrowed(&NULL),
            },
            "fractional" => self.fractional(args),
            unknown => {
                *self.broken.borrow_mut() = Some(format!("unknown operation {unknown:?}"));
                Cow::Borrowed(&NULL)
            }
        }
    }

    /// `var`: a dotted path into the context; `$flagd.flagKey` and
    /// `$flagd.timestamp` are flagd's own.
    fn var<'e>(&self, path: &Value, default: Option<&'e Value>) -> Cow<'e, Value>
    where
        'd: 'e,
    {
        let path = match path {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => return Cow::Borrowed(self.data),
            _ => return Cow::Borrowed(&NULL),
        };
        if path.is_empty() {
            return Cow::Borrowed(self.data);
        }
        match path.as_str() {
            "$flagd.flagKey" => return Cow::Owned(Value::String(self.key.to_string())),
            "$flagd.timestamp" => return Cow::Owned(Value::from(self.now)),
            _ => {}
        }
        let mut at = self.data;
        for part in path.split('.') {
            let next = match at {
                Value::Object(m) => m.get(part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => {
                    return match default {
                        Some(d) => self.eval(d),
                        None => Cow::Borrowed(&NULL),
                    }
                }
            }
        }
        Cow::Borrowed(at)
    }

    fn fractional<'e>(&self, args: &'e [Value]) -> Cow<'e, Value>
    where
        'd: 'e,
    {
        let (value, splits) = match args.first() {
            Some(Value::Array(_)) | None => {
                let Some(Value::String(key)) = self.data.get("targetingKey") else {
                    return Cow::Borrowed(&NULL);
                };
                (format!("{}{key}", self.key), args)
            }
            Some(expr) => match &*self.eval(expr) {
                Value::String(s) => (s.clone(), &args[1..]),
                _ => return Cow::Borrowed(&NULL),
            },
        };
        // Each bucket is [variant, weight?]; both may be JSON Logic, as in
        // flagd: the variant evaluates to a name (or a boolean, when the
        // split is a condition), the weight to a number (1 when left out,
        // negative as 0).
        let mut labels: Vec<Cow<'e, Value>> = Vec::with_capacity(splits.len());
        let mut weights: Vec<u64> = Vec::with_capacity(splits.len());
        for split in splits {
            let Value::Array(pair) = split else {
                return Cow::Borrowed(&NULL);
            };
            let Some(first) = pair.first() else {
                return Cow::Borrowed(&NULL);
            };
            let label = self.eval(first);
            if !matches!(&*label, Value::String(_) | Value::Bool(_)) {
                return Cow::Borrowed(&NULL);
            }
            let weight = match pair.get(1) {
                None => 1,
                Some(w) => match &*self.eval(w) {
                    Value::Number(n) => n
                        .as_i64()
                        .or_else(|| n.as_f64().map(|f| f as i64))
                        .map_or(0, |w| w.max(0) as u64),
                    _ => 0,
                },
            };
            labels.push(label);
            weights.push(weight);
        }
        let chosen = match self.bucketing {
            Bucketing::V2 => bucket_index(&value, weights.iter().copied()),
            Bucketing::V1 => bucket_index_v1(&value, &weights),
        };
        match chosen {
            Some(i) => labels.swap_remove(i),
            None => Cow::Borrowed(&NULL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> FlagDefinition {
        let d: FlagDefinition = serde_json::from_value(v).expect("a flagd definition");
        d.validate().expect("valid");
        d
    }

    /// flagd's own vectors (REFERENCE.md): `headerColor`, bucketing by
    /// flag key + email, four variants at 25 each.
    #[test]
    fn buckets_as_flagd_does() {
        for (email, hash) in [
            ("rachel@faas.com", 1_805_633_606u32),
            ("monica@faas.com", 3_314_683_759),
            ("joey@faas.com", 309_582_631),
            ("ross@faas.com", 1_595_699_981),
        ] {
            assert_eq!(
                murmur3_32(format!("headerColor{email}").as_bytes(), 0),
                hash,
                "{email}"
            );
        }
        let flag = def(json!({
            "state": "ENABLED",
            "variants": {"red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00"},
            "defaultVariant": "red",
            "targeting": {"fractional": [
                {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
                ["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]
            ]}
        }));
        for (email, variant) in [
            ("rachel@faas.com", "blue"),
            ("monica@faas.com", "yellow"),
            ("joey@faas.com", "red"),
            ("ross@faas.com", "blue"),
        ] {
            let r = flag
                .evaluate("headerColor", &json!({"email": email}), 0)
                .expect("a variant");
            assert_eq!(
                (r.variant, r.reason),
                (Some(variant), Reason::TargetingMatch),
                "{email}"
            );
        }
    }

    /// flagd-testbed's `@fractional-v1` and `@fractional-v2` examples of
    /// `fractional-flag`: the same definition, two bucketings.
    #[test]
    fn both_bucketing_generations_match_the_testbed() {
        let flag = def(json!({
            "state": "ENABLED",
            "variants": {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild"},
            "defaultVariant": "wild",
            "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}
        }));
        for (bucketing, cases) in [
            (
                Bucketing::V1,
                [
                    ("jack", "spades"),
                    ("queen", "clubs"),
                    ("ten", "diamonds"),
                    ("nine", "hearts"),
                    ("3", "diamonds"),
                ],
            ),
            (
                Bucketing::V2,
                [
                    ("jack", "hearts"),
                    ("queen", "spades"),
                    ("ten", "clubs"),
                    ("nine", "diamonds"),
                    ("3", "clubs"),
                ],
            ),
        ] {
            for (name, want) in cases {
                let r = flag
                    .evaluate_with(
                        "fractional-flag",
                        &json!({"user": {"name": name}}),
                        0,
                        bucketing,
                        flag.state,
                    )
                    .expect("a variant");
                assert_eq!(r.variant, Some(want), "{bucketing:?} {name}");
            }
        }
    }

    #[test]
    fn murmur3_known_values() {
        // Published reference values of MurmurHash3_x86_32.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248B_FA47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xFAF6_CDB3);
    }

    #[test]
    fn a_ten_ninety_split_by_targeting_key_holds_within_a_point() {
        let flag = def(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 10], ["off", 90]]}
        }));
        let on = (0..10_000)
            .filter(|i| {
                let r = flag
                    .evaluate(
                        "checkout.new-flow",
                        &json!({"targetingKey": format!("user-{i}")}),
                        0,
                    )
                    .unwrap_or_else(|e| panic!("{e:?}"));
                r.value == Some(&Value::Bool(true))
            })
            .count();
        assert!((900..=1100).contains(&on), "{on} of 10,000 on");
        // No targeting key: the default variant, as flagd answers.
        let r = flag
            .evaluate("checkout.new-flow", &json!({}), 0)
            .expect("no targeting key is the default");
        assert_eq!(r.reason, Reason::Default);
    }

    /// What flagd's evaluator gives for JSON Logic inside `fractional` (the
    /// inputs and outcomes of flagd-testbed 3.9.0's @fractional-nested cases,
    /// on definitions of the same shape written here).
    #[test]
    fn fractional_buckets_may_be_json_logic() {
        let split = |variant: Value, weight: Value| {
            def(json!({
                "state": "ENABLED", "defaultVariant": "fallback",
                "variants": {"premium": "premium", "standard": "standard", "red": "red",
                             "green": "green", "blue": "blue", "fallback": "fallback"},
                "targeting": {"fractional": [{"var": "targetingKey"}, [variant, weight], ["standard", 50]]}
            }))
        };
        let tier_if = json!({"if": [{"==": [{"var": "tier"}, "premium"]}, "premium", "standard"]});
        // jon@company.com falls in the first half, user1 in the second.
        for (key, tier, want) in [
            ("jon@company.com", "premium", "premium"),
            ("jon@company.com", "basic", "standard"),
            ("user1", "premium", "standard"),
        ] {
            let flag = split(tier_if.clone(), json!(50));
            let r = flag
                .evaluate("f", &json!({"targetingKey": key, "tier": tier}), 0)
                .expect("variant");
            assert_eq!(r.variant, Some(want), "{key} {tier}");
        }
        let by_color = split(json!({"var": "color"}), json!(50));
        let r = by_color.evaluate(
            "f",
            &json!({"targetingKey": "jon@company.com", "color": "green"}),
            0,
        );
        assert_eq!(r.expect("variant").variant, Some("green"));
        let r = by_color.evaluate(
            "f",
            &json!({"targetingKey": "jon@company.com", "color": "yellow"}),
            0,
        );
        assert!(r.is_err(), "no such variant: the caller's default");
        // A weight computed from the context: 100 for premium, 0 otherwise.
        let weighted = def(json!({
            "state": "ENABLED", "defaultVariant": "fallback",
            "variants": {"red": "red", "blue": "blue", "fallback": "fallback"},
            "targeting": {"fractional": [{"var": "targetingKey"},
                ["red", {"if": [{"==": [{"var": "tier"}, "premium"]}, 100, 0]}], ["blue", 10]]}
        }));
        for (key, tier, want) in [
            ("jon@company.com", "premium", "red"),
            ("jon@company.com", "basic", "blue"),
            ("user1", "premium", "red"),
            ("user1", "basic", "blue"),
        ] {
            let r = weighted
                .evaluate("f", &json!({"targetingKey": key, "tier": tier}), 0)
                .expect("variant");
            assert_eq!(r.variant, Some(want), "{key} {tier}");
        }
        // Booleans as buckets: the split is a condition.
        let condition = def(json!({
            "state": "ENABLED", "defaultVariant": "fallback",
            "variants": {"big": "hundreds", "small": "ones", "fallback": "zero"},
            "targeting": {"if": [{"fractional": [[false, 0], [true, 100]]}, "big", "small"]}
        }));
        let r = condition
            .evaluate("f", &json!({"targetingKey": "some-targeting-key"}), 0)
            .expect("variant");
        assert_eq!(
            (r.variant, r.value),
            (Some("big"), Some(&json!("hundreds")))
        );
    }

    #[test]
    fn shared_evaluators_are_resolved_and_a_missing_one_is_a_parse_error() {
        let evaluators =
            json!({"is_ballmer": {"==": ["ballmer@macrosoft.com", {"var": ["email"]}]}});
        let evaluators = evaluators.as_object().expect("object");
        // A flag whose targeting refers to `evaluator`: `yes` when it holds,
        // `no` when not, and `none` by default.
        let with_ref = |evaluator: &str| {
            let mut targeting = json!({"if": [{"$ref": evaluator}, "yes", "no"]});
            resolve_refs(&mut targeting, evaluators).expect("small");
            let flag = def(json!({
                "state": "ENABLED", "variants": {"yes": "yes", "no": "no", "none": "none"},
                "defaultVariant": "none", "targeting": targeting
            }));
            flag.validate().expect("loads, as in flagd");
            flag
        };
        let flag = with_ref("is_ballmer");
        for (email, want) in [("ballmer@macrosoft.com", "yes"), ("user@example.com", "no")] {
            let r = flag
                .evaluate("f", &json!({"email": email}), 0)
                .expect("variant");
            assert_eq!((r.variant, r.reason), (Some(want), Reason::TargetingMatch));
        }
        let flag = with_ref("nonexistent_evaluator");
        let e = flag.evaluate("f", &json!({}), 0).expect_err("parse error");
        assert_eq!(e.code, ErrorCode::ParseError);
        assert!(e.details.contains("nonexistent_evaluator"), "{}", e.details);
        // A cycle stops, unresolved.
        let cyclic = json!({"a": {"$ref": "b"}, "b": {"$ref": "a"}});
        let mut t = json!({"$ref": "a"});
        resolve_refs(&mut t, cyclic.as_object().expect("object")).expect("a cycle is small");
        // Evaluators that refer to the next one ten times, sixteen deep,
        // would be 10^16 values: refused, quickly.
        let mut chain = serde_json::Map::new();
        for level in 0..16 {
            let refs: Vec<Value> = (0..10)
                .map(|_| json!({"$ref": format!("e{}", level + 1)}))
                .collect();
            chain.insert(format!("e{level}"), json!({"or": refs}));
        }
        chain.insert("e16".into(), json!(true));
        let mut t = json!({"$ref": "e0"});
        let e = resolve_refs(&mut t, &chain).expect_err("bounded");
        assert!(e.contains("10000"), "{e}");
    }

    #[test]
    fn flagd_leniencies_empty_targeting_and_numeric_versions() {
        // "targeting": {} is no targeting: STATIC.
        let empty = def(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on",
            "targeting": {}
        }));
        empty.validate().expect("loads");
        let r = empty.evaluate("f", &json!({}), 0).expect("static");
        assert_eq!((r.variant, r.reason), (Some("on"), Reason::Static));
        // sem_ver reads a number in the context as its text ({version: 1} is 1.0.0).
        let versions = def(json!({
            "state": "ENABLED", "variants": {"new": "new", "old": "old"}, "defaultVariant": "old",
            "targeting": {"if": [{"sem_ver": [{"var": "version"}, ">=", "1.0.0"]}, "new", "old"]}
        }));
        for (version, variant) in [
            (json!(1), "new"),
            (json!(0.9), "old"),
            (json!("2.1.0"), "new"),
            (json!(true), "old"),
        ] {
            let r = versions
                .evaluate("f", &json!({"version": version}), 0)
                .expect("evaluates");
            assert_eq!(r.variant, Some(variant), "{version}");
        }
    }

    #[test]
    fn reasons_follow_flagd() {
        let plain = FlagDefinition::boolean(true);
        let r = plain.evaluate("f", &json!({}), 0).expect("static");
        assert_eq!((r.variant, r.reason), (Some("on"), Reason::Static));
        let rules = def(json!({
            "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": {"if": [{"and": [
                {"in": [{"var": "plan"}, ["enterprise", "business"]]},
                {"ends_with": [{"var": "email"}, ".eu"]},
                {"sem_ver": [{"var": "app"}, ">=", "v2.3.0"]}
            ]}, "on", null]}
        }));
        let eu = json!({"plan": "enterprise", "email": "a@shop.eu", "app": "2.10.1"});
        let r = rules.evaluate("f", &eu, 0).expect("match");
        assert_eq!((r.variant, r.reason), (Some("on"), Reason::TargetingMatch));
        let us = json!({"plan": "enterprise", "email": "a@shop.com", "app": "2.10.1"});
        let r = rules.evaluate("f", &us, 0).expect("default");
        assert_eq!((r.variant, r.reason), (Some("off"), Reason::Default));
        let old = json!({"plan": "enterprise", "email": "a@shop.eu", "app": "2.3.0-rc.1"});
        assert_eq!(
            rules.evaluate("f", &old, 0).expect("default").reason,
            Reason::Default
        );
        // Disabled as flagd disables: no value, the caller's default.
        let mut off = rules.clone();
        off.state = FlagState::Disabled;
        let r = off.evaluate("f", &eu, 0).expect("disabled");
        assert_eq!(
            (r.value, r.variant, r.reason),
            (None, None, Reason::Disabled)
        );
        // Killed by Firebreak: the off variant to everyone.
        let r = rules.killed();
        assert_eq!((r.variant, r.reason), (Some("off"), Reason::Disabled));
        let mut no_off = rules.clone();
        no_off.variants.remove("off");
        no_off.default_variant = Some("on".into());
        no_off.targeting = None;
        assert_eq!(no_off.killed(), Resolution::none(Reason::Disabled));
        assert_eq!(
            rules
                .evaluate("f", &json!([1]), 0)
                .expect_err("not an object")
                .code,
            ErrorCode::InvalidContext
        );
    }

    #[test]
    fn definitions_are_checked_like_flagd_loads_them() {
        let bad_default: FlagDefinition = serde_json::from_value(json!({
            "state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"
        }))
        .expect("shape");
        assert!(bad_default
            .validate()
            .expect_err("refused")
            .contains("\"nope\""));
        let bad_op: FlagDefinition = serde_json::from_value(json!({
            "state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on",
            "targeting": {"if": [{"regex": ["a", "b"]}, "on", null]}
        }))
        .expect("shape");
        // An unknown operation loads, as in flagd, is named as a warning, and
        // errs at evaluation.
        bad_op.validate().expect("loads");
        let warnings = bad_op.warnings();
        assert!(
            warnings.len() == 1
                && warnings[0].contains("targeting.if[0]")
                && warnings[0].contains("\"regex\""),
            "{warnings:?}"
        );
        let e = bad_op
            .evaluate("f", &json!({}), 0)
            .expect_err("parse error");
        assert_eq!(e.code, ErrorCode::ParseError);
        assert!(e.details.contains("regex"), "{}", e.details);
    }

    #[test]
    fn semver_and_json_logic_edges() {
        assert_eq!(sem_ver("v1.2.3", "=", "1.2.3"), Some(true));
        assert_eq!(sem_ver("1.2.3", "~", "1.2.9"), Some(true));
        assert_eq!(sem_ver("1.3.0", "^", "1.2.9"), Some(true));
        assert_eq!(sem_ver("1.0.0-alpha", "<", "1.0.0"), Some(true));
        assert_eq!(
            sem_ver("1.0.0-alpha.1", "<", "1.0.0-alpha.beta"),
            Some(true)
        );
        assert_eq!(sem_ver("not a version", "<", "1.0.0"), None);
        let s = Scope {
            key: "k",
            data: &json!({"n": "5", "list": [1, 2]}),
            now: 7,
            bucketing: Bucketing::V2,
            broken: std::cell::RefCell::new(None),
        };
        assert_eq!(*s.eval(&json!({"==": [{"var": "n"}, 5]})), json!(true));
        assert_eq!(*s.eval(&json!({"===": [{"var": "n"}, 5]})), json!(false));
        assert_eq!(*s.eval(&json!({"<": [1, {"var": "n"}, 9]})), json!(true));
        assert_eq!(*s.eval(&json!({"var": "list.1"})), json!(2));
        assert_eq!(*s.eval(&json!({"var": ["missing", "d"]})), json!("d"));
        assert_eq!(*s.eval(&json!({"var": "$flagd.timestamp"})), json!(7));
        assert_eq!(*s.eval(&json!({"starts_with": [1, "a"]})), Value::Null);
    }
}
