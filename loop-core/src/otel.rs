//! The application's OpenTelemetry span at `create_task`, so task spans can join
//! the application's trace (issue 6).
//!
//! Read only while OTLP traces are exported ([`capturing`]) and only when the
//! application already imported `opentelemetry.trace` (we never import it): then
//! `opentelemetry.trace.get_current_span()` in the task's context — the context
//! `create_task` was given, or the creator's, which the task's copy starts from.
//! The public API rather than OpenTelemetry's context variable, because
//! `OTEL_PYTHON_CONTEXT` can swap the runtime context for another implementation.
//!
//! Cost per `create_task` (callgrind, CPython 3.11): with export off, one relaxed
//! load; with export on and no OpenTelemetry in the process, ~160 instructions (the
//! `sys.modules` lookup); with OpenTelemetry and a current span, ~9,500, nearly all
//! in OpenTelemetry's own `get_current_span()` and the span context's properties.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set while OTLP traces are exported by this process.
static CAPTURING: AtomicBool = AtomicBool::new(false);

#[inline]
pub fn capturing() -> bool {
    CAPTURING.load(Ordering::Relaxed)
}

pub fn set_capturing(on: bool) {
    CAPTURING.store(on, Ordering::Relaxed);
}

/// An OpenTelemetry span context (W3C ids and flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppSpan {
    pub trace_id: u128,
    pub span_id: u64,
    /// W3C trace flags; bit 0 = sampled.
    pub flags: u8,
}

impl AppSpan {
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

/// The application's current span in `context` (the current context when None),
/// if the application uses OpenTelemetry and a valid span is current there.
/// Never raises: whatever goes wrong means "no span". Kept out of line: it is
/// `create_task`'s rare branch (and callgrind can count it by name).
#[inline(never)]
pub fn current_span(py: Python<'_>, context: Option<&Bound<'_, PyAny>>) -> Option<AppSpan> {
    // SAFETY: PyImport_GetModuleDict returns a borrowed reference to the
    // interpreter's sys.modules dict, which lives as long as the interpreter; the GIL is held.
    let modules = unsafe { Bound::from_borrowed_ptr(py, pyo3::ffi::PyImport_GetModuleDict()) };
    let modules = modules.cast_into::<PyDict>().ok()?;
    let trace = modules.get_item(pyo3::intern!(py, "opentelemetry.trace")).ok()??;
    read(py, &trace, context).unwrap_or(None)
}

fn read(py: Python<'_>, trace: &Bound<'_, PyAny>, context: Option<&Bound<'_, PyAny>>) -> PyResult<Option<AppSpan>> {
    let get = trace.getattr(pyo3::intern!(py, "get_current_span"))?;
    let span = match context {
        Some(c) => c.call_method1(pyo3::intern!(py, "run"), (get,))?,
        None => get.call0()?,
    };
    let sc = span.call_method0(pyo3::intern!(py, "get_span_context"))?;
    if !sc.getattr(pyo3::intern!(py, "is_valid"))?.is_truthy()? {
        return Ok(None);
    }
    Ok(Some(AppSpan {
        trace_id: sc.getattr(pyo3::intern!(py, "trace_id"))?.extract()?,
        span_id: sc.getattr(pyo3::intern!(py, "span_id"))?.extract()?,
        flags: sc.getattr(pyo3::intern!(py, "trace_flags"))?.extract::<u64>()? as u8,
    }))
}
