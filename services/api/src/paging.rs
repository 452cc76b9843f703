//! Keyset paging for the list endpoints: a page size the caller may choose
//! within a bound, and the cursor for the next page.

use crate::error::{bad, ApiError};

/// A page size: `given`, else `default`; a 400 unless it is 1 to `max`.
pub(crate) fn page_limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = given.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(bad("limit", format!("must be between 1 and {max}")));
    }
    Ok(limit)
}

/// `next_before` for a page read newest first: the last row's id when the
/// page is full (there may be more), else none.
pub(crate) fn next_before<T>(rows: &[T], limit: i64, id: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(id))
        .flatten()
}
