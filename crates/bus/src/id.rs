//! Stream entry ids: `<milliseconds>-<sequence>`, as Redis writes them.

use std::fmt;
use std::str::FromStr;

/// A stream entry's id. Ordered by `(ms, seq)`; text form `ms-seq` (e.g. `1718000000000-0`),
/// the same for both backends. `ms` is the backend's clock when the entry was added (kept
/// monotonic: a clock going back reuses the last `ms` with the next `seq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// `0-0`, lower than any entry's id.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    /// The smallest id greater than this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream entry id (<ms>-<seq>)")]
pub struct ParseEntryIdError(pub String);

impl FromStr for EntryId {
    type Err = ParseEntryIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEntryIdError(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(EntryId {
            ms: ms.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

impl serde::Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_and_order() {
        let a: EntryId = "1718000000000-0".parse().unwrap();
        let b: EntryId = "1718000000000-12".parse().unwrap();
        let c: EntryId = "1718000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1718000000000-12");
        assert_eq!(a.next(), EntryId::new(1718000000000, 1));
        assert_eq!(EntryId::new(5, u64::MAX).next(), EntryId::new(6, 0));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-2-3",
            "+1-2",
            "1 -2",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
    }
}
