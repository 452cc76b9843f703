//! One duration grammar for configuration and playbooks: a sequence of whole
//! numbers with units, `250ms`, `90s`, `30m`, `2h`, `7d`, `1w`, combined as in
//! `1h30m`. `0s` is allowed (callers that need a positive value say so).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A duration as people write it in configuration files and playbooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub chrono::Duration);

const UNITS: &str = "ms, s, m, h, d or w";

impl Dur {
    pub fn parse(raw: &str) -> Result<Dur, String> {
        let s = raw.trim();
        let bad = || {
            format!("{raw:?} is not a duration: use e.g. 500ms, 30s, 5m, 2h, 1h30m or 7d (units {UNITS})")
        };
        if s.is_empty() {
            return Err(bad());
        }
        let mut total_ms: i64 = 0;
        let mut number = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let value: i64 = number.parse().map_err(|_| bad())?;
            number.clear();
            let unit_ms: i64 = match c {
                'm' if chars.peek() == Some(&'s') => {
                    chars.next();
                    1
                }
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 604_800_000,
                _ => return Err(bad()),
            };
            total_ms = value
                .checked_mul(unit_ms)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(|| format!("{raw:?} is too long a duration"))?;
        }
        if !number.is_empty() {
            return Err(bad());
        }
        chrono::Duration::try_milliseconds(total_ms)
            .map(Dur)
            .ok_or_else(|| format!("{raw:?} is too long a duration"))
    }

    pub fn from_std(d: std::time::Duration) -> Dur {
        Dur(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
    }

    /// The same span as a `std::time::Duration` (never negative: parsing refuses signs).
    pub fn to_std(self) -> std::time::Duration {
        self.0.to_std().unwrap_or_default()
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.num_milliseconds();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms % size == 0 {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        Dur::parse(s).unwrap().0.num_milliseconds()
    }

    #[test]
    fn one_grammar() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("90s"), 90_000);
        assert_eq!(ms("30m"), 1_800_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("1w"), 604_800_000);
        assert_eq!(ms("0s"), 0);
        assert_eq!(ms(" 5m "), 300_000);
        for bad in ["", "5", "5x", "m", "-5s", "1.5h", "5 m"] {
            let e = Dur::parse(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
        assert!(Dur::parse("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn prints_the_largest_whole_unit() {
        for (text, shown) in [
            ("90s", "90s"),
            ("120s", "2m"),
            ("1h30m", "90m"),
            ("24h", "1d"),
            ("1500ms", "1500ms"),
            ("0ms", "0s"),
        ] {
            assert_eq!(Dur::parse(text).unwrap().to_string(), shown);
        }
    }
}
