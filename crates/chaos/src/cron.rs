//! Schedules: 5-field cron expressions, evaluated in UTC on plain milliseconds.
//!
//! `minute hour day-of-month month day-of-week`, each field `*`, a value, a range `a-b`, a
//! step `*/n`, `a-b/n` or `a/n` (from `a` to the field's end), or a comma-separated list of
//! those. Months and weekdays may be named (`JAN`, `mon-fri`); Sunday is 0 or 7. The macros
//! `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) are
//! accepted, and, as in Chaos Mesh's schedules, `@every DURATION` (`@every 30s`, `@every 1h`;
//! at least one second): a fire that long after the previous look. As in Vixie cron, when both day fields are restricted (neither starts with `*`)
//! a day matches if *either* does: `0 0 1 * mon` fires on the first and on every Monday.
//!
//! An expression that can never fire (`0 0 30 2 *`) is a parse error, so a valid schedule
//! always has a next time. [`tick`] is the scheduler's whole rule: fire when due, unless a run
//! of the same experiment is still going (that fire is skipped, never queued), and fires missed
//! while the controller was away collapse into one.

use std::fmt;

use thiserror::Error;

const MINUTE_MS: u64 = 60_000;
const DAY_MINUTES: u64 = 24 * 60;
/// How far [`Cron::next_after`] looks. Every valid expression fires within 8 years (29 February
/// skips 1900-like centuries); this is a guard against arithmetic mistakes, not a real limit.
const SEARCH_DAYS: i64 = 366 * 30;

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month field starts with `*` (Vixie cron's DOM_STAR).
    any_day: bool,
    any_weekday: bool,
    /// `@every`: the interval in milliseconds; the fields above are unused.
    every_ms: Option<u64>,
}

/// Why an expression is not a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("unknown macro `{0}`: use @hourly, @daily, @weekly, @monthly, @yearly or @every 30s")]
    Macro(String),
    #[error("@every `{0}`: expected a duration of at least 1s, such as 30s, 5m or 1h")]
    Every(String),
    #[error("{field} field, `{item}`: {message}")]
    Field {
        field: &'static str,
        item: String,
        message: String,
    },
    #[error("never fires: no month of `{months}` has a day `{days}`")]
    Never { days: String, months: String },
}

struct FieldSpec {
    name: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    lo: 0,
    hi: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    lo: 0,
    hi: 23,
    names: &[],
};
const DAY: FieldSpec = FieldSpec {
    name: "day-of-month",
    lo: 1,
    hi: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    lo: 1,
    hi: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
/// 7 is Sunday too; folded into 0 after parsing.
const WEEKDAY: FieldSpec = FieldSpec {
    name: "day-of-week",
    lo: 0,
    hi: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let text = expression.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with("@every") => {
                let interval = other["@every".len()..].trim();
                let ms = gauntlet_rollout::analysis::DurationStr::try_from(interval.to_string())
                    .ok()
                    .map(|d| d.as_ms())
                    .filter(|ms| *ms >= 1_000)
                    .ok_or_else(|| CronError::Every(interval.to_string()))?;
                return Ok(Cron {
                    minutes: 0,
                    hours: 0,
                    days: 0,
                    months: 0,
                    weekdays: 0,
                    any_day: true,
                    any_weekday: true,
                    every_ms: Some(ms),
                });
            }
            other if other.starts_with('@') => return Err(CronError::Macro(other.to_string())),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };
        let mut weekdays = parse_field(weekday, &WEEKDAY)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let cron = Cron {
            minutes: parse_field(minute, &MINUTE)?,
            hours: parse_field(hour, &HOUR)?,
            days: parse_field(day, &DAY)?,
            months: parse_field(month, &MONTH)?,
            weekdays,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
            every_ms: None,
        };
        // Only the day of month can make a schedule impossible, and only when it alone
        // decides the day.
        if !cron.any_day && cron.any_weekday {
            let possible = (1..=12u32).any(|m| {
                cron.months & (1 << m) != 0 && (1..=max_days(m)).any(|d| cron.days & (1 << d) != 0)
            });
            if !possible {
                return Err(CronError::Never {
                    days: day.to_string(),
                    months: month.to_string(),
                });
            }
        }
        Ok(cron)
    }

    /// The first time strictly after `after_ms` (Unix milliseconds, UTC) that the schedule
    /// fires, on a whole minute (`@every`: `after_ms` plus the interval). `None` only past the search horizon, which a parsed
    /// expression does not reach.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        if let Some(every) = self.every_ms {
            return after_ms.checked_add(every);
        }
        let start = after_ms / MINUTE_MS + 1;
        let mut day = (start / DAY_MINUTES) as i64;
        let mut minute_of_day = start % DAY_MINUTES;
        let last_day = day + SEARCH_DAYS;
        while day <= last_day {
            let (year, month, dom) = civil_from_days(day);
            if self.months & (1 << month) == 0 {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                day = days_from_civil(y, m, 1);
                minute_of_day = 0;
                continue;
            }
            if self.day_matches(dom, weekday(day)) {
                let first_hour = (minute_of_day / 60) as u32;
                for hour in first_hour..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let first_minute = if hour == first_hour {
                        (minute_of_day % 60) as u32
                    } else {
                        0
                    };
                    if let Some(minute) = (first_minute..60).find(|m| self.minutes & (1 << m) != 0)
                    {
                        let total =
                            day as u64 * DAY_MINUTES + u64::from(hour) * 60 + u64::from(minute);
                        return Some(total * MINUTE_MS);
                    }
                }
            }
            day += 1;
            minute_of_day = 0;
        }
        None
    }

    fn day_matches(&self, dom: u32, weekday: u32) -> bool {
        let by_day = self.days & (1 << dom) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }
}

fn parse_field(text: &str, spec: &FieldSpec) -> Result<u64, CronError> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let error = |message: String| CronError::Field {
            field: spec.name,
            item: item.to_string(),
            message,
        };
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    error(format!("step `{step}` must be a whole number above 0"))
                })?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (spec.lo, spec.hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                value(a, spec).map_err(&error)?,
                value(b, spec).map_err(&error)?,
            );
            if a > b {
                return Err(error(format!("the range runs backwards ({a} > {b})")));
            }
            (a, b)
        } else {
            let a = value(range, spec).map_err(&error)?;
            // `a/n` runs from `a` to the end of the field, as in Vixie cron.
            (a, if step.is_some() { spec.hi } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    if let Some(i) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        // Names count from the field's lowest value: JAN is 1, SUN is 0.
        return Ok(i as u32 + spec.lo);
    }
    let n: u32 = text.parse().map_err(|_| {
        if text.is_empty() {
            "a value is missing".to_string()
        } else if spec.names.is_empty() {
            format!("`{text}` is not a number")
        } else {
            format!("`{text}` is not a number or a name like {}", spec.names[1])
        }
    })?;
    if n < spec.lo || n > spec.hi {
        return Err(format!("{n} is out of range {}-{}", spec.lo, spec.hi));
    }
    Ok(n)
}

fn max_days(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// 0 is Sunday; 1970-01-01 was a Thursday.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Howard Hinnant's `civil_from_days`: (year, month 1-12, day 1-31) of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the scheduler does for one experiment at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Start a run now.
    pub start: bool,
    /// A fire was due but a run was still going: it is skipped (recorded, not queued).
    pub skipped: bool,
    /// When to look again; store it as the new `next_fire_ms`.
    pub next_fire_ms: Option<u64>,
}

/// The scheduler's rule for one experiment: `next_fire_ms` is the stored time of the next
/// fire (initially `cron.next_after(created)`), `running` whether a run of this experiment has
/// not finished. Fires missed while the controller was away collapse into one.
pub fn tick(cron: &Cron, next_fire_ms: u64, running: bool, now_ms: u64) -> Tick {
    if now_ms < next_fire_ms {
        return Tick {
            start: false,
            skipped: false,
            next_fire_ms: Some(next_fire_ms),
        };
    }
    Tick {
        start: !running,
        skipped: running,
        next_fire_ms: cron.next_after(now_ms),
    }
}

impl fmt::Display for Tick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.start, self.skipped) {
            (true, _) => "start",
            (_, true) => "skip (a run is still going)",
            _ => "wait",
        };
        match self.next_fire_ms {
            Some(next) => write!(f, "{what}; next at {next}"),
            None => f.write_str(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix milliseconds of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: u64, minute: u64) -> u64 {
        let days = days_from_civil(year, month, day) as u64;
        (days * DAY_MINUTES + hour * 60 + minute) * MINUTE_MS
    }

    fn next(expression: &str, after: u64) -> u64 {
        Cron::parse(expression).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn civil_dates_round_trip_across_centuries() {
        for days in [
            -800_000i64,
            -1,
            0,
            59,
            60,
            11_016,
            19_782,
            47_541,
            2_932_896,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(weekday(days_from_civil(2024, 6, 3)), 1);
    }

    #[test]
    fn every_fifteen_minutes_fires_on_the_quarter_strictly_after() {
        let e = "*/15 * * * *";
        assert_eq!(next(e, at(2024, 3, 5, 10, 7)), at(2024, 3, 5, 10, 15));
        assert_eq!(next(e, at(2024, 3, 5, 10, 15)), at(2024, 3, 5, 10, 30));
        assert_eq!(next(e, at(2024, 3, 5, 10, 15) - 1), at(2024, 3, 5, 10, 15));
        assert_eq!(next(e, at(2024, 3, 5, 23, 50)), at(2024, 3, 6, 0, 0));
        assert_eq!(next(e, at(2024, 12, 31, 23, 45)), at(2025, 1, 1, 0, 0));
    }

    #[test]
    fn weekdays_at_nine_skip_the_weekend() {
        let e = "0 9 * * 1-5";
        // 2024-06-07 is a Friday.
        assert_eq!(next(e, at(2024, 6, 7, 8, 59)), at(2024, 6, 7, 9, 0));
        assert_eq!(next(e, at(2024, 6, 7, 9, 0)), at(2024, 6, 10, 9, 0));
        assert_eq!(
            next("0 9 * * MON-fri", at(2024, 6, 8, 12, 0)),
            at(2024, 6, 10, 9, 0)
        );
    }

    #[test]
    fn month_and_day_edges() {
        // The 31st skips the months without one.
        assert_eq!(
            next("0 0 31 * *", at(2024, 4, 1, 0, 0)),
            at(2024, 5, 31, 0, 0)
        );
        // 29 February waits for a leap year (and 2100 is not one).
        assert_eq!(
            next("0 12 29 2 *", at(2024, 3, 1, 0, 0)),
            at(2028, 2, 29, 12, 0)
        );
        assert_eq!(
            next("0 12 29 2 *", at(2096, 3, 1, 0, 0)),
            at(2104, 2, 29, 12, 0)
        );
        // Named months and a step from a value.
        assert_eq!(
            next("30 6 1 jan,jul *", at(2024, 1, 1, 6, 30)),
            at(2024, 7, 1, 6, 30)
        );
        assert_eq!(
            next("5/20 * * * *", at(2024, 1, 1, 0, 46)),
            at(2024, 1, 1, 1, 5)
        );
        // Sunday written as 7.
        assert_eq!(
            next("0 0 * * 7", at(2024, 6, 3, 0, 0)),
            at(2024, 6, 9, 0, 0)
        );
        assert_eq!(
            next("@monthly", at(2024, 2, 15, 0, 0)),
            at(2024, 3, 1, 0, 0)
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 15th (a Saturday in June 2024) or any Monday.
        let e = "0 0 15 * mon";
        assert_eq!(next(e, at(2024, 6, 11, 0, 0)), at(2024, 6, 15, 0, 0));
        assert_eq!(next(e, at(2024, 6, 15, 0, 0)), at(2024, 6, 17, 0, 0));
        // With `*/1` the day of week counts as unrestricted, as in Vixie cron.
        assert_eq!(
            next("0 0 15 * */1", at(2024, 6, 11, 0, 0)),
            at(2024, 6, 15, 0, 0)
        );
    }

    #[test]
    fn parse_errors_name_the_field_and_the_item() {
        let error = |e: &str| Cron::parse(e).unwrap_err().to_string();
        assert_eq!(
            error("* * * *"),
            "expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert_eq!(
            error("61 * * * *"),
            "minute field, `61`: 61 is out of range 0-59"
        );
        assert_eq!(
            error("* 5-2 * * *"),
            "hour field, `5-2`: the range runs backwards (5 > 2)"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "minute field, `*/0`: step `0` must be a whole number above 0"
        );
        assert_eq!(
            error("0 0 * foo *"),
            "month field, `foo`: `foo` is not a number or a name like FEB"
        );
        assert_eq!(
            error("0 0 1,,2 * *"),
            "day-of-month field, ``: a value is missing"
        );
        assert_eq!(
            error("0 0 30 2 *"),
            "never fires: no month of `2` has a day `30`"
        );
        assert_eq!(
            error("@often"),
            "unknown macro `@often`: use @hourly, @daily, @weekly, @monthly, @yearly or @every 30s"
        );
    }

    #[test]
    fn a_tick_starts_when_due_and_skips_while_a_run_is_going() {
        let cron = Cron::parse("*/15 * * * *").unwrap();
        let due = at(2024, 1, 1, 10, 15);
        let early = tick(&cron, due, false, due - 1);
        assert!(!early.start && early.next_fire_ms == Some(due));
        let fire = tick(&cron, due, false, due + 20);
        assert!(fire.start);
        assert_eq!(fire.next_fire_ms, Some(at(2024, 1, 1, 10, 30)));
        let busy = tick(&cron, due, true, due);
        assert!(!busy.start && busy.skipped);
        // A controller away for an hour fires once, then resumes the schedule.
        let late = tick(&cron, due, false, at(2024, 1, 1, 11, 20));
        assert!(late.start);
        assert_eq!(late.next_fire_ms, Some(at(2024, 1, 1, 11, 30)));
    }

    #[test]
    fn every_fires_its_interval_after_each_look_and_needs_a_second() {
        let cron = Cron::parse("@every 2s").unwrap();
        assert_eq!(cron.next_after(10_000), Some(12_000));
        let first = tick(&cron, 12_000, false, 12_500);
        assert_eq!((first.start, first.next_fire_ms), (true, Some(14_500)));
        let during = tick(&cron, 14_500, true, 14_600);
        assert_eq!((during.start, during.skipped), (false, true));
        assert_eq!(
            Cron::parse("@every 500ms"),
            Err(CronError::Every("500ms".into()))
        );
        assert_eq!(Cron::parse("@every"), Err(CronError::Every("".into())));
    }
}
