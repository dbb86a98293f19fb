//! Recurring schedules: a cron expression read in a time zone, what one
//! scheduler tick makes of the runs that came due (catch-up once), and which
//! audience rows a run targets by day offsets from a date they carry
//! (seed 004's "3 days before" and "due today" reminders are one schedule
//! with offsets `[-3, 0]`).
//!
//! Cron semantics are croner's: five fields (or six with seconds first),
//! names for months and weekdays, `L`, `#`, `W`. Across DST, a fixed-time
//! job whose time falls into the spring-forward gap runs at the first valid
//! minute after it, and one in the fall-back overlap runs once.

use crate::{Timestamp, ValidationError};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Zoned;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// The most offsets one schedule may name, and how far they may reach.
pub const MAX_OFFSETS: usize = 16;
pub const MAX_OFFSET_DAYS: i32 = 366;

/// How many missed runs a catch-up counts before it stops counting (the
/// count is only reported; a catch-up runs once however many were missed).
const MISSED_COUNT_CAP: u32 = 10_000;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: TimeZone,
}

/// What one scheduler tick does with a schedule whose next run is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The run to make now: the latest occurrence not after `now`.
    pub occurrence: Timestamp,
    /// Occurrences between the stored due time and `occurrence` that are
    /// not run (downtime): caught up once, by this run.
    pub missed: u32,
    /// The next run after `now`; `None` if the expression never fires again.
    pub next: Option<Timestamp>,
}

impl CronSchedule {
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, ValidationError> {
        let tz = TimeZone::get(time_zone).map_err(|_| {
            ValidationError::new(
                "time_zone",
                format!("{time_zone:?} is not an IANA time zone such as America/Sao_Paulo"),
            )
        })?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression.trim())
            .map_err(|e| ValidationError::new("cron", format!("{e} (e.g. \"0 9 * * *\": daily at 09:00)")))?;
        let schedule = Self { cron, tz };
        // An expression that parses but never matches (`0 0 30 2 *`) is as
        // useless as one that does not parse: refuse it now.
        let first = schedule.next_runs(Timestamp::from_millis(0), 8);
        if first.is_empty() {
            return Err(ValidationError::new("cron", "never matches a real date"));
        }
        // A run is a send to a whole audience: more than one a minute would
        // pile runs up behind each other.
        if first.windows(2).any(|w| w[1].as_millis() - w[0].as_millis() < 60_000) {
            return Err(ValidationError::new("cron", "runs more than once a minute"));
        }
        Ok(schedule)
    }

    fn zoned(&self, t: Timestamp) -> Option<Zoned> {
        Some(t.to_jiff()?.to_zoned(self.tz.clone()))
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = self.cron.find_next_occurrence(&self.zoned(t)?, false).ok()?;
        Some(Timestamp::from_jiff(z.timestamp()))
    }

    /// The next `n` runs after `t`.
    pub fn next_runs(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        std::iter::successors(self.next_after(t), |&r| self.next_after(r)).take(n).collect()
    }

    /// The calendar date of `t` in the schedule's time zone: the "today" of
    /// a run, against which audience dates and offsets are compared.
    pub fn local_date(&self, t: Timestamp) -> Option<Date> {
        Some(self.zoned(t)?.date())
    }

    /// What to run at `now` for a schedule that was due at `due` (`due <=
    /// now`): the latest occurrence in `[due, now]`, once, however many
    /// came due while no scheduler ran.
    pub fn plan(&self, due: Timestamp, now: Timestamp) -> Plan {
        let mut occurrence = due;
        let mut missed = 0;
        let mut next = self.next_after(due.plus_millis(-1));
        while let Some(t) = next.filter(|t| *t <= now) {
            if t > due {
                missed += 1;
            }
            occurrence = t;
            next = self.next_after(t);
            if missed >= MISSED_COUNT_CAP {
                // A frequent expression after a long outage: stop counting,
                // jump to the end.
                occurrence = self.latest_until(now).unwrap_or(t);
                next = self.next_after(now);
                break;
            }
        }
        Plan { occurrence, missed, next }
    }

    fn latest_until(&self, now: Timestamp) -> Option<Timestamp> {
        let z = self.cron.find_previous_occurrence(&self.zoned(now)?, true).ok()?;
        Some(Timestamp::from_jiff(z.timestamp()))
    }
}

/// Checks a schedule's day offsets: each in `±366`, no repeats, at most 16.
pub fn check_offsets(offsets: &[i32]) -> Result<(), ValidationError> {
    if offsets.len() > MAX_OFFSETS {
        return Err(ValidationError::new("offsets_days", format!("at most {MAX_OFFSETS} offsets")));
    }
    if let Some(o) = offsets.iter().find(|o| !(-MAX_OFFSET_DAYS..=MAX_OFFSET_DAYS).contains(*o)) {
        return Err(ValidationError::new("offsets_days", format!("{o} is more than {MAX_OFFSET_DAYS} days away")));
    }
    let mut sorted = offsets.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != offsets.len() {
        return Err(ValidationError::new("offsets_days", "names an offset twice"));
    }
    Ok(())
}

/// A date as audience rows carry it: `2026-12-10` or `10/12/2026`
/// (day/month/year, as Brazilian billing systems write it).
pub fn parse_date(s: &str) -> Option<Date> {
    let s = s.trim();
    if let Some((d, rest)) = s.split_once('/') {
        let (m, y) = rest.split_once('/')?;
        let small = |v: &str| v.parse::<i8>().ok();
        return Date::new(y.parse().ok()?, small(m)?, small(d)?).ok().filter(|_| y.len() == 4);
    }
    s.parse::<Date>().ok().filter(|_| s.len() == 10)
}

/// The offsets of `offsets` for which a row dated `date` is due on
/// `run_date`: `offset = -3` targets rows dated three days after the run.
pub fn due_offsets(date: Date, run_date: Date, offsets: &[i32]) -> Vec<i32> {
    offsets
        .iter()
        .copied()
        .filter(|&o| jiff::Span::new().try_days(o).and_then(|span| date.checked_add(span)).is_ok_and(|d| d == run_date))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn runs(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let c = CronSchedule::parse(expr, tz).unwrap();
        c.next_runs(at(from), n).into_iter().map(Timestamp::to_rfc3339).collect()
    }

    #[test]
    fn a_daily_run_keeps_its_local_time_across_dst() {
        // New York springs forward on 2026-03-08: 09:00 is 14:00Z before, 13:00Z after.
        assert_eq!(
            runs("0 9 * * *", "America/New_York", "2026-03-06T00:00:00Z", 4),
            [
                "2026-03-06T14:00:00.000Z",
                "2026-03-07T14:00:00.000Z",
                "2026-03-08T13:00:00.000Z",
                "2026-03-09T13:00:00.000Z"
            ]
        );
        // And falls back on 2026-11-01.
        assert_eq!(
            runs("0 9 * * *", "America/New_York", "2026-10-31T00:00:00Z", 2),
            ["2026-10-31T13:00:00.000Z", "2026-11-01T14:00:00.000Z"]
        );
    }

    #[test]
    fn a_time_in_the_dst_gap_runs_after_it_and_one_in_the_overlap_runs_once() {
        // 02:30 does not exist on 2026-03-08 in New York: the run is at 03:00 EDT.
        assert_eq!(
            runs("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00.000Z", "2026-03-09T06:30:00.000Z"]
        );
        // 01:30 happens twice on 2026-11-01: one run, at the first.
        assert_eq!(
            runs("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 3),
            ["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z", "2026-11-03T06:30:00.000Z"]
        );
    }

    #[test]
    fn sao_paulo_has_no_dst_and_is_three_hours_behind() {
        assert_eq!(
            runs("0 9 * * *", "America/Sao_Paulo", "2026-12-05T00:00:00Z", 2),
            ["2026-12-05T12:00:00.000Z", "2026-12-06T12:00:00.000Z"]
        );
    }

    #[test]
    fn downtime_is_caught_up_once_with_the_latest_missed_run() {
        let c = CronSchedule::parse("0 9 * * *", "America/Sao_Paulo").unwrap();
        // Due on the 5th at 09:00, the scheduler comes back on the 8th at 10:00.
        let p = c.plan(at("2026-12-05T12:00:00Z"), at("2026-12-08T13:00:00Z"));
        assert_eq!(p.occurrence, at("2026-12-08T12:00:00Z"));
        assert_eq!(p.missed, 3, "the 5th, 6th and 7th are not run");
        assert_eq!(p.next, Some(at("2026-12-09T12:00:00Z")));
        // On time: the due run itself, nothing missed.
        let p = c.plan(at("2026-12-05T12:00:00Z"), at("2026-12-05T12:00:01Z"));
        assert_eq!((p.occurrence, p.missed), (at("2026-12-05T12:00:00Z"), 0));
        assert_eq!(p.next, Some(at("2026-12-06T12:00:00Z")));
    }

    #[test]
    fn a_frequent_expression_after_a_long_outage_jumps_to_the_end() {
        let c = CronSchedule::parse("* * * * *", "UTC").unwrap();
        let p = c.plan(at("2026-11-01T00:00:00Z"), at("2026-12-08T00:00:30Z"));
        assert_eq!(p.occurrence, at("2026-12-08T00:00:00Z"));
        assert_eq!(p.missed, MISSED_COUNT_CAP);
        assert_eq!(p.next, Some(at("2026-12-08T00:01:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        assert_eq!(CronSchedule::parse("0 9 * *", "UTC").unwrap_err().field, "cron");
        assert_eq!(CronSchedule::parse("61 9 * * *", "UTC").unwrap_err().field, "cron");
        assert_eq!(CronSchedule::parse("0 0 30 2 *", "UTC").unwrap_err().field, "cron");
        assert_eq!(CronSchedule::parse("0 0 9 1 1 * 2020", "UTC").unwrap_err().field, "cron", "no year field");
        assert_eq!(CronSchedule::parse("*/30 * * * * *", "UTC").unwrap_err().message, "runs more than once a minute");
        assert!(CronSchedule::parse("30 0 9 * * *", "UTC").is_ok(), "a seconds field is fine once a minute or less");
        assert_eq!(CronSchedule::parse("0 9 * * *", "Mars/Olympus").unwrap_err().field, "time_zone");
    }

    #[test]
    fn dates_in_both_spellings() {
        let d = Date::new(2026, 12, 10).unwrap();
        assert_eq!(parse_date("2026-12-10"), Some(d));
        assert_eq!(parse_date("10/12/2026"), Some(d));
        for bad in ["2026-13-01", "31/02/2026", "10/12/26", "tomorrow", "", "2026-1-5", "10/268/2026", "266/12/2026"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_pick_the_rows_due_on_the_run_date() {
        let due = Date::new(2026, 12, 10).unwrap();
        let day = |d: i8| Date::new(2026, 12, d).unwrap();
        assert_eq!(due_offsets(due, day(7), &[-3, 0]), [-3]);
        assert_eq!(due_offsets(due, day(10), &[-3, 0]), [0]);
        assert!(due_offsets(due, day(8), &[-3, 0]).is_empty());
        assert_eq!(due_offsets(due, day(11), &[1]), [1], "a day after");
        assert!(check_offsets(&[-3, 0]).is_ok());
        assert!(check_offsets(&[0, 0]).is_err());
        assert!(check_offsets(&[400]).is_err());
        assert!(check_offsets(&[i32::MIN]).is_err(), "no overflow");
        assert!(due_offsets(due, day(7), &[i32::MIN, i32::MAX]).is_empty(), "no panic");
    }
}
