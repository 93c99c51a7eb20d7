//! The slow-callback log: a bounded ring of callbacks that ran longer than
//! `loop.slow_callback_duration`, with their site and task.

use crate::sites::SiteName;
use std::collections::VecDeque;

/// The log keeps the most recent this many events; older ones are counted, not kept.
pub const SLOW_KEPT: usize = 256;

pub struct SlowCallback {
    pub unix_ms: u64,
    pub duration_ns: u64,
    pub site: SiteName,
    pub task_id: Option<u64>,
    pub task_name: Option<String>,
    /// In debug mode: where the callback was scheduled (the handle's source traceback).
    pub traceback: Option<String>,
}

#[derive(Default)]
pub struct SlowLog {
    events: VecDeque<SlowCallback>,
}

impl SlowLog {
    pub fn push(&mut self, event: SlowCallback) {
        if self.events.len() == SLOW_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn events(&self) -> Vec<SlowCallback> {
        self.events.iter().map(|e| SlowCallback {
            unix_ms: e.unix_ms,
            duration_ns: e.duration_ns,
            site: SiteName { qualname: e.site.qualname.clone(), file: e.site.file.clone(), line: e.site.line },
            task_id: e.task_id,
            task_name: e.task_name.clone(),
            traceback: e.traceback.clone(),
        }).collect()
    }
}
