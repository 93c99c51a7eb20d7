//! glassloop's core: an asyncio event loop on mio, as a Python extension module.

mod clock;
mod event_loop;
mod gil_cell;
mod handles;
mod inspect;
mod reactor;
mod sites;
mod slow;
mod tasks;
mod stdlib;
mod timers;
mod transports;

use pyo3::prelude::*;

/// The module is GIL-bound on purpose: `GilCell` relies on the GIL to serialize
/// access to loop state (see gil_cell.rs).
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transports::StreamTransport>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(start_inspector, m)?)?;
    Ok(())
}

/// Starts the process's inspector sidecar (once; later calls return the same URL).
///
/// `address` and `token` default to `GLASSLOOP_INSPECT` / `GLASSLOOP_TOKEN`.
/// Raises OSError for a busy port, ValueError for a bad address or a missing token.
#[pyfunction]
#[pyo3(signature = (address = None, token = None, stall_threshold = None))]
fn start_inspector(py: Python<'_>, address: Option<String>, token: Option<String>, stall_threshold: Option<f64>) -> PyResult<String> {
    let mut config = inspector::Config::from_env();
    if let Some(a) = address {
        config.address = a;
    }
    if token.is_some() {
        config.token = token;
    }
    if let Some(s) = stall_threshold {
        config.stall_threshold = std::time::Duration::from_secs_f64(s.max(0.001));
    }
    match py.detach(|| inspect::start(config)) {
        Ok(info) => Ok(info.url),
        Err(e @ inspector::Error::AddressInUse { .. }) => Err(pyo3::exceptions::PyOSError::new_err((libc::EADDRINUSE, e.to_string()))),
        Err(e) => Err(pyo3::exceptions::PyValueError::new_err(e.to_string())),
    }
}
