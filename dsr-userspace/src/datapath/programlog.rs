//! The XDP program's own log records (aya-log, `datapath_log`), handed to the process's
//! logger at most [`PER_SECOND`] a second: an event the program meets on every packet (a
//! backend whose egress interface is gone, at line rate) must not flood the log.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Records passed on per second; the rest are counted and reported once a second.
pub const PER_SECOND: u32 = 50;

/// The window: when it began, records passed in it, records held back.
pub struct Throttled(Mutex<Option<(Instant, u32, u64)>>);

/// The one throttle of the process (aya-log wants a `'static` logger).
pub static THROTTLED: Throttled = Throttled(Mutex::new(None));

impl log::Log for Throttled {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        let mut w = self.0.lock().expect("not poisoned");
        let (start, passed, held) = w.get_or_insert((Instant::now(), 0, 0));
        if start.elapsed() >= Duration::from_secs(1) {
            if *held > 0 {
                log::logger().log(
                    &log::Record::builder()
                        .level(log::Level::Warn)
                        .target(record.target())
                        .args(format_args!(
                            "{held} more data path log records in the last second \
                             (at most {PER_SECOND} a second are shown)"
                        ))
                        .build(),
                );
            }
            (*start, *passed, *held) = (Instant::now(), 0, 0);
        }
        if *passed < PER_SECOND {
            *passed += 1;
            drop(w);
            log::logger().log(record);
        } else {
            *held += 1;
        }
    }

    fn flush(&self) {
        log::logger().flush();
    }
}
