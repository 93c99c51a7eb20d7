//! Pieces shared by `loadgen` and `echo-ceiling`: a tiny argument parser, CPU
//! pinning, CPU-time accounting and JSON string escaping. No dependencies beyond libc.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;

/// `--name value` / `--name=value` / `--flag` arguments, consumed one by one.
pub struct Args {
    rest: VecDeque<String>,
}

impl Args {
    pub fn from_env() -> Args {
        Args { rest: std::env::args().skip(1).collect() }
    }

    /// The next argument's name (without the leading dashes) and its inline value, if any.
    pub fn next_flag(&mut self) -> Option<Result<(String, Option<String>), String>> {
        let arg = self.rest.pop_front()?;
        let Some(body) = arg.strip_prefix("--") else {
            return Some(Err(format!("unexpected argument {arg:?}")));
        };
        Some(Ok(match body.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (body.to_string(), None),
        }))
    }

    /// The value of flag `name`: inline (`--x=1`) or the next argument (`--x 1`).
    pub fn value(&mut self, name: &str, inline: Option<String>) -> Result<String, String> {
        inline
            .or_else(|| self.rest.pop_front())
            .ok_or_else(|| format!("--{name} needs a value"))
    }

    pub fn parsed<T: std::str::FromStr>(&mut self, name: &str, inline: Option<String>) -> Result<T, String> {
        let text = self.value(name, inline)?;
        text.parse().map_err(|_| format!("--{name}: cannot parse {text:?}"))
    }
}

/// Pin the calling thread (and threads it starts later) to one CPU.
pub fn pin_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu number too large"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// This process's CPU time so far: (user, system), seconds, from getrusage(RUSAGE_SELF).
pub fn self_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Another process's CPU time so far, all threads: (user, system), seconds, from
/// fields 14 and 15 of /proc/PID/stat (clock ticks, usually 10 ms each).
pub fn proc_cpu(pid: u32) -> io::Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = text.rsplit_once(')').map(|(_, tail)| tail).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/PID/stat format");
    // `after` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime as f64 / tick, stime as f64 / tick))
}

/// Seconds that a process's threads (all of them) spent waiting on a run queue:
/// runnable but not running, because other work had the CPU. The second field of
/// each /proc/PID/task/TID/schedstat, in nanoseconds; threads that ended are missed.
pub fn proc_runq_wait(pid: u32) -> io::Result<f64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.split_whitespace().nth(1).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total as f64 / 1e9)
}

/// The whole machine's busy and steal time so far, seconds over all CPUs, from the
/// first line of /proc/stat (busy = everything but idle and iowait, steal included).
pub fn machine_cpu() -> io::Result<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().unwrap_or("");
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if ticks.len() < 8 || !line.starts_with("cpu ") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/stat format"));
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((busy as f64 / tick, ticks[7] as f64 / tick))
}

/// `text` as a JSON string literal.
pub fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A finite float as JSON (NaN and infinities become null).
pub fn json_f64(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "null".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn own_runq_wait_parses() {
        assert!(proc_runq_wait(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn own_stat_parses() {
        let (user, sys) = proc_cpu(std::process::id()).unwrap();
        assert!(user >= 0.0 && sys >= 0.0);
    }
}
