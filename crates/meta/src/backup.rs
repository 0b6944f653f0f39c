//! Scheduled metadata backups: which mount writes the next one, what the
//! last one was, their object names, and which old ones to thin out.
//!
//! Every mount with `--backup-meta` asks [`Meta::claim_backup`] at its
//! heartbeat; the claim is one transaction on the `backup` key, so one mount
//! of the volume wins each round, and a lease lets another take over if the
//! winner dies half way. The dump itself (`crate::dump`) is written to the
//! volume's bucket by the data path, under [`BACKUP_DIR`], so a lost
//! metadata engine can be rebuilt from the bucket alone (`tessera load
//! --from-bucket`).

use serde::{Deserialize, Serialize};

use crate::{now, Meta, MetaError, Result};

/// The key of the backup state (not part of a dump: a volume loaded from a
/// backup starts its own schedule).
pub const BACKUP_KEY: &[u8] = b"backup";
/// Under the volume's prefix in its bucket: `{volume}/meta/dump-….json.zst`.
pub const BACKUP_DIR: &str = "meta";

/// The last backup and the claim on the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupState {
    /// When the last backup was stored (seconds since the epoch; 0: never).
    pub last_at: i64,
    /// Its object key and size, and how many metadata keys it holds.
    pub object: String,
    pub bytes: u64,
    pub keys: u64,
    /// The session writing one now, and until when its claim holds.
    pub by: u64,
    pub lease_until: i64,
}

fn decode(v: Option<Vec<u8>>) -> Result<BackupState> {
    match v {
        Some(v) => {
            serde_json::from_slice(&v).map_err(|e| MetaError::Corrupt(format!("backup state: {e}")))
        }
        None => Ok(BackupState::default()),
    }
}

fn encode(s: &BackupState) -> Result<Vec<u8>> {
    serde_json::to_vec(s).map_err(|e| MetaError::Corrupt(format!("backup state: {e}")))
}

impl Meta {
    /// Whether this session should write a backup now: none was stored in
    /// the last `every` seconds and no other session holds a live claim.
    /// A win holds the claim for `lease` seconds.
    pub fn claim_backup(&self, every: i64, lease: i64) -> Result<bool> {
        let sid = self.session_id();
        self.txn(|tx| {
            let mut s = decode(tx.get(BACKUP_KEY)?)?;
            let t = now().0;
            if t < s.lease_until && s.by != sid {
                return Ok(false);
            }
            if t - s.last_at < every {
                return Ok(false);
            }
            s.by = sid;
            s.lease_until = t + lease;
            tx.set(BACKUP_KEY, &encode(&s)?)?;
            Ok(true)
        })
    }

    /// Record a stored backup and end the claim.
    pub fn record_backup(&self, object: &str, bytes: u64, keys: u64) -> Result<()> {
        self.txn(|tx| {
            let s = BackupState {
                last_at: now().0,
                object: object.to_string(),
                bytes,
                keys,
                by: 0,
                lease_until: 0,
            };
            tx.set(BACKUP_KEY, &encode(&s)?)
        })
    }

    /// Give up a claim after a failed backup, so another mount may try.
    pub fn release_backup_claim(&self) -> Result<()> {
        let sid = self.session_id();
        self.txn(|tx| {
            let mut s = decode(tx.get(BACKUP_KEY)?)?;
            if s.by == sid {
                s.by = 0;
                s.lease_until = 0;
                tx.set(BACKUP_KEY, &encode(&s)?)?;
            }
            Ok(())
        })
    }

    /// The last backup (`last_at` 0 when there was none).
    pub fn backup_state(&self) -> Result<BackupState> {
        self.read_txn(|tx| decode(tx.get(BACKUP_KEY)?))
    }
}

/// `YYYYMMDD-HHMMSS` in UTC of a time in seconds since the epoch.
pub fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The inverse of [`utc_stamp`], for names read back from the bucket.
pub fn parse_utc_stamp(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('-')?;
    if date.len() != 8 || time.len() != 6 {
        return None;
    }
    let n = |t: &str| t.parse::<i64>().ok();
    let (y, m, d) = (n(&date[..4])?, n(&date[4..6])?, n(&date[6..])?);
    let (hh, mm, ss) = (n(&time[..2])?, n(&time[2..4])?, n(&time[4..])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The object key of a backup taken at `secs`, under the volume's prefix.
pub fn backup_object(volume: &str, secs: i64) -> String {
    format!("{volume}/{BACKUP_DIR}/dump-{}.json.zst", utc_stamp(secs))
}

/// The time in a backup object's key, if it is one.
pub fn backup_time(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    parse_utc_stamp(name.strip_prefix("dump-")?.strip_suffix(".json.zst")?)
}

/// Of backups taken at `times`, those to delete at `now`: every backup of
/// the last two days stays, then the newest of each day for two weeks,
/// then the newest of each week for two months; older ones go. The newest
/// backup always stays.
pub fn thin(now: i64, times: &[i64]) -> Vec<i64> {
    const DAY: i64 = 86_400;
    let mut sorted: Vec<i64> = times.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut kept_buckets = std::collections::HashSet::new();
    let mut doomed = Vec::new();
    for (i, &t) in sorted.iter().enumerate() {
        let age = now - t;
        let keep = if i == 0 || age < 2 * DAY {
            true
        } else if age < 14 * DAY {
            kept_buckets.insert(("day", t.div_euclid(DAY)))
        } else if age < 61 * DAY {
            kept_buckets.insert(("week", t.div_euclid(7 * DAY)))
        } else {
            false
        };
        if !keep {
            doomed.push(t);
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::MemoryEngine;
    use std::sync::Arc;

    #[test]
    fn stamps_round_trip_and_name_objects() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_796_083_199), "20261130-235959");
        for t in [0, 951_782_400, 1_796_083_199, 4_102_444_800, 1_234_567_890] {
            assert_eq!(parse_utc_stamp(&utc_stamp(t)), Some(t));
        }
        assert_eq!(parse_utc_stamp("20261301-000000"), None);
        let key = backup_object("vol", 1_796_083_199);
        assert_eq!(key, "vol/meta/dump-20261130-235959.json.zst");
        assert_eq!(backup_time(&key), Some(1_796_083_199));
        assert_eq!(backup_time("vol/chunks/0/0/1_0_4"), None);
    }

    #[test]
    fn thinning_keeps_recent_then_daily_then_weekly() {
        const H: i64 = 3600;
        const D: i64 = 86_400;
        let now = 1000 * D;
        // One backup an hour for 90 days.
        let times: Vec<i64> = (0..90 * 24).map(|h| now - h * H).collect();
        let doomed: std::collections::HashSet<i64> = thin(now, &times).into_iter().collect();
        let kept: Vec<i64> = times
            .iter()
            .copied()
            .filter(|t| !doomed.contains(t))
            .collect();
        let recent = kept.iter().filter(|&&t| now - t < 2 * D).count();
        assert_eq!(recent, 48, "every backup of the last two days");
        let daily = kept
            .iter()
            .filter(|&&t| (2 * D..14 * D).contains(&(now - t)))
            .count();
        assert!((12..=13).contains(&daily), "one a day: {daily}");
        let weekly = kept
            .iter()
            .filter(|&&t| (14 * D..61 * D).contains(&(now - t)))
            .count();
        assert!((6..=8).contains(&weekly), "one a week: {weekly}");
        assert!(kept.iter().all(|&t| now - t < 61 * D));
        // A lone old backup is the newest and stays.
        assert!(thin(now, &[now - 400 * D]).is_empty());
    }

    #[test]
    fn one_session_claims_each_round() {
        let engine = Arc::new(MemoryEngine::default());
        let a = Meta::new(engine.clone(), Default::default());
        a.init(&crate::conformance::test_format()).unwrap();
        let b = Meta::new(engine, Default::default());
        b.load().unwrap();
        let info = |host: &str| crate::SessionInfo {
            sid: 0,
            host: host.into(),
            pid: 1,
            mountpoint: "/m".into(),
            version: "t".into(),
            heartbeat: 0,
        };
        a.new_session(info("a")).unwrap();
        b.new_session(info("b")).unwrap();
        assert!(a.claim_backup(3600, 600).unwrap());
        assert!(!b.claim_backup(3600, 600).unwrap(), "a holds the claim");
        a.record_backup("vol/meta/dump-x.json.zst", 10, 3).unwrap();
        assert!(!b.claim_backup(3600, 600).unwrap(), "a backup is fresh");
        let s = b.backup_state().unwrap();
        assert_eq!(
            (s.object.as_str(), s.bytes, s.keys),
            ("vol/meta/dump-x.json.zst", 10, 3)
        );
        // Due again (interval 0): b may take it; a failed claim is released.
        assert!(b.claim_backup(0, 600).unwrap());
        assert!(!a.claim_backup(0, 600).unwrap());
        b.release_backup_claim().unwrap();
        assert!(a.claim_backup(0, 600).unwrap());
    }
}
