//! Callback sites: an always-on profile of where the loop spends its time.
//!
//! A site is the code a callback runs: a Python function's code object (so all
//! closures made by one `def` or `lambda` share a site), a task's coroutine code
//! for task steps, a builtin's C function, or a callable's type. Sites are keyed
//! by address and keep their object alive, so the address cannot be reused;
//! names are resolved only when someone reads the profile.

use pyo3::ffi;
use pyo3::prelude::*;
use rustc_hash::FxHashMap as HashMap;

/// At most this many distinct sites are tracked; the rest are summed as "other".
pub const MAX_SITES: usize = 4096;

#[derive(Default, Clone, Copy)]
pub struct SiteStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl SiteStats {
    #[inline]
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns += ns;
        self.max_ns = self.max_ns.max(ns);
    }
}

/// What names a site. Code objects are kept (small, and they hold no user data);
/// for builtins and other callables only the name is kept, so a site never keeps
/// a future or an instance (and whatever hangs off it) alive.
pub enum SiteOwner {
    Code(Py<PyAny>),
    Named(String),
}

struct Site {
    owner: SiteOwner,
    stats: SiteStats,
}

/// Sites by address. A site gets its slot (an index into `sites`) before its
/// first callback runs, so the inspector can be told its name while that callback
/// may still be running (a stall on a site never seen before is still named).
#[derive(Default)]
pub struct Sites {
    index: HashMap<usize, u32>,
    sites: Vec<Site>,
    other: SiteStats,
    /// The last site found, as (address, slot): callbacks come in runs of one site
    /// (a callback chain, a burst, one task's steps), so most lookups skip the hash.
    /// Slots are never reused, so the pair stays true.
    last: std::cell::Cell<Option<(usize, u32)>>,
}

/// Where the loop's site table is full: runs are summed under "other".
pub const OTHER: u32 = u32::MAX;

/// Where a site's code lives, as the JSON API and dashboard show it.
pub struct SiteName {
    pub qualname: String,
    pub file: String,
    pub line: u32,
}

impl SiteName {
    /// `qualname (file:line)`, how stalls and slow callbacks name a site.
    pub fn label(&self) -> String {
        format!("{} ({}:{})", self.qualname, self.file, self.line)
    }
}

impl Sites {
    /// The slot of a site already in the table: one hash lookup, no object needed.
    #[inline]
    pub fn slot(&self, addr: usize) -> Option<u32> {
        match self.last.get() {
            Some((last, slot)) if last == addr => Some(slot),
            _ => {
                let slot = *self.index.get(&addr)?;
                self.last.set(Some((addr, slot)));
                Some(slot)
            }
        }
    }

    /// Adds a site seen for the first time and returns its slot ([`OTHER`] when the
    /// table is full; the owner is then handed back to be dropped outside the state).
    pub fn insert(&mut self, addr: usize, owner: SiteOwner) -> (u32, Option<SiteOwner>) {
        if let Some(slot) = self.slot(addr) {
            return (slot, Some(owner));
        }
        if self.sites.len() >= MAX_SITES {
            return (OTHER, Some(owner));
        }
        let slot = self.sites.len() as u32;
        self.sites.push(Site { owner, stats: SiteStats::default() });
        self.index.insert(addr, slot);
        (slot, None)
    }

    /// Records one run at a slot from [`slot`](Self::slot) or [`insert`](Self::insert).
    #[inline]
    pub fn add(&mut self, slot: u32, ns: u64) {
        match self.sites.get_mut(slot as usize) {
            Some(site) => site.stats.add(ns),
            None => self.other.add(ns),
        }
    }

    pub fn is_full(&self) -> bool {
        self.sites.len() >= MAX_SITES
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Every site's address and owner (to name them all to the inspector when a loop joins it).
    pub fn owners(&self, py: Python<'_>) -> Vec<(usize, SiteOwner)> {
        self.index.iter().map(|(addr, slot)| (*addr, self.sites[*slot as usize].owner.clone_ref(py))).collect()
    }

    /// The `limit` heaviest sites by `order` ("total", "count" or "max"), with their owners.
    pub fn top(&self, py: Python<'_>, order: &str, limit: usize) -> Vec<(usize, SiteOwner, SiteStats)> {
        let mut all: Vec<(usize, &Site, u64)> = self
            .index
            .iter()
            .map(|(addr, slot)| {
                let s = &self.sites[*slot as usize];
                let k = match order {
                    "count" => s.stats.count,
                    "max" => s.stats.max_ns,
                    _ => s.stats.total_ns,
                };
                (*addr, s, k)
            })
            .collect();
        all.sort_unstable_by(|a, b| b.2.cmp(&a.2));
        all.into_iter().take(limit).map(|(addr, s, _)| (addr, s.owner.clone_ref(py), s.stats)).collect()
    }
}

impl SiteOwner {
    pub fn clone_ref(&self, py: Python<'_>) -> SiteOwner {
        match self {
            SiteOwner::Code(code) => SiteOwner::Code(code.clone_ref(py)),
            SiteOwner::Named(name) => SiteOwner::Named(name.clone()),
        }
    }

    pub fn describe(&self, py: Python<'_>) -> SiteName {
        match self {
            SiteOwner::Code(code) => describe(code.bind(py)),
            SiteOwner::Named(name) => SiteName { qualname: name.clone(), file: String::new(), line: 0 },
        }
    }
}

/// Finds the site of a callable: `(address, owner)`. Bound methods and
/// `functools.partial` are unwrapped to the function they call.
pub fn site_of<'py>(callable: &Bound<'py, PyAny>) -> (usize, Option<Bound<'py, PyAny>>) {
    let ptr = callable.as_ptr();
    // SAFETY: a type check and a borrowed-field read on a live object, GIL held.
    unsafe {
        if ffi::PyFunction_Check(ptr) != 0 {
            // The commonest callback: no clone, no unwrapping.
            let code = ffi::PyFunction_GetCode(ptr);
            return (code as usize, Some(Bound::from_borrowed_ptr(callable.py(), code)));
        }
    }
    let mut obj = callable.clone();
    for _ in 0..4 {
        let ptr = obj.as_ptr();
        // SAFETY: type checks and borrowed-field reads on a live object, GIL held.
        unsafe {
            if ffi::PyFunction_Check(ptr) != 0 {
                let code = ffi::PyFunction_GetCode(ptr);
                return (code as usize, Some(Bound::from_borrowed_ptr(obj.py(), code)));
            }
            if ffi::PyCFunction_Check(ptr) != 0 {
                // One site per C function, whatever object it is bound to.
                let def = (*(ptr as *mut ffi::PyCFunctionObject)).m_ml;
                return (def as usize, None);
            }
        }
        match crate::handles::unwrap_callable(&obj) {
            Some(inner) => obj = inner,
            None => break,
        }
    }
    (obj.get_type().as_ptr() as usize, None)
}

/// The name a non-code site goes by.
pub fn builtin_name(callable: &Bound<'_, PyAny>) -> String {
    let text = |attr: &str| callable.getattr(attr).ok().and_then(|v| v.extract::<String>().ok());
    match (text("__qualname__"), text("__module__")) {
        (Some(q), Some(m)) => format!("{m}.{q}"),
        (Some(q), None) => q,
        _ => callable.get_type().fully_qualified_name().map(|n| n.to_string()).unwrap_or_else(|_| "<callable>".into()),
    }
}

/// Names a site's code object.
pub fn describe(owner: &Bound<'_, PyAny>) -> SiteName {
    let py = owner.py();
    let text = |obj: &Bound<'_, PyAny>, attr: &str| -> Option<String> {
        obj.getattr(attr).ok().and_then(|v| v.extract::<String>().ok())
    };
    // SAFETY: type checks on a live object with the GIL held.
    if unsafe { ffi::PyCode_Check(owner.as_ptr()) } != 0 {
        return SiteName {
            qualname: text(owner, "co_qualname").or_else(|| text(owner, "co_name")).unwrap_or_default(),
            file: text(owner, "co_filename").unwrap_or_default(),
            line: owner.getattr("co_firstlineno").ok().and_then(|v| v.extract().ok()).unwrap_or(0),
        };
    }
    let qualname = text(owner, "__qualname__")
        .or_else(|| text(owner, "__name__"))
        .unwrap_or_else(|| owner.get_type().name().map(|n| n.to_string()).unwrap_or_default());
    let module = text(owner, "__module__");
    let _ = py;
    SiteName { qualname, file: module.map(|m| format!("<{m}>")).unwrap_or_else(|| "<builtin>".into()), line: 0 }
}
