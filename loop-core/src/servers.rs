//! The server table: every asyncio `Server` made by `create_server` and
//! `create_unix_server` (so also by `start_server`/`start_unix_server`).
//!
//! Cheap by construction: a server is added once; `accepted` is counted where
//! asyncio hands an accepted socket to `_make_socket_transport(..., server=...)`,
//! `refused` where an `accept()` fails; connections open now, the listening state
//! and the names are read from the `Server` itself when the table is built (at
//! the inspector's table rate, or when asked).
//!
//! Bounds: the table holds weak references; an entry goes when its server is
//! garbage-collected (pruned when the table is read or grows past `prune_at`).

use inspector::TransportKind;
use pyo3::prelude::*;
use rustc_hash::FxHashMap as HashMap;

pub struct ServerEntry {
    pub id: u64,
    /// `weakref.ref(server)`: the table must not keep servers alive.
    pub weak: Py<PyAny>,
    pub kind: TransportKind,
    pub tls: bool,
    pub addresses: Vec<String>,
    pub protocol_factory: String,
    pub created_unix_ms: u64,
    pub accepted: u64,
    pub refused: u64,
}

impl ServerEntry {
    /// Whether this entry is for the live object at `addr` (and not for a collected
    /// server whose address was reused).
    fn is(&self, py: Python<'_>, addr: usize) -> bool {
        crate::tasks::referent(py, &self.weak).is_some_and(|s| s.as_ptr() as usize == addr)
    }

    fn is_dead(&self, py: Python<'_>) -> bool {
        crate::tasks::referent(py, &self.weak).is_none()
    }
}

#[derive(Default)]
pub struct Servers {
    by_addr: HashMap<usize, ServerEntry>,
    next_id: u64,
    prune_at: usize,
}

impl Servers {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a server; returns entries that had to go (a reused address, collected servers).
    pub fn insert(&mut self, py: Python<'_>, addr: usize, entry: ServerEntry) -> Vec<ServerEntry> {
        let mut gone: Vec<ServerEntry> = self.by_addr.insert(addr, entry).into_iter().collect();
        if self.by_addr.len() >= self.prune_at.max(64) {
            gone.extend(self.prune(py));
            self.prune_at = self.by_addr.len() * 2;
        }
        gone
    }

    /// Drops entries whose server was garbage-collected; returns them (to drop
    /// outside the loop state).
    pub fn prune(&mut self, py: Python<'_>) -> Vec<ServerEntry> {
        let dead: Vec<usize> = self.by_addr.iter().filter(|(_, e)| e.is_dead(py)).map(|(k, _)| *k).collect();
        dead.into_iter().filter_map(|k| self.by_addr.remove(&k)).collect()
    }

    /// The entry of the live server at `addr`, if it is in the table.
    #[inline]
    pub fn get_mut(&mut self, py: Python<'_>, addr: usize) -> Option<&mut ServerEntry> {
        self.by_addr.get_mut(&addr).filter(|e| e.is(py, addr))
    }

    pub fn entries(&self) -> impl Iterator<Item = &ServerEntry> {
        self.by_addr.values()
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for e in self.by_addr.values() {
            visit.call(&e.weak)?;
        }
        Ok(())
    }
}
