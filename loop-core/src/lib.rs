//! glassloop's core: an asyncio event loop on mio, as a Python extension module.

mod clock;
mod event_loop;
mod fastcall;
mod gil_cell;
mod handles;
mod inspect;
mod otel;
mod pipe;
mod reactor;
mod servers;
mod sites;
mod slow;
mod sock;
mod sys;
mod spare_bytes;
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
    event_loop::install_scheduling_methods(m.py())?;
    handles::install_slots(m.py());
    m.add_class::<transports::StreamTransport>()?;
    m.add_class::<transports::DatagramTransport>()?;
    m.add_function(wrap_pyfunction!(transports::facade::_install_facades, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(start_inspector, m)?)?;
    m.add_function(wrap_pyfunction!(start_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(flush_otlp, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(pipe::_read_pipe, m)?)?;
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

/// Starts OTLP export (once), configured by the standard `OTEL_*` variables;
/// `endpoint` replaces OTEL_EXPORTER_OTLP_ENDPOINT. Returns
/// `(enabled, (protocol, endpoint) for traces, the same for metrics)`.
#[pyfunction]
#[pyo3(signature = (endpoint = None))]
fn start_otlp(py: Python<'_>, endpoint: Option<String>) -> PyResult<(bool, Option<(String, String)>, Option<(String, String)>)> {
    let config = inspector::otlp::OtlpConfig::from_env_with_endpoint(endpoint.as_deref())
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let info = py
        .detach(|| inspect::start_otlp(config))
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    let signal = |s: Option<inspector::otlp::SignalInfo>| s.map(|s| (s.protocol.to_string(), s.endpoint));
    Ok((info.enabled, signal(info.traces), signal(info.metrics)))
}

/// Sends what OTLP export holds, waiting at most `timeout` seconds; True if all went.
#[pyfunction]
#[pyo3(signature = (timeout = 5.0))]
fn flush_otlp(py: Python<'_>, timeout: f64) -> bool {
    let timeout = std::time::Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    py.detach(|| inspector::otlp::flush(timeout))
}

/// Called in the child after os.fork() (registered by glassloop/__init__.py).
#[pyfunction]
fn _after_fork_in_child() {
    inspect::after_fork_in_child();
}
