//! The redb layout and the synchronous operations on it. Everything here runs on a blocking
//! thread (see the module above for why).
//!
//! Tables:
//! * `resources`: `Kind/ns/name` → `[version u64 BE][lease i64 BE, 0 = none][resource JSON]`
//! * `events`: revision → `[0 put | 1 delete][lease i64 BE][key length u16 BE][key][JSON if put]`,
//!   or, for a batch (several puts at one revision), `[2][count u32 BE]` then each put as
//!   `[length u32 BE][put event]`; the last `retained_events` revisions, for watches that resume
//!   from a revision
//! * `receipts`: apply id → `[revision u64 BE][written at, unix seconds u64 BE][answer]`, kept
//!   for [`RECEIPT_TTL`]
//! * `leases`: lease id → TTL in seconds; `lease_keys`: lease id →→ keys under it
//! * `meta`: `revision` (last assigned), `compacted` (history at or below it is gone),
//!   `next_lease`
use super::Inner;
use crate::store::codec::parse_key;
use crate::store::{
    LeaseId, ResourceKey, Result, Revision, StoreError, Stored, WatchEvent, RECEIPT_TTL,
};
use redb::{MultimapTableDefinition, ReadableTable, TableDefinition, WriteTransaction};
use std::time::Duration;

pub(super) const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(super) const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: MultimapTableDefinition<i64, &str> =
    MultimapTableDefinition::new("lease_keys");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("receipts");

pub(super) const REVISION: &str = "revision";
pub(super) const COMPACTED: &str = "compacted";
const NEXT_LEASE: &str = "next_lease";
pub(super) const HEADER: usize = 16;

/// One write transaction: changes made through it commit together or not at all.
pub(super) struct Tx<'a> {
    pub(super) inner: &'a Inner,
    txn: WriteTransaction,
    revision: Revision,
    events: Vec<WatchEvent>,
    pub(super) granted: Vec<(LeaseId, Duration)>,
    pub(super) ended: Vec<LeaseId>,
}

impl Inner {
    /// Runs `f` in one write transaction, commits, then publishes its events and lease changes,
    /// all under the write lock so watchers and `subscribe` see one order. If `f` fails nothing
    /// is committed.
    pub(super) fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.db.begin_write().map_err(|e| self.backend(e))?;
        let revision = meta(&txn, REVISION).map_err(|e| self.backend(e))?;
        let mut tx = Tx {
            inner: self,
            txn,
            revision,
            events: Vec::new(),
            granted: Vec::new(),
            ended: Vec::new(),
        };
        let out = match f(&mut tx) {
            Ok(out) => out,
            Err(e) => {
                let _ = tx.txn.abort();
                return Err(e);
            }
        };
        let Tx {
            txn,
            revision: new_revision,
            events,
            granted,
            ended,
            ..
        } = tx;
        if new_revision != revision {
            self.finish(&txn, new_revision)
                .map_err(|e| self.backend(e))?;
        }
        txn.commit().map_err(|e| self.backend(e))?;
        {
            let mut leases = self.leases();
            for (id, ttl) in granted {
                leases.grant(id, ttl);
            }
            for id in ended {
                leases.remove(id);
            }
        }
        if !events.is_empty() {
            // One message per transaction, so a watcher gets a batch's events together. No
            // receivers is fine: nobody is watching.
            let _ = self.events.send(std::sync::Arc::new(events));
        }
        Ok(out)
    }

    /// Stores the new revision and drops history beyond the retention bound.
    fn finish(&self, txn: &WriteTransaction, revision: Revision) -> Result<(), redb::Error> {
        let mut meta_t = txn.open_table(META)?;
        meta_t.insert(REVISION, revision)?;
        let compacted = meta_t.get(COMPACTED)?.map(|v| v.value()).unwrap_or(0);
        let cutoff = revision.saturating_sub(self.options.retained_events.max(1));
        if cutoff > compacted {
            meta_t.insert(COMPACTED, cutoff)?;
            txn.open_table(EVENTS)?.retain_in(..=cutoff, |_, _| false)?;
        }
        Ok(())
    }

    pub(super) fn compact(&self, revision: Revision) -> Result<()> {
        self.write(|tx| {
            let current = tx.revision;
            if revision > current {
                return Err(StoreError::Backend {
                    store: tx.inner.name.clone(),
                    detail: format!(
                        "cannot compact to revision {revision}: the store is at {current}"
                    ),
                });
            }
            let run = || -> Result<(), redb::Error> {
                let mut meta_t = tx.txn.open_table(META)?;
                let compacted = meta_t.get(COMPACTED)?.map(|v| v.value()).unwrap_or(0);
                if revision > compacted {
                    meta_t.insert(COMPACTED, revision)?;
                    tx.txn
                        .open_table(EVENTS)?
                        .retain_in(..=revision, |_, _| false)?;
                }
                Ok(())
            };
            run().map_err(|e| tx.inner.backend(e))
        })
    }

    /// Creates the tables (a no-op once they exist) and returns the persisted leases.
    pub(super) fn init(&self) -> Result<Vec<(LeaseId, Duration)>> {
        let run = || -> Result<Vec<(LeaseId, Duration)>, redb::Error> {
            let txn = self.db.begin_write()?;
            txn.open_table(RESOURCES)?;
            txn.open_table(EVENTS)?;
            txn.open_table(META)?;
            txn.open_multimap_table(LEASE_KEYS)?;
            txn.open_table(RECEIPTS)?;
            let mut leases = Vec::new();
            for row in txn.open_table(LEASES)?.iter()? {
                let (id, ttl) = row?;
                leases.push((LeaseId(id.value()), Duration::from_secs(ttl.value())));
            }
            txn.commit()?;
            Ok(leases)
        };
        run().map_err(|e| self.backend(e))
    }
}

impl Tx<'_> {
    /// The current version and lease of `key`, if it exists (the value is not decoded).
    pub(super) fn head(&self, key: &ResourceKey) -> Result<Option<(Revision, Option<LeaseId>)>> {
        let run = || -> Result<Option<(Revision, i64)>, redb::Error> {
            let table = self.txn.open_table(RESOURCES)?;
            let key_s = key.to_string();
            let v = table.get(key_s.as_str())?;
            Ok(v.and_then(|v| v.value().first_chunk::<HEADER>().map(split_header)))
        };
        let head = run().map_err(|e| self.inner.backend(e))?;
        Ok(head.map(|(version, lease)| (version, (lease != 0).then_some(LeaseId(lease)))))
    }

    /// Writes `resource` (already validated and encoded as `json`) at the next revision.
    pub(super) fn put(
        &mut self,
        key: &ResourceKey,
        resource: &trellis_api::Resource,
        json: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Stored> {
        let old_lease = self.head(key)?.and_then(|(_, l)| l);
        let revision = self.revision + 1;
        let key_s = key.to_string();
        let lease_raw = lease.map_or(0, |l| l.0);
        let run = || -> Result<(), redb::Error> {
            let mut record = Vec::with_capacity(HEADER + json.len());
            record.extend_from_slice(&revision.to_be_bytes());
            record.extend_from_slice(&lease_raw.to_be_bytes());
            record.extend_from_slice(json);
            self.txn
                .open_table(RESOURCES)?
                .insert(key_s.as_str(), record.as_slice())?;
            self.relink(&key_s, old_lease, lease)?;
            let event = event_bytes(0, lease_raw, &key_s, json);
            self.txn
                .open_table(EVENTS)?
                .insert(revision, event.as_slice())?;
            Ok(())
        };
        run().map_err(|e| self.inner.backend(e))?;
        self.revision = revision;
        let stored = Stored {
            resource: resource.clone(),
            version: revision,
            lease,
        };
        self.events.push(WatchEvent::Put(stored.clone()));
        Ok(stored)
    }

    /// Writes every resource (validated and encoded) at one new revision, with one event-log
    /// entry, and queues their events to be published together. Detaches them from any lease.
    pub(super) fn put_batch(
        &mut self,
        items: &[(ResourceKey, trellis_api::Resource, Vec<u8>)],
    ) -> Result<Revision> {
        if items.is_empty() {
            return Ok(self.revision);
        }
        let revision = self.revision + 1;
        let mut log = vec![2u8];
        log.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_be_bytes());
        for (key, resource, json) in items {
            let old_lease = self.head(key)?.and_then(|(_, l)| l);
            let key_s = key.to_string();
            let run = || -> Result<(), redb::Error> {
                let mut record = Vec::with_capacity(HEADER + json.len());
                record.extend_from_slice(&revision.to_be_bytes());
                record.extend_from_slice(&0i64.to_be_bytes());
                record.extend_from_slice(json);
                self.txn
                    .open_table(RESOURCES)?
                    .insert(key_s.as_str(), record.as_slice())?;
                self.relink(&key_s, old_lease, None)
            };
            run().map_err(|e| self.inner.backend(e))?;
            let event = event_bytes(0, 0, &key_s, json);
            log.extend_from_slice(&u32::try_from(event.len()).unwrap_or(u32::MAX).to_be_bytes());
            log.extend_from_slice(&event);
            self.events.push(WatchEvent::Put(Stored {
                resource: resource.clone(),
                version: revision,
                lease: None,
            }));
        }
        let run = || -> Result<(), redb::Error> {
            self.txn
                .open_table(EVENTS)?
                .insert(revision, log.as_slice())?;
            Ok(())
        };
        run().map_err(|e| self.inner.backend(e))?;
        self.revision = revision;
        Ok(revision)
    }

    /// A kept receipt: its revision and answer (expired ones are not returned).
    pub(super) fn receipt(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>> {
        let run = || -> Result<Option<Vec<u8>>, redb::Error> {
            let table = self.txn.open_table(RECEIPTS)?;
            let v = table.get(id)?;
            Ok(v.map(|v| v.value().to_vec()))
        };
        let raw = run().map_err(|e| self.inner.backend(e))?;
        Ok(raw.and_then(|raw| live_receipt(&raw, unix_now())))
    }

    /// Keeps a receipt for this transaction's revision and drops expired ones.
    pub(super) fn put_receipt(&mut self, id: &str, body: &[u8]) -> Result<()> {
        let now = unix_now();
        let revision = self.revision;
        let run = || -> Result<(), redb::Error> {
            let mut table = self.txn.open_table(RECEIPTS)?;
            table.retain(|_, v| live_receipt(v, now).is_some())?;
            let mut record = Vec::with_capacity(16 + body.len());
            record.extend_from_slice(&revision.to_be_bytes());
            record.extend_from_slice(&now.to_be_bytes());
            record.extend_from_slice(body);
            table.insert(id, record.as_slice())?;
            Ok(())
        };
        run().map_err(|e| self.inner.backend(e))
    }

    /// Deletes `key` at the next revision; `None` if it did not exist.
    pub(super) fn delete(&mut self, key: &ResourceKey) -> Result<Option<Revision>> {
        let Some((_, old_lease)) = self.head(key)? else {
            return Ok(None);
        };
        let revision = self.revision + 1;
        let key_s = key.to_string();
        let run = || -> Result<(), redb::Error> {
            self.txn.open_table(RESOURCES)?.remove(key_s.as_str())?;
            self.relink(&key_s, old_lease, None)?;
            let event = event_bytes(1, 0, &key_s, &[]);
            self.txn
                .open_table(EVENTS)?
                .insert(revision, event.as_slice())?;
            Ok(())
        };
        run().map_err(|e| self.inner.backend(e))?;
        self.revision = revision;
        self.events.push(WatchEvent::Delete {
            key: key.clone(),
            revision,
        });
        Ok(Some(revision))
    }

    fn relink(
        &self,
        key: &str,
        old: Option<LeaseId>,
        new: Option<LeaseId>,
    ) -> Result<(), redb::Error> {
        if old == new {
            return Ok(());
        }
        let mut links = self.txn.open_multimap_table(LEASE_KEYS)?;
        if let Some(old) = old {
            links.remove(old.0, key)?;
        }
        if let Some(new) = new {
            links.insert(new.0, key)?;
        }
        Ok(())
    }

    /// Records a new lease and returns its id.
    pub(super) fn grant(&mut self, ttl: Duration) -> Result<LeaseId> {
        let run = || -> Result<i64, redb::Error> {
            let mut meta_t = self.txn.open_table(META)?;
            let id = meta_t.get(NEXT_LEASE)?.map(|v| v.value()).unwrap_or(1);
            meta_t.insert(NEXT_LEASE, id + 1)?;
            let id = i64::try_from(id).unwrap_or(i64::MAX);
            self.txn.open_table(LEASES)?.insert(id, ttl.as_secs())?;
            Ok(id)
        };
        let id = LeaseId(run().map_err(|e| self.inner.backend(e))?);
        self.granted.push((id, ttl));
        Ok(id)
    }

    /// Ends a lease, deleting every resource under it; false if there was no such lease.
    pub(super) fn end_lease(&mut self, lease: LeaseId) -> Result<bool> {
        let run = || -> Result<(bool, Vec<String>), redb::Error> {
            let existed = self.txn.open_table(LEASES)?.remove(lease.0)?.is_some();
            let mut keys = Vec::new();
            for k in self
                .txn
                .open_multimap_table(LEASE_KEYS)?
                .remove_all(lease.0)?
            {
                keys.push(k?.value().to_string());
            }
            Ok((existed, keys))
        };
        let (existed, keys) = run().map_err(|e| self.inner.backend(e))?;
        for k in keys {
            // The link table no longer holds this lease, so `delete` has nothing to unlink.
            let key = parse_key(&self.inner.name, &k)?;
            self.delete(&key)?;
        }
        self.ended.push(lease);
        Ok(existed)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A receipt record's revision and answer, unless it is malformed or older than the TTL.
fn live_receipt(raw: &[u8], now: u64) -> Option<(Revision, Vec<u8>)> {
    let (revision, rest) = raw.split_first_chunk::<8>()?;
    let (written, body) = rest.split_first_chunk::<8>()?;
    let age = now.saturating_sub(u64::from_be_bytes(*written));
    (age < RECEIPT_TTL.as_secs()).then(|| (u64::from_be_bytes(*revision), body.to_vec()))
}

pub(super) fn split_header(header: &[u8; HEADER]) -> (Revision, i64) {
    let (version, lease) = header.split_at(8);
    let mut v = [0u8; 8];
    let mut l = [0u8; 8];
    v.copy_from_slice(version);
    l.copy_from_slice(lease);
    (u64::from_be_bytes(v), i64::from_be_bytes(l))
}

fn event_bytes(tag: u8, lease: i64, key: &str, json: &[u8]) -> Vec<u8> {
    // Keys are kind/DNS label/DNS label, far below u16::MAX; saturate rather than panic.
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(11 + key.len() + json.len());
    out.push(tag);
    out.extend_from_slice(&lease.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&key.as_bytes()[..usize::from(len)]);
    out.extend_from_slice(json);
    out
}

fn meta(txn: &WriteTransaction, name: &str) -> Result<u64, redb::Error> {
    Ok(txn
        .open_table(META)?
        .get(name)?
        .map(|v| v.value())
        .unwrap_or(0))
}

#[cfg(test)]
pub(super) fn put_raw(inner: &Inner, key: &str, bytes: &[u8]) -> Result<(), redb::Error> {
    let txn = inner.db.begin_write()?;
    txn.open_table(RESOURCES)?.insert(key, bytes)?;
    txn.commit()?;
    Ok(())
}
