//! What the claim's read-ahead reads of a job, and the ranges it reads in.

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};

use crate::fleet::window::Key;
use crate::queue::filters::queue_order;
use crate::schema::{fields, integer};

/// The read-ahead's ranges of `priority`, each with its sort, in queue
/// order: first a `priority` that is not a number (claimed only to be
/// failed with the reason); then above 0; then 0 and none merged by age (a
/// shell producer's job has no `priority` and ranks as 0; the two are
/// exact ranges of the claim index, which the server merges in `run_at`,
/// `_id` order); then below 0.
pub(crate) fn priority_ranges() -> [(Document, Document); 4] {
    let by_age = doc! {fields::RUN_AT: 1, "_id": 1};
    [
        (
            doc! {"$exists": true, "$not": {"$type": ["number", "null"]}},
            queue_order(),
        ),
        (doc! {"$gt": 0}, queue_order()),
        (doc! {"$in": [0, Bson::Null]}, by_age),
        (doc! {"$lt": 0}, queue_order()),
    ]
}

/// What the read-ahead reads of a job: its key in the window (with its
/// group, for fair share: [`crate::groups::fair`]), and its `attempts` (checked to be a number before a claim's `$inc` meets it).
pub(crate) fn key_of(raw: &RawDocumentBuf) -> (Key, Bson) {
    let field = |name: &str| {
        raw.get(name)
            .ok()
            .flatten()
            .and_then(|value| Bson::try_from(value.to_raw_bson()).ok())
            .unwrap_or(Bson::Null)
    };
    let rank = match field(fields::PRIORITY) {
        Bson::Null => Bson::Int64(0),
        other => integer(&other).map_or(other, Bson::Int64),
    };
    let group = match field(fields::GROUP) {
        Bson::String(name) => Some(name),
        _ => None,
    };
    (
        Key {
            id: field("_id"),
            rank,
            group,
        },
        field(fields::ATTEMPTS),
    )
}

/// The fields a read-ahead reads: only what the claim needs (`group` for
/// fair share, and `run_at`, to merge the jobs of rank 0 by age). The bodies of the jobs a claim
/// wins are read back by its token.
pub(crate) fn key_projection() -> Document {
    doc! {"_id": 1, fields::PRIORITY: 1, fields::ATTEMPTS: 1, fields::RUN_AT: 1, fields::GROUP: 1}
}

/// Where a job's `priority` puts it in the claim index's descending order:
/// not a number (every other BSON type sorts above numbers), above 0, 0,
/// below 0, and none (`null` or missing, which sorts below every number but
/// ranks as 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    Other,
    Above,
    Zero,
    Below,
    Null,
}

impl Class {
    fn of(priority: &Bson) -> Class {
        match priority {
            Bson::Null | Bson::Undefined => Class::Null,
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
                match number(priority) {
                    Some(n) if n > 0.0 => Class::Above,
                    Some(n) if n < 0.0 => Class::Below,
                    Some(_) => Class::Zero,
                    // NaN sorts below every number.
                    None => Class::Below,
                }
            }
            _ => Class::Other,
        }
    }

    /// The first of [`priority_ranges`] that can hold a job of this class
    /// or of any class after it (a job without a priority ranks as 0, so a
    /// read that met one below 0 first reads the range of 0 too).
    pub(crate) fn first_range(self) -> usize {
        match self {
            Class::Other => 0,
            Class::Above => 1,
            Class::Zero | Class::Below | Class::Null => 2,
        }
    }
}

/// A key as one read in the claim index's order returned it.
pub(crate) struct Row {
    pub(crate) key: Key,
    pub(crate) class: Class,
    /// `run_at` and `_id`: the order within a priority.
    pub(crate) age: (Bson, Bson),
}

impl Row {
    /// The row of a read-ahead document (see [`key_projection`]).
    pub(crate) fn of(raw: &RawDocumentBuf, key: Key) -> Row {
        let field = |name: &str| {
            raw.get(name)
                .ok()
                .flatten()
                .and_then(|value| Bson::try_from(value.to_raw_bson()).ok())
                .unwrap_or(Bson::Null)
        };
        Row {
            class: Class::of(&field(fields::PRIORITY)),
            age: (field(fields::RUN_AT), key.id.clone()),
            key,
        }
    }
}

/// The keys of one read of every eligible job in the index's order
/// (`priority` descending, then `run_at`, `_id`), put in queue order as far
/// as that read tells it, and whether more may lie beyond them.
///
/// The index's order is queue order but for one thing: a job without a
/// `priority` sorts after every number yet ranks as 0. A read that stopped
/// at its limit (`full`) therefore knows the order only up to where an
/// unread job without a priority could belong: everything above 0, then
/// the jobs of rank 0 merged by age up to the youngest job without a
/// priority it read. What a full read says of the rest (more jobs of 0,
/// jobs below 0) is dropped, to be read later. `Err` names the class of
/// the first row when nothing at all is known in order (or an age could
/// not be compared): the read must then be made in ranges from
/// [`Class::first_range`].
pub(crate) fn in_queue_order(rows: Vec<Row>, full: bool) -> Result<(Vec<Key>, bool), Class> {
    let first = rows.first().map_or(Class::Null, |r| r.class);
    let mut above = Vec::new();
    let mut zero = Vec::new();
    let mut below = Vec::new();
    let mut none = Vec::new();
    for row in rows {
        match row.class {
            Class::Other | Class::Above => above.push(row),
            Class::Zero => zero.push(row),
            Class::Below => below.push(row),
            Class::Null => none.push(row),
        }
    }
    let mut dropped = false;
    if full {
        // Below 0 waits for every job without a priority, read or not.
        dropped |= !below.is_empty();
        below.clear();
        if let Some(last) = none.last() {
            // Jobs of 0 younger than the youngest without a priority read
            // could come after unread ones without a priority.
            let bound = last.age.clone();
            let before = zero.len();
            let mut kept = Vec::with_capacity(before);
            for row in zero {
                match compare(&row.age, &bound) {
                    Some(std::cmp::Ordering::Greater) => {}
                    Some(_) => kept.push(row),
                    None => return Err(first),
                }
            }
            dropped |= kept.len() < before;
            zero = kept;
        } else {
            // The read ended in 0 or below: any unread job without a
            // priority could be older than all of them.
            dropped |= !zero.is_empty();
            zero.clear();
        }
    }
    let mut rank_zero = zero;
    rank_zero.extend(none);
    let mut failed = false;
    rank_zero.sort_by(|a, b| {
        compare(&a.age, &b.age).unwrap_or_else(|| {
            failed = true;
            std::cmp::Ordering::Equal
        })
    });
    if failed {
        return Err(first);
    }
    let keys: Vec<Key> = above
        .into_iter()
        .chain(rank_zero)
        .chain(below)
        .map(|r| r.key)
        .collect();
    if keys.is_empty() && full {
        return Err(first);
    }
    Ok((keys, full || dropped))
}

/// Two `(run_at, _id)` pairs in the server's sort order, for the types a
/// queue holds (`None` for any other: the caller reads in ranges instead).
fn compare(a: &(Bson, Bson), b: &(Bson, Bson)) -> Option<std::cmp::Ordering> {
    Some(order(&a.0, &b.0)?.then(order(&a.1, &b.1)?))
}

/// One value against another in BSON's order of types, then by value.
fn order(a: &Bson, b: &Bson) -> Option<std::cmp::Ordering> {
    fn bracket(value: &Bson) -> Option<u8> {
        Some(match value {
            Bson::Null | Bson::Undefined => 1,
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
            Bson::String(_) | Bson::Symbol(_) => 3,
            Bson::ObjectId(_) => 7,
            Bson::Boolean(_) => 8,
            Bson::DateTime(_) => 9,
            _ => return None,
        })
    }
    let by_type = bracket(a)?.cmp(&bracket(b)?);
    if by_type.is_ne() {
        return Some(by_type);
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => Some(x.bytes().cmp(&y.bytes())),
        (Bson::Boolean(x), Bson::Boolean(y)) => Some(x.cmp(y)),
        (Bson::DateTime(x), Bson::DateTime(y)) => Some(x.cmp(y)),
        (Bson::Null | Bson::Undefined, Bson::Null | Bson::Undefined) => {
            Some(std::cmp::Ordering::Equal)
        }
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(f64::from(*n)),
        #[allow(clippy::cast_precision_loss)]
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(x) if !x.is_nan() => Some(*x),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{oid::ObjectId, DateTime};

    fn row(priority: Bson, run_at: Option<i64>) -> Row {
        let id = Bson::ObjectId(ObjectId::new());
        Row {
            key: Key {
                id: id.clone(),
                rank: priority.clone(),
                group: None,
            },
            class: Class::of(&priority),
            age: (
                run_at.map_or(Bson::Null, |ms| Bson::DateTime(DateTime::from_millis(ms))),
                id,
            ),
        }
    }

    fn ranks(keys: &[Key]) -> Vec<Bson> {
        keys.iter().map(|k| k.rank.clone()).collect()
    }

    #[test]
    fn a_full_read_of_jobs_without_a_priority_is_in_order() {
        let rows: Vec<Row> = (0..5).map(|_| row(Bson::Null, None)).collect();
        let ids: Vec<Bson> = rows.iter().map(|r| r.key.id.clone()).collect();
        let (keys, full) = in_queue_order(rows, true).unwrap();
        assert_eq!(keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), ids);
        assert!(full);
    }

    #[test]
    fn a_complete_read_merges_zero_with_none_by_age_and_puts_below_last() {
        let rows = vec![
            row(Bson::Int64(5), Some(10)),
            row(Bson::Int64(0), Some(30)),
            row(Bson::Int64(-1), Some(1)),
            row(Bson::Null, Some(20)),
        ];
        let (keys, full) = in_queue_order(rows, false).unwrap();
        assert_eq!(
            ranks(&keys),
            vec![Bson::Int64(5), Bson::Null, Bson::Int64(0), Bson::Int64(-1)]
        );
        assert!(!full);
    }

    #[test]
    fn a_full_read_keeps_only_what_no_unread_job_can_come_before() {
        let rows = vec![
            row(Bson::String("x".into()), None),
            row(Bson::Int64(2), Some(5)),
            row(Bson::Int64(0), Some(10)),
            row(Bson::Int64(0), Some(40)),
            row(Bson::Int64(-3), Some(1)),
            row(Bson::Null, Some(20)),
        ];
        let (keys, full) = in_queue_order(rows, true).unwrap();
        // The job of 0 at 40 could follow an unread one without a priority
        // at 30; the one below 0 follows every job without a priority.
        assert_eq!(
            ranks(&keys),
            vec![
                Bson::String("x".into()),
                Bson::Int64(2),
                Bson::Int64(0),
                Bson::Null
            ]
        );
        assert!(full);
    }

    #[test]
    fn a_full_read_that_ends_at_zero_or_below_knows_nothing_there() {
        let rows = vec![row(Bson::Int64(3), Some(1)), row(Bson::Int64(0), Some(2))];
        let (keys, full) = in_queue_order(rows, true).unwrap();
        assert_eq!(ranks(&keys), vec![Bson::Int64(3)]);
        assert!(full);
        let zeros = vec![row(Bson::Int64(0), Some(1)), row(Bson::Int64(0), Some(2))];
        assert_eq!(in_queue_order(zeros, true).unwrap_err(), Class::Zero);
        let below = vec![row(Bson::Int32(-1), Some(1))];
        assert_eq!(in_queue_order(below, true).unwrap_err().first_range(), 2);
        assert!(in_queue_order(Vec::new(), false).unwrap().0.is_empty());
    }
}
