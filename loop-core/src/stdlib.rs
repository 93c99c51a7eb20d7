//! The few asyncio helpers the core calls at run time (cached once per interpreter).
//!
//! These are on slow paths only: reprs, debug mode, error reporting, and the
//! callback check for callables we cannot classify in Rust.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

macro_rules! cached_attr {
    ($name:ident, $module:literal, $attr:literal) => {
        pub fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
            static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            CELL.get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import($module)?.getattr($attr)?.unbind())
            })
            .map(|obj| obj.bind(py))
        }
    };
}

cached_attr!(format_callback_source, "asyncio.format_helpers", "_format_callback_source");
cached_attr!(extract_stack, "asyncio.format_helpers", "extract_stack");
cached_attr!(format_handle, "asyncio.base_events", "_format_handle");
cached_attr!(asyncio_logger, "asyncio.log", "logger");
cached_attr!(iscoroutine, "asyncio.coroutines", "iscoroutine");
cached_attr!(iscoroutinefunction, "asyncio.coroutines", "iscoroutinefunction");
cached_attr!(server_detach, "glassloop._loop", "_server_detach");
cached_attr!(tracked_rows, "glassloop._tracked", "rows");
cached_attr!(task_type, "asyncio.tasks", "Task");
cached_attr!(buffered_protocol, "asyncio", "BufferedProtocol");
cached_attr!(ssl_protocol, "asyncio.sslproto", "SSLProtocol");
