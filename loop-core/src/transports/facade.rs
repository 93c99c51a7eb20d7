//! The methods of the transport objects protocols see.
//!
//! `glassloop._loop.StreamTransport` and `DatagramTransport` are Python
//! subclasses of `asyncio.Transport` (of `_FlowControlMixin`, which
//! `loop.sendfile()` requires), so they cannot be the Rust classes themselves:
//! each keeps its Rust core in a `_core` slot. Each of the core's methods is a
//! method descriptor on the Python class that calls the core's method with the
//! same arguments.
//!
//! Why descriptors on the class, and not the core's bound methods stored in each
//! instance: with no instance `__dict__`, `self.transport.write(data)` finds
//! `write` through the type's method cache (CPython specializes the lookup and
//! the call) and reads nothing of the transport but its `_core` slot. A bound
//! method per instance cost a dict values array and a method object per
//! connection, memory that a busy server has evicted from the cache by the time
//! it comes back to a connection, and some twenty allocations per connection.

use crate::fastcall;
use pyo3::exceptions::{PyAttributeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::Borrowed;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicIsize, AtomicPtr, Ordering::Relaxed};

/// The most methods a facade class forwards (checked at compile time by `facade_class!`).
const MAX_METHODS: usize = 32;

/// What the forwarders of one facade class need: where its instances keep the
/// core, and the core's method (its descriptor) for each forwarded name. Set
/// once, by `install`, before any forwarder can run.
struct FacadeClass {
    core_offset: AtomicIsize,
    targets: [AtomicPtr<ffi::PyObject>; MAX_METHODS],
}

impl FacadeClass {
    const fn new() -> Self {
        FacadeClass { core_offset: AtomicIsize::new(0), targets: [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_METHODS] }
    }

    /// The core of `slf`, with a reference of its own: the call may drop the
    /// facade's last other reference, and the core must outlive the call.
    ///
    /// # Safety
    /// `slf` must be an instance of the class `install` set this up for.
    #[inline]
    unsafe fn core<'py>(&self, py: Python<'py>, slf: *mut ffi::PyObject) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: CPython checked that `slf` is an instance of the facade class (or a
        // subclass, which keeps its slots where they are), whose `_core` slot, an
        // object pointer or NULL while unset, is at `core_offset` (see `install`).
        let core = unsafe { *slf.cast::<u8>().offset(self.core_offset.load(Relaxed)).cast::<*mut ffi::PyObject>() };
        if core.is_null() {
            return Err(PyAttributeError::new_err("transport has no core"));
        }
        // SAFETY: `core` is a live object (the slot holds a reference).
        Ok(unsafe { Bound::from_borrowed_ptr(py, core) })
    }

    /// Calls the core's method `index` with the arguments CPython passed.
    ///
    /// # Safety
    /// `slf`, `args`, `nargs` and `kwnames` must be what CPython passed to a
    /// `METH_FASTCALL | METH_KEYWORDS` method installed by `install` on this class.
    #[inline]
    unsafe fn forward(
        &self,
        py: Python<'_>,
        index: usize,
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<*mut ffi::PyObject> {
        let core = unsafe { self.core(py, slf) }?;
        let nkw = if kwnames.is_null() { 0 } else { unsafe { ffi::PyTuple_GET_SIZE(kwnames) } };
        let given = (nargs + nkw) as usize;
        // The arguments with the core in front, as the core's method descriptor takes
        // them; on the stack for every method of a transport (at most three arguments).
        let mut small = [std::ptr::null_mut(); 8];
        let mut large = Vec::new();
        let stack: &mut [*mut ffi::PyObject] = if given < small.len() {
            &mut small[..given + 1]
        } else {
            large.resize(given + 1, std::ptr::null_mut());
            &mut large
        };
        stack[0] = core.as_ptr();
        if given > 0 {
            // SAFETY: vectorcall passes `nargs` positional values then one per keyword name.
            stack[1..].copy_from_slice(unsafe { std::slice::from_raw_parts(args, given) });
        }
        let target = self.targets[index].load(Relaxed);
        // SAFETY: `target` is the core class's method descriptor, kept alive forever
        // by `install`; `stack` holds references that outlive the call; kwnames is
        // CPython's tuple or NULL. The result is a new reference or NULL with an error.
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyObject_Vectorcall(target, stack.as_ptr(), (nargs + 1) as usize, kwnames)) }
            .map(Bound::into_ptr)
    }
}

/// Declares a facade class's forwarded methods: a `FacadeClass` and one
/// `METH_FASTCALL | METH_KEYWORDS` function per name (the C signature carries
/// nothing to tell the methods apart, so each has its own function).
macro_rules! facade_class {
    ($module:ident, [$($name:ident $(= $own:path)?),* $(,)?]) => {
        mod $module {
            use super::*;

            #[allow(non_camel_case_types)]
            pub(super) enum Name { $($name),* }

            pub(super) static CLASS: FacadeClass = FacadeClass::new();

            pub(super) const METHODS: &[(&str, fastcall::Method)] = &[$(
                (stringify!($name), facade_class!(@method $name $(= $own)?)),
            )*];

            const _: () = assert!(METHODS.len() <= MAX_METHODS, "raise MAX_METHODS");
        }
    };
    (@method $name:ident = $own:path) => { $own };
    (@method $name:ident) => {{
                    unsafe extern "C" fn forwarder(
                        slf: *mut ffi::PyObject,
                        args: *const *mut ffi::PyObject,
                        nargs: ffi::Py_ssize_t,
                        kwnames: *mut ffi::PyObject,
                    ) -> *mut ffi::PyObject {
                        // SAFETY: CPython calls this as the method `install` put on the
                        // facade class, with its vectorcall arguments.
                        unsafe { fastcall::entry(|py| CLASS.forward(py, Name::$name as usize, slf, args, nargs, kwnames)) }
                    }
                    forwarder
    }};
}

facade_class!(stream, [
    write = stream_write, writelines, write_eof, can_write_eof, abort, close, is_closing,
    pause_reading, resume_reading, is_reading, get_write_buffer_size,
    get_write_buffer_limits, set_write_buffer_limits, set_protocol, get_protocol,
    get_extra_info, _start_reading, _call_connection_lost,
    _make_empty_waiter, _reset_empty_waiter, _wait_writable, _force_close,
]);

facade_class!(datagram, [
    sendto, abort, close, is_closing, pause_reading, resume_reading, is_reading,
    get_write_buffer_size, get_write_buffer_limits, set_write_buffer_limits,
    set_protocol, get_protocol, get_extra_info, _start_reading, _call_connection_lost,
    _force_close,
]);

/// `transport.write(data)`, the one call of every echo, goes straight to the Rust
/// method, without the core method's call and argument parsing; other calls
/// (keywords, a wrong count) take the general way, which raises what it raises.
unsafe extern "C" fn stream_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this as the `write` method `install` put on the stream
    // facade class, with its vectorcall arguments.
    unsafe {
        fastcall::entry(|py| {
            if nargs == 1 && kwnames.is_null() {
                let core = stream::CLASS.core(py, slf)?;
                if let Ok(core) = core.cast::<super::StreamTransport>() {
                    // SAFETY: one positional argument, alive for the call.
                    super::StreamTransport::write(core, &Borrowed::from_ptr(py, *args))?;
                    return Ok(py.None().into_ptr());
                }
            }
            stream::CLASS.forward(py, stream::Name::write as usize, slf, args, nargs, kwnames)
        })
    }
}

/// Puts the core's methods on the two facade classes (`glassloop._loop`
/// calls this once, after defining them). Each class needs a `_core` slot.
#[pyfunction]
pub fn _install_facades(stream_facade: &Bound<'_, PyType>, datagram_facade: &Bound<'_, PyType>) -> PyResult<()> {
    let py = stream_facade.py();
    install(stream_facade, &py.get_type::<super::StreamTransport>(), &stream::CLASS, stream::METHODS)?;
    install(datagram_facade, &py.get_type::<super::DatagramTransport>(), &datagram::CLASS, datagram::METHODS)
}

fn install(
    facade: &Bound<'_, PyType>,
    core: &Bound<'_, PyType>,
    class: &'static FacadeClass,
    methods: &[(&str, fastcall::Method)],
) -> PyResult<()> {
    class.core_offset.store(core_slot_offset(facade)?, Relaxed);
    let mut defs = Vec::with_capacity(methods.len());
    for (index, &(name, method)) in methods.iter().enumerate() {
        let target = core.getattr(name)?;
        let signature: Option<String> = target.getattr("__text_signature__")?.extract()?;
        let doc: Option<String> = target.getattr("__doc__")?.extract()?;
        let doc = match signature {
            // As CPython reads a builtin's signature: "name($self, ...)\n--\n\n".
            Some(signature) => format!("{name}{signature}\n--\n\n{}", doc.unwrap_or_default()),
            None => doc.unwrap_or_default(),
        };
        // The descriptors, names and docs live as long as the classes: the whole process.
        class.targets[index].store(target.into_ptr(), Relaxed);
        let c_name: &'static CStr = Box::leak(CString::new(name)?.into_boxed_c_str());
        let c_doc: &'static CStr = Box::leak(CString::new(doc)?.into_boxed_c_str());
        defs.push(fastcall::MethodDef::new(c_name, method, c_doc));
    }
    fastcall::install(facade, Box::leak(defs.into_boxed_slice()))
}

/// Where instances of `facade` keep their `_core` slot (an object member).
fn core_slot_offset(facade: &Bound<'_, PyType>) -> PyResult<isize> {
    let descr = facade.getattr("_core")?;
    // Only the address of the static type object is taken, not read.
    let member_type = &raw mut ffi::PyMemberDescr_Type;
    if !std::ptr::eq(descr.get_type().as_type_ptr(), member_type) {
        return Err(PyTypeError::new_err(format!("{} needs a '_core' slot", facade.name()?)));
    }
    // SAFETY: `descr` is a member descriptor (checked above); its definition lives as long as the class.
    let member = unsafe { &*(*descr.as_ptr().cast::<ffi::PyMemberDescrObject>()).d_member };
    if member.type_code != ffi::Py_T_OBJECT_EX {
        return Err(PyTypeError::new_err(format!("{}._core is not an object slot", facade.name()?)));
    }
    Ok(member.offset)
}
