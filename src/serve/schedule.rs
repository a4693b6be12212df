//! The nightly schedule: at the configured time, each environment's nightly snapshot, then a
//! prune by the retention schedule. The last night done is kept in `serve/schedule.json`; a
//! night missed while the service was down is logged and made up at the next start.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::Service;
use super::config::Schedule;
use super::jobs::JobState;
use crate::output::write_json_atomically;

#[derive(Serialize, Deserialize)]
struct Done {
    last_night: DateTime<Utc>,
}

/// The most recent scheduled moment at or before `now`.
pub fn last_slot(s: &Schedule, now: DateTime<Utc>) -> DateTime<Utc> {
    let local = now.with_timezone(&s.zone);
    let mut day = local.date_naive();
    loop {
        // A time that does not exist that day (a DST gap) moves to the next valid one.
        let wanted = day.and_time(s.time);
        let slot = s
            .zone
            .from_local_datetime(&wanted)
            .earliest()
            .or_else(|| {
                s.zone
                    .from_local_datetime(&(wanted + Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc));
        if let Some(t) = slot.filter(|t| *t <= now) {
            return t;
        }
        day = day.pred_opt().expect("dates go back far enough");
    }
}

/// The next scheduled moment after `after`.
pub fn next_slot(s: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
    let mut probe = after + Duration::hours(1);
    loop {
        let slot = last_slot(s, probe);
        if slot > after {
            return slot;
        }
        probe += Duration::hours(1);
    }
}

/// Runs until the service stops.
pub fn run(svc: Arc<Service>, schedule: Schedule) {
    let state_path = svc.config.state_dir.join("schedule.json");
    let log = svc.log.clone();
    let now = Utc::now();
    let mut last = match std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Done>(&b).ok())
    {
        Some(d) => d.last_night,
        // The first start: the schedule begins tonight, nothing is owed.
        None => last_slot(&schedule, now),
    };
    loop {
        let due = next_slot(&schedule, last);
        let now = Utc::now();
        if due <= now {
            if now - due > Duration::minutes(5) {
                log(&format!(
                    "the nightly snapshots of {} were missed (the service was not running); \
                     making them now",
                    due.format("%Y-%m-%d %H:%M UTC")
                ));
            }
            nightly(&svc);
            last = last_slot(&schedule, Utc::now());
            if let Err(e) = write_json_atomically(&state_path, &Done { last_night: last }) {
                log(&format!("cannot record the nightly run: {e}"));
            }
            continue;
        }
        log(&format!(
            "next nightly snapshots at {}",
            due.format("%Y-%m-%d %H:%M UTC")
        ));
        while Utc::now() < due {
            if svc.cancel.is_cancelled() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// One night: a snapshot of every environment (waiting while another job holds one), then the
/// prune of its expired snapshots.
fn nightly(svc: &Arc<Service>) {
    let log = svc.log.clone();
    for env in &svc.config.environments {
        let name = format!("{}/{}", env.app, env.mode);
        let job = loop {
            if svc.cancel.is_cancelled() {
                return;
            }
            match super::api::start_nightly(svc, env) {
                Ok(job) => break Some(job),
                Err(e) if e.code == "ENVIRONMENT_BUSY" => {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    log(&format!(
                        "the nightly snapshot of {name} failed: {}",
                        e.message
                    ));
                    break None;
                }
            }
        };
        if let Some(job) = job {
            if let Some(done) = svc.jobs.wait(&job.id) {
                if done.state != JobState::Completed {
                    log(&format!(
                        "the nightly snapshot of {name} failed: {}",
                        done.status_message.unwrap_or_default()
                    ));
                }
            }
        }
        let pruned = crate::catalog::ops::plan_prune(
            &svc.config.repo,
            Some(&env.catalog_name()),
            Utc::now(),
            svc.config.timezone,
        )
        .and_then(|plan| crate::catalog::ops::execute_prune(plan, &svc.cancel));
        match pruned {
            Ok(decisions) => {
                let removed = decisions.iter().filter(|(_, d)| !d.keep).count();
                if removed > 0 {
                    log(&format!("pruned {removed} expired snapshot(s) of {name}"));
                }
            }
            Err(e) => log(&format!("pruning {name} failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveTime;

    #[test]
    fn slots_follow_the_zone_and_its_clock_changes() {
        let s = Schedule {
            time: NaiveTime::from_hms_opt(2, 30, 0).unwrap(),
            zone: "Europe/Amsterdam".parse().unwrap(),
        };
        // 2026-03-29: clocks go from 02:00 to 03:00 in Amsterdam; 02:30 does not exist that
        // night, which runs at 03:30 instead (01:30 UTC) rather than not at all.
        let t = Utc.with_ymd_and_hms(2026, 3, 29, 12, 0, 0).unwrap();
        let last = last_slot(&s, t);
        assert_eq!(last, Utc.with_ymd_and_hms(2026, 3, 29, 1, 30, 0).unwrap());
        assert_eq!(
            next_slot(&s, last),
            Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap()
        );
        let before = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        assert_eq!(
            last_slot(&s, before),
            Utc.with_ymd_and_hms(2026, 3, 28, 1, 30, 0).unwrap()
        );
        let utc = Schedule {
            time: NaiveTime::from_hms_opt(19, 0, 0).unwrap(),
            zone: chrono_tz::Tz::UTC,
        };
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 18, 59, 0).unwrap();
        assert_eq!(
            last_slot(&utc, t),
            Utc.with_ymd_and_hms(2026, 12, 1, 19, 0, 0).unwrap()
        );
        assert_eq!(
            next_slot(&utc, last_slot(&utc, t)),
            Utc.with_ymd_and_hms(2026, 12, 2, 19, 0, 0).unwrap()
        );
    }
}
