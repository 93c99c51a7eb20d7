//! glassloop's core: an asyncio event loop on mio, as a Python extension module.

mod clock;
mod event_loop;
mod gil_cell;
mod handles;
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
    Ok(())
}
