//! Methods called straight by CPython's vectorcall, without PyO3's argument handling.
//!
//! `call_soon` and its siblings run once per callback. PyO3's generic method
//! glue (a fresh tuple for `*args`, a walk over the keyword names, a trampoline
//! that updates thread-locals on the way in and out) cost more than scheduling
//! itself, so these few are plain `METH_FASTCALL | METH_KEYWORDS` functions,
//! installed on the class as method descriptors, the way a C extension defines
//! its methods. They accept and reject exactly what the PyO3 signature
//! `(name, ..., *args, context=None)` did, with the same messages.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::Borrowed;
use std::ffi::CStr;
use std::os::raw::c_char;

/// The C signature of a `METH_FASTCALL | METH_KEYWORDS` method.
pub type Method = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// A method table entry that can live in a `static`: CPython only reads it.
pub struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definition is immutable and its pointers are to 'static data.
unsafe impl Sync for MethodDef {}

impl MethodDef {
    /// `doc` starts with the text signature (`name($self, ...)\n--\n\n`), as
    /// `inspect.signature` reads it from builtins.
    pub const fn new(name: &'static CStr, method: Method, doc: &'static CStr) -> MethodDef {
        MethodDef(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: method },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr() as *const c_char,
        })
    }
}

/// Sets each method on `ty`, replacing what PyO3 defined under the same name.
pub fn install(ty: &Bound<'_, PyType>, defs: &'static [MethodDef]) -> PyResult<()> {
    let py = ty.py();
    for def in defs {
        // SAFETY: `def` is 'static and never written (the cast to *mut is for the C
        // signature only); PyDescr_NewMethod returns a new reference or NULL with an error.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), &def.0 as *const _ as *mut _))?
        };
        // SAFETY: ml_name is a valid C string (from a CStr).
        let name = unsafe { CStr::from_ptr(def.0.ml_name) }.to_str().map_err(|e| PyValueError::new_err(e.to_string()))?;
        ty.setattr(name, descr)?;
    }
    Ok(())
}

/// Runs a method body: the Python error becomes the C convention (NULL with the
/// error set), and a panic becomes a `PanicException` instead of unwinding into C.
///
/// # Safety
/// Call only from a method CPython invoked, so the thread holds the GIL.
#[inline]
pub unsafe fn entry(body: impl FnOnce(Python<'_>) -> PyResult<*mut ffi::PyObject>) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the GIL held (see the function's contract).
    let py = unsafe { Python::assume_attached() };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(py))) {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in a glassloop method".into());
            PanicException::new_err(message).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// A call's arguments, sorted as `(p0, p1, ..., *rest, context=None)`.
pub struct Call<'a, 'py> {
    /// The named parameters (`callback`; or `delay`/`when`, then `callback`).
    pub named: [Borrowed<'a, 'py, PyAny>; 2],
    /// The positional arguments after them: the callback's `*args`.
    pub rest: &'a [*mut ffi::PyObject],
    pub context: Option<Borrowed<'a, 'py, PyAny>>,
}

/// Sorts a vectorcall's arguments for `qualname(params..., *args, context=None)`
/// (`params` are one or two names), raising PyO3's TypeErrors for missing,
/// repeated and unknown arguments.
///
/// # Safety
/// `args`, `nargs` and `kwnames` must be those CPython passed to the method.
#[inline]
pub unsafe fn parse<'a, 'py>(
    py: Python<'py>,
    qualname: &str,
    params: &[&'static str],
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Call<'a, 'py>> {
    // The common calls, kept small enough to inline: everything positional, or that
    // and `context=` alone (how C Tasks and Futures schedule their steps).
    let nkw = if kwnames.is_null() { 0 } else { unsafe { ffi::PyTuple_GET_SIZE(kwnames) } };
    if nargs as usize >= params.len() && nkw <= 1 {
        // SAFETY: vectorcall passes `nargs` positional values (here at least one),
        // then one value per keyword name; kwnames is a tuple of str.
        let context = match nkw {
            0 => None,
            _ if is_context(py, unsafe { ffi::PyTuple_GET_ITEM(kwnames, 0) }) => {
                Some(unsafe { Borrowed::from_ptr(py, *args.add(nargs as usize)) })
            }
            _ => return unsafe { parse_keywords(py, qualname, params, args, nargs, kwnames) },
        };
        let positional: &'a [*mut ffi::PyObject] = unsafe { std::slice::from_raw_parts(args, nargs as usize) };
        let bind = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p) };
        return Ok(Call {
            named: [bind(positional[0]), bind(positional[params.len() - 1])],
            rest: &positional[params.len()..],
            context,
        });
    }
    unsafe { parse_keywords(py, qualname, params, args, nargs, kwnames) }
}

/// [`parse`] for parameters passed by keyword, and the errors.
///
/// # Safety
/// As [`parse`].
#[inline(never)]
unsafe fn parse_keywords<'a, 'py>(
    py: Python<'py>,
    qualname: &str,
    params: &[&'static str],
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Call<'a, 'py>> {
    let nkw = if kwnames.is_null() { 0 } else { unsafe { ffi::PyTuple_GET_SIZE(kwnames) } };
    let all: &'a [*mut ffi::PyObject] = if nargs + nkw == 0 {
        &[]
    } else {
        // SAFETY: vectorcall passes nargs positional values followed by one value per keyword name.
        unsafe { std::slice::from_raw_parts(args, (nargs + nkw) as usize) }
    };
    let (positional, keyword_values) = all.split_at(nargs as usize);
    let taken = positional.len().min(params.len());
    let mut named: [*mut ffi::PyObject; 2] = [std::ptr::null_mut(); 2];
    named[..taken].copy_from_slice(&positional[..taken]);
    let mut context = None;
    for (i, value) in keyword_values.iter().enumerate() {
        // SAFETY: kwnames is a tuple of str with one entry per keyword value.
        let name = unsafe { ffi::PyTuple_GET_ITEM(kwnames, i as ffi::Py_ssize_t) };
        if is_context(py, name) {
            context = Some(unsafe { Borrowed::from_ptr(py, *value) });
            continue;
        }
        let Some(slot) = params.iter().position(|p| is_param(name, p)) else {
            let name = unsafe { Borrowed::from_ptr(py, name) }.to_string();
            return Err(PyTypeError::new_err(format!("{qualname}() got an unexpected keyword argument '{name}'")));
        };
        if !named[slot].is_null() {
            return Err(PyTypeError::new_err(format!("{qualname}() got multiple values for argument '{}'", params[slot])));
        }
        named[slot] = *value;
    }
    let missing: Vec<&str> = params.iter().zip(named).filter(|(_, v)| v.is_null()).map(|(p, _)| *p).collect();
    if !missing.is_empty() {
        let names = missing.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" and ");
        let plural = if missing.len() == 1 { "argument" } else { "arguments" };
        return Err(PyTypeError::new_err(format!(
            "{qualname}() missing {} required positional {plural}: {names}",
            missing.len()
        )));
    }
    // Unused slots (one-parameter methods) repeat the first parameter.
    let first = named[0];
    let bind = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, if p.is_null() { first } else { p }) };
    Ok(Call { named: [bind(named[0]), bind(named[1])], rest: &positional[taken..], context })
}

/// A `context` keyword name that C code passed: CPython's own static string (in
/// 3.11 not the object `intern!` finds), kept with a reference the first time it
/// compares equal, so every later call from C matches it by address.
static CONTEXT_NAME_SEEN: std::sync::atomic::AtomicPtr<ffi::PyObject> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Keyword names are almost always interned or static: compare addresses before text.
#[inline]
fn is_context(py: Python<'_>, name: *mut ffi::PyObject) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    if name == pyo3::intern!(py, "context").as_ptr() || name == CONTEXT_NAME_SEEN.load(Relaxed) {
        return true;
    }
    is_context_by_text(name)
}

/// [`is_context`] for a name met by address for the first time.
#[cold]
#[inline(never)]
fn is_context_by_text(name: *mut ffi::PyObject) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    // SAFETY: `name` is a str (CPython checks keyword names are strings); GIL held.
    if unsafe { ffi::PyUnicode_CompareWithASCIIString(name, c"context".as_ptr()) } != 0 {
        return false;
    }
    if CONTEXT_NAME_SEEN.load(Relaxed).is_null() {
        // SAFETY: GIL held (no other thread races this check); the reference taken
        // is never released, so the address cannot name another object later.
        unsafe { ffi::Py_INCREF(name) };
        CONTEXT_NAME_SEEN.store(name, Relaxed);
    }
    true
}

fn is_param(name: *mut ffi::PyObject, param: &str) -> bool {
    let mut text = [0u8; 32];
    if param.len() >= text.len() {
        return false;
    }
    text[..param.len()].copy_from_slice(param.as_bytes());
    // SAFETY: `text` is NUL-terminated (zero-filled past the name); `name` is a str.
    unsafe { ffi::PyUnicode_CompareWithASCIIString(name, text.as_ptr() as *const c_char) == 0 }
}

/// A float argument as PyO3 extracts one, with its error message.
pub fn float_arg(arg: Borrowed<'_, '_, PyAny>, name: &str) -> PyResult<f64> {
    let py = arg.py();
    arg.extract::<f64>().map_err(|err| {
        if err.get_type(py).is(py.get_type::<PyTypeError>()) {
            let remapped = PyTypeError::new_err(format!("argument '{name}': {}", err.value(py)));
            remapped.set_cause(py, err.cause(py));
            remapped
        } else {
            err
        }
    })
}
