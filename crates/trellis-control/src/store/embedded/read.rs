//! Reads: point gets, listings and the event log, from redb read transactions (snapshots, so a
//! listing and its revision always agree). Nothing read back is trusted: every malformed record
//! or event is `Corrupt`, naming its key or revision.
use super::db::{split_header, COMPACTED, EVENTS, HEADER, META, RESOURCES, REVISION};
use super::Inner;
use crate::store::codec::{decode, parse_key};
use crate::store::{
    LeaseId, Listing, ResourceKey, Result, Revision, StoreError, Stored, WatchEvent,
};
use redb::{ReadTransaction, ReadableDatabase};

impl Inner {
    pub(super) fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(|e| self.backend(e))
    }

    pub(super) fn get(&self, key: &ResourceKey) -> Result<Option<Stored>> {
        let rtxn = self.read()?;
        let table = rtxn.open_table(RESOURCES).map_err(|e| self.backend(e))?;
        let key_s = key.to_string();
        match table.get(key_s.as_str()).map_err(|e| self.backend(e))? {
            Some(v) => Ok(Some(self.decode_record(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Several keys from one snapshot, and its revision.
    pub(super) fn get_many(&self, keys: &[ResourceKey]) -> Result<(Vec<Option<Stored>>, Revision)> {
        let rtxn = self.read()?;
        let revision = read_meta(&rtxn, REVISION).map_err(|e| self.backend(e))?;
        let table = rtxn.open_table(RESOURCES).map_err(|e| self.backend(e))?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let key_s = key.to_string();
            out.push(
                match table.get(key_s.as_str()).map_err(|e| self.backend(e))? {
                    Some(v) => Some(self.decode_record(key, v.value())?),
                    None => None,
                },
            );
        }
        Ok((out, revision))
    }

    pub(super) fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing> {
        let rtxn = self.read()?;
        let revision = read_meta(&rtxn, REVISION).map_err(|e| self.backend(e))?;
        let table = rtxn.open_table(RESOURCES).map_err(|e| self.backend(e))?;
        // '0' is the character after '/', so `P/`..`P0` is exactly the keys under prefix `P/`.
        let (start, end) = match (kind, namespace) {
            (Some(k), Some(ns)) => (format!("{k}/{ns}/"), format!("{k}/{ns}0")),
            (Some(k), None) => (format!("{k}/"), format!("{k}0")),
            (None, _) => (String::new(), "\u{10ffff}".to_string()),
        };
        let mut items = Vec::new();
        let rows = table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.backend(e))?;
        for row in rows {
            let (k, v) = row.map_err(|e| self.backend(e))?;
            let key = parse_key(&self.name, k.value())?;
            if namespace.is_some_and(|ns| ns != key.namespace) {
                continue;
            }
            items.push(self.decode_record(&key, v.value())?);
        }
        Ok(Listing { items, revision })
    }

    /// The events after `from` in a snapshot, with its revision and compaction point.
    pub(super) fn events_after(
        &self,
        rtxn: &ReadTransaction,
        from: Revision,
    ) -> Result<Vec<WatchEvent>> {
        let run = || -> Result<(Revision, Revision), redb::Error> {
            Ok((read_meta(rtxn, REVISION)?, read_meta(rtxn, COMPACTED)?))
        };
        let (revision, compacted) = run().map_err(|e| self.backend(e))?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let table = rtxn.open_table(EVENTS).map_err(|e| self.backend(e))?;
        let mut out = Vec::new();
        if from >= revision {
            return Ok(out);
        }
        for row in table.range(from + 1..).map_err(|e| self.backend(e))? {
            let (rev, bytes) = row.map_err(|e| self.backend(e))?;
            self.decode_events(rev.value(), bytes.value(), &mut out)?;
        }
        Ok(out)
    }

    fn decode_record(&self, key: &ResourceKey, bytes: &[u8]) -> Result<Stored> {
        let Some((header, json)) = bytes.split_first_chunk::<HEADER>() else {
            return Err(self.corrupt(&key.to_string(), "record shorter than its header"));
        };
        let (version, lease) = split_header(header);
        Ok(Stored {
            resource: decode(&self.name, key, json)?,
            version,
            lease: (lease != 0).then_some(LeaseId(lease)),
        })
    }

    /// One event-log entry: a single change, or a batch of puts at one revision.
    fn decode_events(
        &self,
        revision: Revision,
        bytes: &[u8],
        out: &mut Vec<WatchEvent>,
    ) -> Result<()> {
        let Some((&2, rest)) = bytes.split_first() else {
            out.push(self.decode_event(revision, bytes)?);
            return Ok(());
        };
        let at = format!("event log, revision {revision}");
        let (count, mut rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| self.corrupt(&at, "truncated batch"))?;
        for _ in 0..u32::from_be_bytes(*count) {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| self.corrupt(&at, "truncated batch"))?;
            let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
            let (event, tail) = tail
                .split_at_checked(len)
                .ok_or_else(|| self.corrupt(&at, "truncated batch entry"))?;
            out.push(self.decode_event(revision, event)?);
            rest = tail;
        }
        Ok(())
    }

    fn decode_event(&self, revision: Revision, bytes: &[u8]) -> Result<WatchEvent> {
        let at = format!("event log, revision {revision}");
        let (&tag, rest) = bytes
            .split_first()
            .ok_or_else(|| self.corrupt(&at, "empty event"))?;
        let (lease, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| self.corrupt(&at, "truncated event"))?;
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| self.corrupt(&at, "truncated event"))?;
        let len = usize::from(u16::from_be_bytes(*len));
        let (key, json) = rest
            .split_at_checked(len)
            .ok_or_else(|| self.corrupt(&at, "truncated key"))?;
        let key = std::str::from_utf8(key).map_err(|e| self.corrupt(&at, &e.to_string()))?;
        let key = parse_key(&self.name, key)?;
        match tag {
            0 => {
                let lease = i64::from_be_bytes(*lease);
                Ok(WatchEvent::Put(Stored {
                    resource: decode(&self.name, &key, json)?,
                    version: revision,
                    lease: (lease != 0).then_some(LeaseId(lease)),
                }))
            }
            1 => Ok(WatchEvent::Delete { key, revision }),
            t => Err(self.corrupt(&at, &format!("unknown event type {t}"))),
        }
    }

    pub(super) fn backend(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Backend {
            store: self.name.clone(),
            detail: e.into().to_string(),
        }
    }

    fn corrupt(&self, key: &str, detail: &str) -> StoreError {
        StoreError::Corrupt {
            store: self.name.clone(),
            key: key.to_string(),
            detail: detail.to_string(),
        }
    }
}

fn read_meta(rtxn: &ReadTransaction, name: &str) -> Result<u64, redb::Error> {
    Ok(rtxn
        .open_table(META)?
        .get(name)?
        .map(|v| v.value())
        .unwrap_or(0))
}
