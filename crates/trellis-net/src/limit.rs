//! A connection cap that sheds the connections least likely to matter instead of refusing the
//! newcomer.
//!
//! Why: a cap that refuses new connections once full is exactly what a slowloris attacker
//! wants: open N connections that never finish a request, and nobody else gets in. So every
//! admitted connection is in one of three phases, and when the cap is reached the limiter frees
//! a place by closing, in this order:
//!
//! 1. the oldest **pending** connection: admitted but no complete request head yet (a slowloris
//!    connection is always pending; a real client sends its head right after connecting, so it
//!    is pending only briefly and is never the oldest for long);
//! 2. else the longest **idle** connection: it has served requests but has none in flight (a
//!    keep-alive connection between requests, or an HTTP/2 connection without streams);
//! 3. never an **active** connection, one with a request in flight. A long-lived gRPC stream
//!    (xDS) is a request in flight for its whole life, so no cap pressure ever cuts it.
//!
//! Only when every admitted connection is active is the newcomer refused. A shed connection
//! keeps counting until its task has dropped it (its descriptor is closed then), but it is not
//! shed twice and does not make the limiter shed another one for the same place. Since a shed
//! connection still holds its descriptor until its task runs, the accept loop waits
//! ([`ConnLimiter::room`]) while more than a few (a 32nd of the cap, 4 to 64) are on their way
//! out: accepting faster than the shed tasks close would run the process out of descriptors.
//!
//! The phases also drive the timeouts in [`crate::http`]: a pending connection is closed once
//! the header-read timeout passes, an idle one after the idle timeout, an active one never.
use crate::throttle::LogThrottle;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Where a connection stands, as the limiter and the timeouts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Admitted; no complete request head yet. Sheddable first; header-read timeout applies.
    Pending,
    /// At least one request in flight. Never shed, never timed out as idle.
    Active,
    /// Served requests, none in flight since the instant given. Sheddable after pending ones.
    Idle(Instant),
}

/// What the limiter has done so far (for logs, metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Connections admitted and not yet dropped (shed ones included until they are dropped).
    pub open: usize,
    pub pending: usize,
    pub idle: usize,
    pub active: usize,
    /// Connections closed to make room, since start.
    pub shed: u64,
    /// Newcomers refused because every admitted connection was active, since start.
    pub refused: u64,
}

/// A cap on concurrent connections for one port. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ConnLimiter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    /// Shed connections still open beyond which [`ConnLimiter::room`] waits.
    max_shedding: usize,
    /// Woken when a shed connection is dropped.
    room: Notify,
    /// Names the port in log lines.
    what: &'static str,
    state: Mutex<State>,
    log: LogThrottle,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    /// Shed but not yet dropped: still open, but their place is already given away.
    shedding: usize,
    next_seq: u64,
    /// Pending connections by admission order (oldest first).
    pending: BTreeMap<u64, Arc<Signal>>,
    /// Idle connections by the order they went idle (longest idle first).
    idle: BTreeMap<u64, Arc<Signal>>,
    active: usize,
    shed: u64,
    refused: u64,
}

impl State {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Closes the oldest pending connection, else the longest idle one; false when every
    /// connection is active.
    fn shed_one(&mut self) -> bool {
        let victim = match self.pending.pop_first() {
            Some((_, s)) => s,
            None => match self.idle.pop_first() {
                Some((_, s)) => s,
                None => return false,
            },
        };
        victim.shed.store(true, Ordering::Release);
        victim.notify.notify_one();
        self.shedding += 1;
        self.shed += 1;
        true
    }
}

#[derive(Debug, Default)]
struct Signal {
    shed: AtomicBool,
    notify: Notify,
}

/// Where one slot stands; only changed under the limiter's lock.
#[derive(Debug, Clone, Copy)]
enum SlotPhase {
    Pending(u64),
    Active(usize),
    Idle(u64, Instant),
}

/// What [`ConnLimiter::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    Admitted(ConnSlot),
    /// Every admitted connection has a request in flight; close the newcomer.
    Refused,
}

impl ConnLimiter {
    /// At most `max` connections (at least 1) on the port `what` names in log lines.
    pub fn new(max: usize, what: &'static str) -> Self {
        let max = max.max(1);
        Self {
            shared: Arc::new(Shared {
                max,
                max_shedding: (max / 32).clamp(4, 64),
                room: Notify::new(),
                what,
                state: Mutex::new(State::default()),
                log: LogThrottle::per_second(),
            }),
        }
    }

    pub fn max(&self) -> usize {
        self.shared.max
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Resolves when admitting one more connection would not push the shed-but-still-open
    /// connections past their bound; the accept loop awaits it before each accept.
    pub async fn room(&self) {
        loop {
            let notified = self.shared.room.notified();
            {
                let st = self.lock();
                if st.open - st.shedding < self.shared.max || st.shedding < self.shared.max_shedding
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Admits a newly accepted connection, shedding an older one when the cap is reached.
    pub fn admit(&self, peer: SocketAddr) -> Admission {
        let mut st = self.lock();
        let mut shed = false;
        if st.open - st.shedding >= self.shared.max {
            if !st.shed_one() {
                st.refused += 1;
                let refused = st.refused;
                drop(st);
                if let Some(suppressed) = self.shared.log.allow() {
                    tracing::warn!(
                        port = self.shared.what,
                        %peer,
                        max = self.shared.max,
                        refused_total = refused,
                        suppressed,
                        "connection cap reached with every connection busy; refused a new one"
                    );
                }
                return Admission::Refused;
            }
            shed = true;
        }
        let seq = st.seq();
        let signal = Arc::new(Signal::default());
        st.pending.insert(seq, signal.clone());
        st.open += 1;
        let total_shed = st.shed;
        drop(st);
        if shed {
            if let Some(suppressed) = self.shared.log.allow() {
                tracing::warn!(
                    port = self.shared.what,
                    max = self.shared.max,
                    shed_total = total_shed,
                    suppressed,
                    "connection cap reached; closed the oldest connection that was not serving a request"
                );
            }
        }
        Admission::Admitted(ConnSlot {
            inner: Arc::new(SlotInner {
                shared: self.shared.clone(),
                signal,
                phase: Mutex::new(SlotPhase::Pending(seq)),
                admitted: Instant::now(),
            }),
        })
    }

    /// Sheds one connection (oldest pending, else longest idle) to free a descriptor, as the
    /// accept loop does when the process runs out of them. False when nothing could be shed.
    pub fn shed_one(&self) -> bool {
        self.lock().shed_one()
    }

    pub fn stats(&self) -> LimiterStats {
        let st = self.lock();
        LimiterStats {
            open: st.open,
            pending: st.pending.len(),
            idle: st.idle.len(),
            active: st.active,
            shed: st.shed,
            refused: st.refused,
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every update is a few field writes.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One admitted connection's place under the cap; the place is given back when the slot and
/// every [`RequestGuard`] taken from it are dropped. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ConnSlot {
    inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    shared: Arc<Shared>,
    signal: Arc<Signal>,
    phase: Mutex<SlotPhase>,
    admitted: Instant,
}

impl SlotInner {
    fn phase(&self) -> MutexGuard<'_, SlotPhase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        match *self.phase() {
            SlotPhase::Pending(seq) => {
                st.pending.remove(&seq);
            }
            SlotPhase::Idle(seq, _) => {
                st.idle.remove(&seq);
            }
            // Guards hold the slot alive, so an active slot cannot be dropped; kept total.
            SlotPhase::Active(_) => st.active = st.active.saturating_sub(1),
        }
        st.open -= 1;
        if self.signal.shed.load(Ordering::Acquire) {
            st.shedding -= 1;
            self.shared.room.notify_one();
        }
    }
}

impl ConnSlot {
    /// When the connection was admitted (the header-read timeout counts from here).
    pub fn admitted(&self) -> Instant {
        self.inner.admitted
    }

    pub fn phase(&self) -> Phase {
        match *self.inner.phase() {
            SlotPhase::Pending(_) => Phase::Pending,
            SlotPhase::Active(_) => Phase::Active,
            SlotPhase::Idle(_, since) => Phase::Idle(since),
        }
    }

    /// Whether the limiter chose this connection to close.
    pub fn is_shed(&self) -> bool {
        self.inner.signal.shed.load(Ordering::Acquire)
    }

    /// Resolves once the limiter sheds this connection; the owner then drops it.
    pub async fn shed(&self) {
        loop {
            let notified = self.inner.signal.notify.notified();
            if self.is_shed() {
                return;
            }
            notified.await;
        }
    }

    /// A request head arrived: the connection is active until the guard (and any other) is
    /// dropped, which should be when its response has been sent.
    pub fn request_started(&self) -> RequestGuard {
        let mut st = lock(&self.inner.shared);
        let mut phase = self.inner.phase();
        *phase = match *phase {
            SlotPhase::Pending(seq) => {
                st.pending.remove(&seq);
                st.active += 1;
                SlotPhase::Active(1)
            }
            SlotPhase::Idle(seq, _) => {
                st.idle.remove(&seq);
                st.active += 1;
                SlotPhase::Active(1)
            }
            SlotPhase::Active(n) => SlotPhase::Active(n + 1),
        };
        RequestGuard {
            slot: self.inner.clone(),
        }
    }
}

/// Held while a request is in flight on a connection (see [`ConnSlot::request_started`]).
#[derive(Debug)]
pub struct RequestGuard {
    slot: Arc<SlotInner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.slot.shared);
        let mut phase = self.slot.phase();
        if let SlotPhase::Active(n) = *phase {
            *phase = if n > 1 {
                SlotPhase::Active(n - 1)
            } else {
                st.active -= 1;
                let seq = st.seq();
                // A shed connection is on its way out: it must not be offered for shedding again.
                if !self.slot.signal.shed.load(Ordering::Acquire) {
                    st.idle.insert(seq, self.slot.signal.clone());
                }
                SlotPhase::Idle(seq, Instant::now())
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn admit(l: &ConnLimiter) -> ConnSlot {
        match l.admit(peer()) {
            Admission::Admitted(s) => s,
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn sheds_the_oldest_pending_connection_not_the_newcomer() {
        let l = ConnLimiter::new(3, "test");
        let a = admit(&l);
        let b = admit(&l);
        let c = admit(&l);
        let d = admit(&l);
        assert!(a.is_shed(), "the oldest pending one makes room");
        assert!(!b.is_shed() && !c.is_shed() && !d.is_shed());
        // `a` still holds its descriptor, but its place is taken: the next newcomer sheds `b`.
        assert_eq!(l.stats().open, 4);
        let e = admit(&l);
        assert!(b.is_shed() && !c.is_shed());
        a.shed().await; // resolves at once: it was shed
        drop((a, b));
        let st = l.stats();
        assert_eq!((st.open, st.pending, st.shed), (3, 3, 2));
        drop((c, d, e));
        assert_eq!(l.stats().open, 0);
    }

    #[test]
    fn sheds_idle_before_refusing_and_never_sheds_active() {
        let l = ConnLimiter::new(2, "test");
        let stream = admit(&l);
        let xds = stream.request_started(); // a long-lived stream: active for good
        let keepalive = admit(&l);
        drop(keepalive.request_started()); // served one request; now idle
        assert!(matches!(keepalive.phase(), Phase::Idle(_)));
        let newcomer = admit(&l);
        assert!(keepalive.is_shed(), "the idle connection made room");
        assert!(!stream.is_shed());
        let _busy = newcomer.request_started();
        drop(keepalive);
        // Both remaining connections are active: nothing may be shed, the newcomer is refused.
        assert!(matches!(l.admit(peer()), Admission::Refused));
        assert!(!stream.is_shed() && !newcomer.is_shed());
        let st = l.stats();
        assert_eq!((st.open, st.active, st.refused), (2, 2, 1));
        drop(xds);
        assert!(matches!(stream.phase(), Phase::Idle(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_waits_while_too_many_shed_connections_are_still_open() {
        let l = ConnLimiter::new(4, "test"); // at most 4 shed-but-open connections
        let mut slots: Vec<_> = (0..8).map(|_| admit(&l)).collect();
        assert_eq!(
            l.stats().open,
            8,
            "4 admitted, then 4 more shedding the first 4"
        );
        let wait = tokio::time::timeout(std::time::Duration::from_secs(1), l.room()).await;
        assert!(wait.is_err(), "no room until a shed connection is gone");
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(slots[0].is_shed());
        slots.remove(0);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("room once one of them closed")
            .unwrap();
    }

    #[test]
    fn a_slot_lives_until_its_requests_end() {
        let l = ConnLimiter::new(10, "test");
        let slot = admit(&l);
        let g1 = slot.request_started();
        let g2 = slot.clone().request_started();
        drop(slot);
        assert_eq!(l.stats().open, 1, "in-flight requests keep the slot");
        drop(g1);
        assert_eq!(l.stats().active, 1);
        drop(g2);
        assert_eq!(l.stats(), LimiterStats::default());
    }

    #[tokio::test]
    async fn shed_wakes_the_owner() {
        let l = ConnLimiter::new(1, "test");
        let a = admit(&l);
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.shed().await })
        };
        tokio::task::yield_now().await;
        let _b = admit(&l);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(
            l.shed_one(),
            "b is pending and can be shed to free a descriptor"
        );
        assert!(!l.shed_one(), "a and b are both shed already");
    }
}
