//! The socket and pipe syscalls of the data path, made with `syscall(2)`.
//!
//! glibc's `recv`, `send`, `read` and the like are pthread cancellation points:
//! once a process has a second thread (an executor's worker, the inspector's
//! sidecar) each call brackets the syscall with cancellation bookkeeping, about
//! 100 instructions per echo round trip. Python never cancels threads that way,
//! so the loop calls the kernel directly. Each function is its libc namesake:
//! the result, or -1 with `errno` set.

use std::os::unix::io::RawFd;

#[inline]
fn ret(r: libc::c_long) -> isize {
    r as isize
}

/// The calling thread's `errno`, as the last failed call left it.
#[inline]
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Runs `call` (one of the functions here) until it is not interrupted:
/// `Ok(count)`, or `Err(errno)` for any error but EINTR. Callers that must run
/// Python's signal handlers on EINTR (the socket module's rule) loop themselves.
#[inline]
pub fn retrying(mut call: impl FnMut() -> isize) -> Result<usize, i32> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// `recv(2)`.
///
/// # Safety
/// `buf` is valid for `len` writable bytes.
#[inline]
pub unsafe fn recv(fd: RawFd, buf: *mut libc::c_void, len: usize, flags: libc::c_int) -> isize {
    // SAFETY: recvfrom with no address is recv; the caller vouches for the buffer.
    ret(unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf, len, flags, std::ptr::null_mut::<libc::sockaddr>(), std::ptr::null_mut::<libc::socklen_t>()) })
}

/// `recvfrom(2)`.
///
/// # Safety
/// `buf` is valid for `len` writable bytes; `addr` for `*addr_len` bytes.
#[inline]
pub unsafe fn recvfrom(fd: RawFd, buf: *mut libc::c_void, len: usize, flags: libc::c_int, addr: *mut libc::sockaddr, addr_len: *mut libc::socklen_t) -> isize {
    // SAFETY: the caller vouches for the buffers.
    ret(unsafe { libc::syscall(libc::SYS_recvfrom, fd, buf, len, flags, addr, addr_len) })
}

/// `send(2)`.
///
/// # Safety
/// `buf` is valid for `len` readable bytes.
#[inline]
pub unsafe fn send(fd: RawFd, buf: *const libc::c_void, len: usize, flags: libc::c_int) -> isize {
    // SAFETY: sendto with no address is send; the caller vouches for the buffer.
    ret(unsafe { libc::syscall(libc::SYS_sendto, fd, buf, len, flags, std::ptr::null::<libc::sockaddr>(), 0 as libc::socklen_t) })
}

/// `sendto(2)`.
///
/// # Safety
/// `buf` is valid for `len` readable bytes; `addr` for `addr_len` bytes.
#[inline]
pub unsafe fn sendto(fd: RawFd, buf: *const libc::c_void, len: usize, flags: libc::c_int, addr: *const libc::sockaddr, addr_len: libc::socklen_t) -> isize {
    // SAFETY: the caller vouches for the buffers.
    ret(unsafe { libc::syscall(libc::SYS_sendto, fd, buf, len, flags, addr, addr_len) })
}

/// `sendmsg(2)`.
///
/// # Safety
/// `msg` and the buffers it points to are valid.
#[inline]
pub unsafe fn sendmsg(fd: RawFd, msg: *const libc::msghdr, flags: libc::c_int) -> isize {
    // SAFETY: the caller vouches for the message.
    ret(unsafe { libc::syscall(libc::SYS_sendmsg, fd, msg, flags) })
}

/// `read(2)`.
///
/// # Safety
/// `buf` is valid for `len` writable bytes.
#[inline]
pub unsafe fn read(fd: RawFd, buf: *mut libc::c_void, len: usize) -> isize {
    // SAFETY: the caller vouches for the buffer.
    ret(unsafe { libc::syscall(libc::SYS_read, fd, buf, len) })
}

/// `readv(2)`.
///
/// # Safety
/// `iov` points to `iovcnt` iovecs, each valid for its `iov_len` writable bytes.
#[inline]
pub unsafe fn readv(fd: RawFd, iov: *const libc::iovec, iovcnt: libc::c_int) -> isize {
    // SAFETY: the caller vouches for the buffers.
    ret(unsafe { libc::syscall(libc::SYS_readv, fd, iov, iovcnt) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_calls_move_bytes_and_report_errno() {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two-int array.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) }, 0);
        let msg = b"hello";
        // SAFETY: valid buffers for the lengths given.
        unsafe {
            assert_eq!(send(fds[0], msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL), 5);
            let mut buf = [0u8; 16];
            assert_eq!(recv(fds[1], buf.as_mut_ptr().cast(), buf.len(), 0), 5);
            assert_eq!(&buf[..5], msg);
            assert_eq!(recv(fds[1], buf.as_mut_ptr().cast(), buf.len(), 0), -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            assert_eq!(read(-1, buf.as_mut_ptr().cast(), 1), -1);
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
            assert_eq!(retrying(|| recv(fds[1], buf.as_mut_ptr().cast(), buf.len(), 0)), Err(libc::EAGAIN));
            assert_eq!(retrying(|| send(fds[0], msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL)), Ok(5));
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn retrying_runs_the_call_again_only_on_eintr() {
        let mut calls = 0;
        let got = retrying(|| {
            calls += 1;
            if calls < 3 {
                // SAFETY: errno is thread-local; setting it is what a failed syscall does.
                unsafe { *libc::__errno_location() = libc::EINTR };
                -1
            } else {
                7
            }
        });
        assert_eq!((got, calls), (Ok(7), 3));
    }
}
