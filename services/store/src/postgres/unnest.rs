//! PostgreSQL's bulk insert: `INSERT … SELECT … FROM unnest($1, $2, …)`,
//! each column's values bound as one array, so a batch of any size is one
//! statement with one parameter per column. A table's columns are listed once,
//! each with the function that reads its value from a row; the statement's
//! column list, casts and array types are written from that list.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, Postgres, Row};

use crate::Result;

/// One column of a bulk insert: its name and its value in a row.
pub(super) enum Unnest<T> {
    Int(&'static str, fn(&T) -> Option<i64>),
    Float(&'static str, fn(&T) -> Option<f64>),
    Text(&'static str, for<'r> fn(&'r T) -> Option<&'r str>),
    /// JSON text, cast to the column's type (`json` or `jsonb`).
    Json(&'static str, &'static str, fn(&T) -> Option<String>),
    Time(&'static str, fn(&T) -> Option<DateTime<Utc>>),
}

impl<T> Unnest<T> {
    fn name(&self) -> &'static str {
        match self {
            Unnest::Int(name, _)
            | Unnest::Float(name, _)
            | Unnest::Text(name, _)
            | Unnest::Json(name, _, _)
            | Unnest::Time(name, _) => name,
        }
    }

    /// The parameter's array type and the expression that reads the column
    /// from the unnested row.
    fn typed(&self) -> (&'static str, String) {
        let name = self.name();
        match self {
            Unnest::Int(..) => ("bigint", name.to_string()),
            Unnest::Float(..) => ("float8", name.to_string()),
            Unnest::Text(..) => ("text", name.to_string()),
            Unnest::Json(_, cast, _) => ("text", format!("{name}::{cast}")),
            Unnest::Time(..) => ("timestamptz", name.to_string()),
        }
    }

    fn values<'r>(&self, rows: &'r [T]) -> Array<'r> {
        match self {
            Unnest::Int(_, f) => Array::Int(rows.iter().map(f).collect()),
            Unnest::Float(_, f) => Array::Float(rows.iter().map(f).collect()),
            Unnest::Text(_, f) => Array::Text(rows.iter().map(|r| f(r)).collect()),
            Unnest::Json(_, _, f) => Array::Json(rows.iter().map(f).collect()),
            Unnest::Time(_, f) => Array::Time(rows.iter().map(f).collect()),
        }
    }
}

/// One column's values, as bound.
enum Array<'r> {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Text(Vec<Option<&'r str>>),
    Json(Vec<Option<String>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

/// A bulk insert of `rows` into `table`, ready to run. `tail` follows the
/// `SELECT` (`ON CONFLICT …`, `RETURNING …`).
pub(super) struct Bulk<'r> {
    sql: String,
    arrays: Vec<Array<'r>>,
}

impl<'r> Bulk<'r> {
    pub(super) fn new<T>(table: &str, rows: &'r [T], columns: &[Unnest<T>], tail: &str) -> Self {
        let names = columns
            .iter()
            .map(Unnest::name)
            .collect::<Vec<_>>()
            .join(", ");
        let (params, reads): (Vec<String>, Vec<String>) = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (array, read) = c.typed();
                (format!("${}::{array}[]", i + 1), read)
            })
            .unzip();
        Bulk {
            sql: format!(
                "INSERT INTO {table} ({names}) SELECT {} FROM unnest({}) AS t({names}) {tail}",
                reads.join(", "),
                params.join(", ")
            ),
            arrays: columns.iter().map(|c| c.values(rows)).collect(),
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, Postgres, PgArguments> {
        self.arrays
            .iter()
            .fold(sqlx::query(&self.sql), |query, array| match array {
                Array::Int(v) => query.bind(v.as_slice()),
                Array::Float(v) => query.bind(v.as_slice()),
                Array::Text(v) => query.bind(v.as_slice()),
                Array::Json(v) => query.bind(v.as_slice()),
                Array::Time(v) => query.bind(v.as_slice()),
            })
    }

    /// Runs the insert; how many rows it wrote.
    pub(super) async fn execute(&self, conn: &mut PgConnection) -> Result<u64> {
        Ok(self.query().execute(conn).await?.rows_affected())
    }

    /// Runs the insert; the rows its `RETURNING` gave.
    pub(super) async fn fetch(&self, conn: &mut PgConnection) -> Result<Vec<PgRow>> {
        Ok(self.query().fetch_all(conn).await?)
    }
}

/// Inserts the rows whose `id` is not stored yet; the ids that were new.
pub(super) async fn insert_new<T>(
    conn: &mut PgConnection,
    table: &str,
    rows: &[T],
    columns: &[Unnest<T>],
) -> Result<HashSet<String>> {
    let bulk = Bulk::new(
        table,
        rows,
        columns,
        "ON CONFLICT (id) DO NOTHING RETURNING id",
    );
    let inserted = bulk.fetch(conn).await?;
    Ok(inserted
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<std::result::Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        id: String,
        n: i64,
        labels: String,
    }

    #[test]
    fn writes_each_column_once_with_its_array_type_and_cast() {
        let rows = [Row {
            id: "a".into(),
            n: 1,
            labels: "{}".into(),
        }];
        let bulk = Bulk::new(
            "things",
            &rows,
            &[
                Unnest::Text("id", |r| Some(&r.id)),
                Unnest::Int("n", |r| Some(r.n)),
                Unnest::Json("labels", "jsonb", |r| Some(r.labels.clone())),
            ],
            "ON CONFLICT (id) DO NOTHING",
        );
        assert_eq!(
            bulk.sql,
            "INSERT INTO things (id, n, labels) SELECT id, n, labels::jsonb \
             FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(id, n, labels) \
             ON CONFLICT (id) DO NOTHING"
        );
        assert_eq!(bulk.arrays.len(), 3);
    }
}
