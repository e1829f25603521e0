//! Waiting for conditions with deadlines, never with sleeps that hope.

use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it returns `Ok`, and returns that value. After `timeout`, panics
/// naming `what` and the last observation (`cond`'s last `Err`).
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<T, String>) -> T {
    match try_wait_until(timeout, &mut cond) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}"),
    }
}

/// Polls `cond` until it returns `Ok` or `timeout` passes; the error is the last
/// observation.
pub fn try_wait_until<T>(
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Checks that `cond` keeps returning `Ok` for all of `period`, polling it; panics on
/// the first `Err` with `what` and the observation.
pub fn holds_for(what: &str, period: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + period;
    loop {
        if let Err(e) = cond() {
            panic!("{what} stopped holding: {e}");
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(POLL);
    }
}
