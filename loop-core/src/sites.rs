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

#[derive(Default)]
pub struct Sites {
    sites: HashMap<usize, Site>,
    other: SiteStats,
}

/// Where a site's code lives, as the JSON API and dashboard show it.
pub struct SiteName {
    pub qualname: String,
    pub file: String,
    pub line: u32,
}

impl Sites {
    /// Records a run at a site seen for the first time (after `record_known` said no).
    pub fn record_new(&mut self, addr: usize, owner: SiteOwner, ns: u64) -> Option<SiteOwner> {
        if let Some(site) = self.sites.get_mut(&addr) {
            site.stats.add(ns);
            return Some(owner);
        }
        if self.sites.len() >= MAX_SITES {
            self.other.add(ns);
            return Some(owner);
        }
        let mut stats = SiteStats::default();
        stats.add(ns);
        self.sites.insert(addr, Site { owner, stats });
        None
    }

    pub fn is_full(&self) -> bool {
        self.sites.len() >= MAX_SITES
    }

    /// A site already known by address: no object needed.
    #[inline]
    pub fn record_known(&mut self, addr: usize, ns: u64) -> bool {
        match self.sites.get_mut(&addr) {
            Some(site) => {
                site.stats.add(ns);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// The `limit` heaviest sites by `order` ("total", "count" or "max"), with their owners.
    pub fn top(&self, py: Python<'_>, order: &str, limit: usize) -> Vec<(usize, SiteOwner, SiteStats)> {
        let mut all: Vec<(usize, &Site, u64)> = self
            .sites
            .iter()
            .map(|(addr, s)| {
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
