//! The cloud's retention schedule, as a pure function of the snapshots and "now".
//!
//! | backup | kept for |
//! |---|---|
//! | nightly | 2 weeks |
//! | weekly: a nightly made on a Sunday | 3 months |
//! | monthly: the month's first Sunday nightly | 1 year |
//! | on demand (manual, upload) | 3 months |
//!
//! A snapshot expires at its creation time plus the period of the longest rule that applies.
//! A month whose first nightly comes after its first Sunday has no monthly. Days, weekdays
//! and months are those of the given time zone. Failed snapshots are kept one day (so they can
//! be looked at), unfinished ones are never pruned.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Nightly,
    Manual,
    Upload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Queued,
    Running,
    Failed,
    Completed,
}

/// What the schedule needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub id: String,
    pub created: DateTime<Utc>,
    pub kind: Kind,
    pub state: State,
}

/// The rule that sets a snapshot's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Nightly,
    Weekly,
    Monthly,
    OnDemand,
    Failed,
    /// Queued or running: not pruned.
    Unfinished,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Nightly => "nightly: 2 weeks",
            Rule::Weekly => "weekly (Sunday nightly): 3 months",
            Rule::Monthly => "monthly (first Sunday of the month): 1 year",
            Rule::OnDemand => "on demand: 3 months",
            Rule::Failed => "failed: 1 day",
            Rule::Unfinished => "unfinished: kept",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub rule: Rule,
    pub expires: Option<DateTime<Utc>>,
    pub keep: bool,
}

fn first_sunday(year: i32, month: u32) -> NaiveDate {
    let first = NaiveDate::from_ymd_opt(year, month, 1).expect("valid month");
    let ahead = (7 - first.weekday().num_days_from_sunday()) % 7;
    first + Days::new(ahead as u64)
}

/// Adds calendar months in the time zone (the 30th of November plus 3 months is the 28th or
/// 29th of February), falling back to UTC arithmetic across a DST gap.
fn add_months(t: DateTime<Utc>, months: u32, tz: Tz) -> DateTime<Utc> {
    let local = t.with_timezone(&tz).naive_local();
    let later = local
        .checked_add_months(Months::new(months))
        .expect("in range");
    tz.from_local_datetime(&later)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|| t.checked_add_months(Months::new(months)).expect("in range"))
}

/// Decides, for every snapshot, the rule behind its expiry, the expiry, and whether it is kept
/// at `now`. The result is in the order of `snaps`.
pub fn evaluate(snaps: &[Snap], now: DateTime<Utc>, tz: Tz) -> Vec<Decision> {
    let local_date = |s: &Snap| s.created.with_timezone(&tz).date_naive();
    // The month's monthly: its first Sunday nightly, unless its first nightly came after
    // its first Sunday.
    let mut nightlies_by_month: BTreeMap<(i32, u32), Vec<&Snap>> = BTreeMap::new();
    for s in snaps
        .iter()
        .filter(|s| s.kind == Kind::Nightly && s.state == State::Completed)
    {
        let d = local_date(s);
        nightlies_by_month
            .entry((d.year(), d.month()))
            .or_default()
            .push(s);
    }
    let mut monthly: Vec<&str> = Vec::new();
    for ((year, month), mut list) in nightlies_by_month {
        list.sort_by_key(|s| s.created);
        let first = local_date(list[0]);
        if first > first_sunday(year, month) {
            continue;
        }
        if let Some(s) = list
            .iter()
            .find(|s| local_date(s).weekday() == Weekday::Sun)
        {
            monthly.push(&s.id);
        }
    }

    snaps
        .iter()
        .map(|s| {
            let (rule, expires) = match (s.state, s.kind) {
                (State::Queued | State::Running, _) => (Rule::Unfinished, None),
                (State::Failed, _) => (Rule::Failed, Some(s.created + Days::new(1))),
                (State::Completed, Kind::Manual | Kind::Upload) => {
                    (Rule::OnDemand, Some(add_months(s.created, 3, tz)))
                }
                (State::Completed, Kind::Nightly) => {
                    if monthly.contains(&s.id.as_str()) {
                        (Rule::Monthly, Some(add_months(s.created, 12, tz)))
                    } else if local_date(s).weekday() == Weekday::Sun {
                        (Rule::Weekly, Some(add_months(s.created, 3, tz)))
                    } else {
                        (Rule::Nightly, Some(s.created + Days::new(14)))
                    }
                }
            };
            Decision {
                id: s.id.clone(),
                rule,
                keep: expires.is_none_or(|e| now < e),
                expires,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn snap(id: &str, created: DateTime<Utc>, kind: Kind, state: State) -> Snap {
        Snap {
            id: id.to_string(),
            created,
            kind,
            state,
        }
    }

    /// Nightlies at 19:00 UTC from 2027-07-01 to 2029-01-09, with missed nights: June 1-5 2028
    /// (the month's first nightly comes after its first Sunday, June 4: no monthly), September
    /// 3 2028 (the first Sunday missed, but September 1 came first: the monthly is September
    /// 10), December 31 2028 and January 3 2029. It crosses the leap day 2028-02-29 and two
    /// year boundaries. October 2028 begins on a Sunday.
    fn nightlies() -> Vec<Snap> {
        let missed = [
            "2028-06-01",
            "2028-06-02",
            "2028-06-03",
            "2028-06-04",
            "2028-06-05",
            "2028-09-03",
            "2028-12-31",
            "2029-01-03",
        ];
        let mut out = Vec::new();
        let mut day = NaiveDate::from_ymd_opt(2027, 7, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(2029, 1, 9).unwrap();
        while day <= last {
            let name = day.format("%Y-%m-%d").to_string();
            if !missed.contains(&name.as_str()) {
                let created = Utc.from_utc_datetime(&day.and_hms_opt(19, 0, 0).unwrap());
                out.push(snap(&name, created, Kind::Nightly, State::Completed));
            }
            day = day + Days::new(1);
        }
        out
    }

    #[test]
    fn a_year_and_a_half_of_nightlies_keeps_what_the_cloud_keeps() {
        let now = at("2029-01-10T12:00:00Z");
        let snaps = nightlies();
        let decisions = evaluate(&snaps, now, Tz::UTC);
        let kept: Vec<(&str, Rule)> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| (d.id.as_str(), d.rule))
            .collect();
        use Rule::*;
        let expected = vec![
            // Monthlies of the last year; January 2028's (the 2nd) expired on 2029-01-02;
            // June has none.
            ("2028-02-06", Monthly),
            ("2028-03-05", Monthly),
            ("2028-04-02", Monthly),
            ("2028-05-07", Monthly),
            ("2028-07-02", Monthly),
            ("2028-08-06", Monthly),
            ("2028-09-10", Monthly),
            ("2028-10-01", Monthly),
            // Weeklies of the last three months.
            ("2028-10-15", Weekly),
            ("2028-10-22", Weekly),
            ("2028-10-29", Weekly),
            ("2028-11-05", Monthly),
            ("2028-11-12", Weekly),
            ("2028-11-19", Weekly),
            ("2028-11-26", Weekly),
            ("2028-12-03", Monthly),
            ("2028-12-10", Weekly),
            ("2028-12-17", Weekly),
            ("2028-12-24", Weekly),
            // Nightlies of the last two weeks (December 31 and January 3 missed).
            ("2028-12-27", Nightly),
            ("2028-12-28", Nightly),
            ("2028-12-29", Nightly),
            ("2028-12-30", Nightly),
            ("2029-01-01", Nightly),
            ("2029-01-02", Nightly),
            ("2029-01-04", Nightly),
            ("2029-01-05", Nightly),
            ("2029-01-06", Nightly),
            ("2029-01-07", Monthly),
            ("2029-01-08", Nightly),
            ("2029-01-09", Nightly),
        ];
        assert_eq!(kept, expected);
        let rule_of = |id: &str| decisions.iter().find(|d| d.id == id).unwrap().clone();
        assert_eq!(rule_of("2028-01-02").rule, Monthly);
        assert!(!rule_of("2028-01-02").keep);
        assert_eq!(rule_of("2028-06-11").rule, Weekly, "June has no monthly");
        assert_eq!(
            rule_of("2028-09-10").expires,
            Some(at("2029-09-10T19:00:00Z"))
        );
        assert_eq!(rule_of("2028-02-29").rule, Nightly);
        assert_eq!(
            rule_of("2028-12-27").expires,
            Some(at("2029-01-10T19:00:00Z"))
        );
    }

    #[test]
    fn on_demand_failed_and_unfinished_snapshots() {
        let now = at("2029-01-10T12:00:00Z");
        let snaps = vec![
            snap(
                "leap",
                at("2028-02-29T10:00:00Z"),
                Kind::Manual,
                State::Completed,
            ),
            snap(
                "oct",
                at("2028-10-11T08:00:00Z"),
                Kind::Manual,
                State::Completed,
            ),
            snap(
                "nov30",
                at("2028-11-30T09:00:00Z"),
                Kind::Upload,
                State::Completed,
            ),
            snap(
                "failed-new",
                at("2029-01-09T20:00:00Z"),
                Kind::Manual,
                State::Failed,
            ),
            snap(
                "failed-old",
                at("2029-01-08T20:00:00Z"),
                Kind::Nightly,
                State::Failed,
            ),
            snap(
                "running",
                at("2027-01-01T00:00:00Z"),
                Kind::Manual,
                State::Running,
            ),
        ];
        let d = evaluate(&snaps, now, Tz::UTC);
        let view: Vec<(&str, bool, Option<DateTime<Utc>>)> = d
            .iter()
            .map(|d| (d.id.as_str(), d.keep, d.expires))
            .collect();
        assert_eq!(
            view,
            vec![
                ("leap", false, Some(at("2028-05-29T10:00:00Z"))),
                ("oct", true, Some(at("2029-01-11T08:00:00Z"))),
                ("nov30", true, Some(at("2029-02-28T09:00:00Z"))),
                ("failed-new", true, Some(at("2029-01-10T20:00:00Z"))),
                ("failed-old", false, Some(at("2029-01-09T20:00:00Z"))),
                ("running", true, None),
            ]
        );
        // A failed nightly does not make or break a month's monthly.
        assert_eq!(d[4].rule, Rule::Failed);
    }

    #[test]
    fn the_time_zone_decides_the_day() {
        // Saturday 23:30 UTC is Sunday 00:30 in Amsterdam (winter time).
        let s = vec![snap(
            "n",
            at("2028-11-11T23:30:00Z"),
            Kind::Nightly,
            State::Completed,
        )];
        let now = at("2028-11-12T12:00:00Z");
        assert_eq!(evaluate(&s, now, Tz::UTC)[0].rule, Rule::Nightly);
        let amsterdam: Tz = "Europe/Amsterdam".parse().unwrap();
        // The only nightly of its month, on a Sunday after the month's first Sunday (Nov 5):
        // a weekly, not a monthly.
        assert_eq!(evaluate(&s, now, amsterdam)[0].rule, Rule::Weekly);
    }

    #[test]
    fn first_sundays() {
        assert_eq!(
            first_sunday(2028, 10),
            NaiveDate::from_ymd_opt(2028, 10, 1).unwrap()
        );
        assert_eq!(
            first_sunday(2028, 6),
            NaiveDate::from_ymd_opt(2028, 6, 4).unwrap()
        );
        assert_eq!(
            first_sunday(2029, 1),
            NaiveDate::from_ymd_opt(2029, 1, 7).unwrap()
        );
    }
}
