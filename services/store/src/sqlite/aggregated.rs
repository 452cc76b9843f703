//! Rows aggregated by SQLite into one JSON text
//! (`json_group_array(json_array(…))`) read straight into typed [`Columns`]:
//! each cell is decoded as the parser reaches it, with no JSON value tree in
//! between (a year of deploys is about 15 MB of such text, and building
//! values for it cost more than SQLite took to write it).

use std::fmt;

use chrono::DateTime;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::sql::{Col, Column, Columns};
use crate::{Result, StoreError};

/// Columns of the kinds asked for from the aggregated text (`None`: no row
/// came back at all). Times are microseconds since 1970. A cell of the wrong
/// kind is refused, naming its column.
pub(super) fn columns_from_json(kinds: &[(&str, Col)], text: Option<&str>) -> Result<Columns> {
    let mut cols: Vec<Column> = kinds.iter().map(|(_, k)| Column::empty(*k)).collect();
    if let Some(text) = text {
        let mut de = serde_json::Deserializer::from_str(text);
        Rows {
            kinds,
            cols: &mut cols,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| StoreError::Corrupt(format!("an aggregated read: {e}")))?;
    }
    Columns::new(cols)
}

/// The outer array: one row after another.
struct Rows<'a> {
    kinds: &'a [(&'a str, Col)],
    cols: &'a mut [Column],
}

impl<'de> DeserializeSeed<'de> for Rows<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let Rows { kinds, cols } = self;
        while seq
            .next_element_seed(Row {
                kinds,
                cols: &mut *cols,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One row: exactly one cell per column asked for.
struct Row<'a> {
    kinds: &'a [(&'a str, Col)],
    cols: &'a mut [Column],
}

impl<'de> DeserializeSeed<'de> for Row<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Row<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a row of {} columns", self.kinds.len())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let wanted = self.kinds.len();
        for (i, ((name, _), col)) in self.kinds.iter().zip(self.cols.iter_mut()).enumerate() {
            if seq.next_element_seed(Cell { name, col })?.is_none() {
                return Err(de::Error::custom(format!(
                    "a row of {i} columns where {wanted} were asked for"
                )));
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "a row of more than the {wanted} columns asked for"
            )));
        }
        Ok(())
    }
}

/// One cell, pushed onto its column.
struct Cell<'a> {
    name: &'a str,
    col: &'a mut Column,
}

impl Cell<'_> {
    fn int<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        match self.col {
            Column::Int(c) => c.push(Some(v)),
            Column::Time(c) => {
                let name = self.name;
                let out_of_range =
                    || E::custom(format!("column {name}: {v} is out of range for a time"));
                c.push(Some(
                    DateTime::from_timestamp_micros(v).ok_or_else(out_of_range)?,
                ));
            }
            _ => return Err(E::invalid_type(de::Unexpected::Signed(v), &self)),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Cell<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Cell<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match self.col {
            Column::Text(_) => "text",
            Column::Int(_) => "an integer",
            Column::Time(_) => "a time (microseconds since 1970)",
        };
        write!(f, "column {}: {kind} or null", self.name)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        match self.col {
            Column::Text(c) => c.push(None),
            Column::Int(c) => c.push(None),
            Column::Time(c) => c.push(None),
        }
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.int(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.int(v),
            Err(_) => Err(E::invalid_type(de::Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        match self.col {
            Column::Text(c) => {
                c.push(Some(v.to_owned()));
                Ok(())
            }
            _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_rows_become_typed_columns() {
        let kinds = [("id", Col::Int), ("name", Col::Text), ("at", Col::Time)];
        let rows = r#"[[1,"a\"b",1000000],[2,null,null],[3,"c",-5]]"#;
        let mut c = columns_from_json(&kinds, Some(rows)).unwrap();
        assert_eq!(c.rows(), 3);
        assert_eq!(
            c.ints(0).unwrap().collect::<Vec<_>>(),
            [Some(1), Some(2), Some(3)]
        );
        assert_eq!(
            c.texts(1).unwrap().collect::<Vec<_>>(),
            [Some("a\"b".to_string()), None, Some("c".to_string())]
        );
        assert_eq!(
            c.times(2).unwrap().collect::<Vec<_>>(),
            [
                DateTime::from_timestamp_micros(1_000_000),
                None,
                DateTime::from_timestamp_micros(-5)
            ]
        );
        // Taken twice, or as the wrong kind: a bug, said as one.
        assert!(c.ints(0).is_err());
        let mut c = columns_from_json(&kinds, None).unwrap();
        assert_eq!(c.rows(), 0);
        assert!(c.texts(0).is_err());
        assert_eq!(columns_from_json(&kinds, Some("[]")).unwrap().rows(), 0);
    }

    #[test]
    fn a_cell_of_the_wrong_kind_names_its_column() {
        let kinds = [("id", Col::Int), ("at", Col::Time), ("name", Col::Text)];
        for (rows, named) in [
            (r#"[[1, "noon", null]]"#, "column at"),
            (r#"[["one", 2, null]]"#, "column id"),
            (r#"[[1, 2, 3]]"#, "column name"),
            (r#"[[1, 2.5, null]]"#, "column at"),
            (r#"[[1, 9223372036854775807, null]]"#, "column at"),
        ] {
            let err = columns_from_json(&kinds, Some(rows)).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt(m) if m.contains(named)),
                "{rows}: {err}"
            );
        }
        for rows in [
            r#"[[1, 2]]"#,
            r#"[[1, 2, null, 4]]"#,
            "{}",
            "[[1, 2, null]] x",
        ] {
            assert!(
                matches!(
                    columns_from_json(&kinds, Some(rows)),
                    Err(StoreError::Corrupt(_))
                ),
                "{rows}"
            );
        }
    }
}
