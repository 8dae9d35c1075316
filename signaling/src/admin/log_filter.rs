//! The log filter, changeable while the node runs (`PATCH /api/v10/admin/settings
//! {"log_filter": …}`). The binary installs its `EnvFilter` behind a
//! `tracing_subscriber::reload` layer and hands the layer's handle to [`LogFilter::new`]; a
//! node started without one (an embedding or a test that logs its own way) refuses the change
//! with a message saying so.
//!
//! ```
//! use tracing_subscriber::{prelude::*, reload, EnvFilter};
//! let (layer, handle) = reload::Layer::new(EnvFilter::new("info"));
//! let _subscriber = tracing_subscriber::registry().with(layer);
//! let log = lodge_signaling::admin::LogFilter::new("info", handle);
//! assert_eq!(log.set("lodge_signaling=debug,warn").unwrap(), "info");
//! assert_eq!(log.get(), "lodge_signaling=debug,warn");
//! assert!(log.set("not a filter[").is_err());
//! ```

use std::sync::Mutex;

use tracing_subscriber::{reload, EnvFilter};

/// The longest filter accepted (a filter is a handful of `target=level` directives).
pub const MAX_FILTER_LEN: usize = 512;

/// The installed filter and a way to replace it.
pub struct LogFilter {
    current: Mutex<String>,
    replace: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl LogFilter {
    /// `initial` is the filter the handle's layer was built with (its text, as configured).
    pub fn new<S: 'static>(initial: &str, handle: reload::Handle<EnvFilter, S>) -> LogFilter {
        LogFilter {
            current: Mutex::new(initial.to_string()),
            replace: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        }
    }

    /// The filter in force, as it was given.
    pub fn get(&self) -> String {
        self.lock().clone()
    }

    /// Put `filter` in force; returns the one it replaced. A filter that does not parse (or
    /// is longer than [`MAX_FILTER_LEN`]) changes nothing and says why.
    pub fn set(&self, filter: &str) -> Result<String, String> {
        let parsed = LogFilter::parse(filter)?;
        let mut cur = self.lock();
        (self.replace)(parsed)?;
        Ok(std::mem::replace(&mut *cur, filter.to_string()))
    }

    /// `filter` parsed, or why it is refused.
    pub fn parse(filter: &str) -> Result<EnvFilter, String> {
        if filter.len() > MAX_FILTER_LEN {
            return Err(format!("longer than {MAX_FILTER_LEN} characters"));
        }
        EnvFilter::try_new(filter).map_err(|e| e.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.current
            .lock()
            .expect("the log filter text is never held across a panic")
    }
}
